//! Training against PyTorch + `transformers`, step for step: the tiny v1.1
//! checkpoint of tests/fixtures/hf/v1_1 trained for 30 steps on the same
//! batches with the same optimizer, schedule and gradient clipping must
//! give the same loss at every step. The reference runs are made by
//! `tests/fixtures/train/make_fixture.py`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use t5_tui::model::{cross_entropy, ForwardMode, T5};
use t5_tui::train::optim::{
    clip_grad_norm, decay_all_but_norms, AdafactorConfig, AdamWConfig, AdamWScaleConfig, Optimizer,
    OptimizerConfig,
};
use t5_tui::train::schedule::{LrSchedule, Schedule, ScheduleConfig};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/train")
}

fn checkpoint_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf/v1_1")
}

#[derive(serde::Deserialize)]
struct Reference {
    steps: usize,
    num_batches: usize,
    max_grad_norm: f64,
    cases: HashMap<String, ReferenceRun>,
}

#[derive(serde::Deserialize)]
struct ReferenceRun {
    loss: Vec<f64>,
    grad_norm: Vec<f64>,
    lr: Vec<Option<f64>>,
    final_param_norm: f64,
}

fn reference() -> Reference {
    let text = std::fs::read_to_string(fixture_dir().join("losses.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

struct Batch {
    input_ids: Tensor,
    attention_mask: Tensor,
    decoder_input_ids: Tensor,
    decoder_attention_mask: Tensor,
    labels: Tensor,
}

fn batches(n: usize) -> Vec<Batch> {
    let t = candle_core::safetensors::load(fixture_dir().join("batches.safetensors"), &Device::Cpu)
        .unwrap();
    let get = |i: usize, k: &str| t[&format!("{i}.{k}")].clone();
    (0..n)
        .map(|i| Batch {
            input_ids: get(i, "input_ids").to_dtype(DType::U32).unwrap(),
            attention_mask: get(i, "attention_mask"),
            decoder_input_ids: get(i, "decoder_input_ids").to_dtype(DType::U32).unwrap(),
            decoder_attention_mask: get(i, "decoder_attention_mask"),
            labels: get(i, "labels"),
        })
        .collect()
}

/// One case: the optimizer and schedule the fixture script used for it.
struct Case {
    name: &'static str,
    optimizer: OptimizerConfig,
    schedule: LrSchedule,
}

fn schedule(shape: ScheduleConfig, lr: f64) -> LrSchedule {
    LrSchedule::new(Schedule::new(shape, lr, 30).unwrap())
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "adamw_linear",
            optimizer: OptimizerConfig::Adamw(AdamWConfig {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.01,
            }),
            schedule: schedule(ScheduleConfig::Linear { warmup_steps: 5 }, 1e-3),
        },
        Case {
            name: "adafactor_constant",
            optimizer: OptimizerConfig::Adafactor(AdafactorConfig {
                scale_parameter: true,
                relative_step: false,
                warmup_init: false,
                clip_threshold: 1.0,
                decay_rate: -0.8,
                ..AdafactorConfig::default()
            }),
            schedule: schedule(ScheduleConfig::Constant { warmup_steps: 0 }, 1e-3),
        },
        Case {
            name: "adafactor_relative_step",
            optimizer: OptimizerConfig::Adafactor(AdafactorConfig {
                scale_parameter: true,
                relative_step: true,
                warmup_init: false,
                ..AdafactorConfig::default()
            }),
            // Ignored: the optimizer sets its own step size.
            schedule: schedule(ScheduleConfig::Constant { warmup_steps: 0 }, 0.0),
        },
        Case {
            name: "adafactor_beta1_decay_inverse_sqrt",
            optimizer: OptimizerConfig::Adafactor(AdafactorConfig {
                beta1: Some(0.9),
                weight_decay: 0.01,
                scale_parameter: false,
                relative_step: false,
                ..AdafactorConfig::default()
            }),
            schedule: schedule(
                ScheduleConfig::InverseSqrt {
                    warmup_steps: 5,
                    linear_warmup: true,
                },
                1e-2,
            ),
        },
        Case {
            name: "adamw_scale_cosine",
            optimizer: OptimizerConfig::AdamwScale(AdamWScaleConfig {
                weight_decay: 0.01,
                ..AdamWScaleConfig::default()
            }),
            schedule: schedule(
                ScheduleConfig::Cosine {
                    warmup_steps: 5,
                    min_ratio: 0.0,
                },
                2e-2,
            ),
        },
    ]
}

#[derive(Default)]
struct Run {
    loss: Vec<f64>,
    grad_norm: Vec<f64>,
    lr: Vec<f64>,
}

/// Trains `model` from step `from` to `to` (0-based, exclusive), as the
/// fixture script's loop does.
#[allow(clippy::too_many_arguments)]
fn train(
    model: &T5,
    optimizer: &mut Optimizer,
    schedule: &LrSchedule,
    batches: &[Batch],
    max_grad_norm: f64,
    from: usize,
    to: usize,
    run: &mut Run,
) {
    for step in from..to {
        let b = &batches[step % batches.len()];
        let mut mode = ForwardMode::eval();
        let logits = model
            .forward(
                &b.input_ids,
                &b.attention_mask,
                &b.decoder_input_ids,
                Some(&b.decoder_attention_mask),
                &mut mode,
            )
            .unwrap();
        let loss = cross_entropy(&logits, &b.labels, None, 0.0).unwrap().loss;
        let mut grads = loss.backward().unwrap();
        let norm = clip_grad_norm(&mut grads, model.params(), max_grad_norm).unwrap();
        let lr = schedule.lr_at(step as u64);
        optimizer.step(&grads, lr).unwrap();
        run.loss.push(loss.to_scalar::<f32>().unwrap() as f64);
        run.grad_norm.push(norm);
        run.lr.push(lr);
    }
}

fn param_norm(model: &T5) -> f64 {
    model
        .params()
        .iter()
        .map(|(_, v)| {
            v.as_tensor()
                .to_dtype(DType::F64)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f64>()
                .unwrap()
        })
        .sum::<f64>()
        .sqrt()
}

fn rel(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

fn max_rel(ours: &[f64], theirs: &[f64]) -> (f64, usize) {
    assert_eq!(ours.len(), theirs.len());
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| rel(*a, *b))
        .enumerate()
        .fold(
            (0.0, 0),
            |(m, at), (i, r)| if r > m { (r, i) } else { (m, at) },
        )
}

#[test]
fn training_matches_pytorch_and_transformers() {
    let reference = reference();
    let batches = batches(reference.num_batches);
    let mut report = Vec::new();
    for case in cases() {
        let want = &reference.cases[case.name];
        let model = T5::load_hf_dir(&checkpoint_dir(), &Device::Cpu).unwrap();
        let mut optimizer =
            Optimizer::new(&case.optimizer, model.params(), &decay_all_but_norms).unwrap();
        let mut run = Run::default();
        train(
            &model,
            &mut optimizer,
            &case.schedule,
            &batches,
            reference.max_grad_norm,
            0,
            reference.steps,
            &mut run,
        );
        for (step, (ours, theirs)) in run.lr.iter().zip(&want.lr).enumerate() {
            if let Some(theirs) = theirs {
                assert!(
                    rel(*ours, *theirs) < 1e-12 || (ours - theirs).abs() < 1e-15,
                    "{}: step {step} learning rate {ours} vs {theirs}",
                    case.name
                );
            }
        }
        let (loss_diff, loss_at) = max_rel(&run.loss, &want.loss);
        let (norm_diff, norm_at) = max_rel(&run.grad_norm, &want.grad_norm);
        let final_diff = rel(param_norm(&model), want.final_param_norm);
        report.push(format!(
            "{:38} loss max rel diff {loss_diff:.2e} (step {loss_at}), grad norm {norm_diff:.2e} (step {norm_at}), final param norm {final_diff:.2e}; loss {:.4} -> {:.4}",
            case.name,
            run.loss[0],
            run.loss[run.loss.len() - 1]
        ));
        assert!(
            loss_diff < 1e-3,
            "{}: loss at step {loss_at} is {} vs PyTorch {} (relative difference {loss_diff:.2e})\nours:   {:?}\ntheirs: {:?}",
            case.name,
            run.loss[loss_at],
            want.loss[loss_at],
            run.loss,
            want.loss
        );
        assert!(
            norm_diff < 1e-3,
            "{}: gradient norm at step {norm_at} is {} vs PyTorch {}",
            case.name,
            run.grad_norm[norm_at],
            want.grad_norm[norm_at]
        );
        assert!(
            final_diff < 1e-3,
            "{}: final parameter norm differs by {final_diff:.2e}",
            case.name
        );
    }
    println!("{}", report.join("\n"));
}

/// Stopping half-way, saving model, optimizer and schedule through files,
/// and resuming in a fresh model gives the same steps as not stopping.
#[test]
fn checkpointed_optimizer_resumes_exactly() {
    let reference = reference();
    let batches = batches(reference.num_batches);
    let dir = tempfile::tempdir().unwrap();
    for case in cases()
        .into_iter()
        .filter(|c| c.name == "adamw_linear" || c.name == "adafactor_beta1_decay_inverse_sqrt")
    {
        let (steps, half) = (12, 6);
        let model = T5::load_hf_dir(&checkpoint_dir(), &Device::Cpu).unwrap();
        let mut optimizer =
            Optimizer::new(&case.optimizer, model.params(), &decay_all_but_norms).unwrap();
        let mut straight = Run::default();
        train(
            &model,
            &mut optimizer,
            &case.schedule,
            &batches,
            1.0,
            0,
            steps,
            &mut straight,
        );

        let model = T5::load_hf_dir(&checkpoint_dir(), &Device::Cpu).unwrap();
        let mut optimizer =
            Optimizer::new(&case.optimizer, model.params(), &decay_all_but_norms).unwrap();
        let mut schedule = case.schedule.clone();
        let mut resumed = Run::default();
        train(
            &model,
            &mut optimizer,
            &schedule,
            &batches,
            1.0,
            0,
            half,
            &mut resumed,
        );
        let model_path = dir.path().join(format!("{}.model.safetensors", case.name));
        let optim_path = dir.path().join(format!("{}.optim.safetensors", case.name));
        candle_core::safetensors::save(
            &model.named_tensors().into_iter().collect::<HashMap<_, _>>(),
            &model_path,
        )
        .unwrap();
        candle_core::safetensors::save(
            &optimizer
                .state_tensors()
                .into_iter()
                .collect::<HashMap<_, _>>(),
            &optim_path,
        )
        .unwrap();
        let meta = serde_json::to_string(&optimizer.state_meta()).unwrap();
        let sched_json = serde_json::to_string(&schedule).unwrap();
        drop((model, optimizer));
        schedule.scale_lr(123.0).unwrap(); // overwritten by the restore

        let model = T5::load_hf_dir(&checkpoint_dir(), &Device::Cpu).unwrap();
        let saved = candle_core::safetensors::load(&model_path, &Device::Cpu).unwrap();
        for (name, var) in model.params() {
            var.set(&saved[name]).unwrap();
        }
        let mut optimizer =
            Optimizer::new(&case.optimizer, model.params(), &decay_all_but_norms).unwrap();
        let state = candle_core::safetensors::load(&optim_path, &Device::Cpu).unwrap();
        optimizer
            .load_state(&state, &serde_json::from_str(&meta).unwrap())
            .unwrap();
        assert_eq!(optimizer.steps_taken(), half as u64);
        let schedule: LrSchedule = serde_json::from_str(&sched_json).unwrap();
        train(
            &model,
            &mut optimizer,
            &schedule,
            &batches,
            1.0,
            half,
            steps,
            &mut resumed,
        );
        assert_eq!(
            resumed.loss, straight.loss,
            "{}: resumed run differs",
            case.name
        );
        assert_eq!(resumed.grad_norm, straight.grad_norm, "{}", case.name);
    }
}
