//! The model's behaviour beyond parity: parameter counts, initialisation,
//! dropout, the loss options, and clear errors for checkpoints that do not fit.

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use t5_tui::model::generate::{generate, GenerateOptions, Strategy};
use t5_tui::model::{cross_entropy, ForwardMode, T5Config, T5};
use t5_tui::Error;

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hf")
}

fn tiny_config(tie: bool) -> T5Config {
    let variant = if tie { "v1_0" } else { "v1_1" };
    T5Config::from_json_file(&fixtures().join(variant).join("config.json")).unwrap()
}

#[test]
fn parameter_counts_match_transformers() {
    let text = std::fs::read_to_string(fixtures().join("param_counts.json")).unwrap();
    let counts: serde_json::Value = serde_json::from_str(&text).unwrap();
    let counts = counts.as_object().unwrap();
    assert!(counts.len() >= 5);
    for (name, entry) in counts {
        let mut shape = entry["config"].clone();
        // Fields the counts depend on are given; the rest take T5's defaults.
        let cfg: T5Config = serde_json::from_value(shape.take()).unwrap();
        let expected = entry["num_parameters"].as_u64().unwrap() as usize;
        assert_eq!(
            cfg.num_parameters(),
            expected,
            "{name}: counted from the config"
        );
        if expected < 1_000_000 {
            let model = T5::new_random(&cfg, 0, &Device::Cpu).unwrap();
            assert_eq!(
                model.num_parameters(),
                expected,
                "{name}: counted in the model"
            );
        }
    }
}

#[test]
fn initialisation_is_seeded_and_follows_t5s_scales() {
    let mut cfg = tiny_config(false);
    cfg.d_model = 64;
    cfg.d_ff = 256;
    let a = T5::new_random(&cfg, 7, &Device::Cpu).unwrap();
    let b = T5::new_random(&cfg, 7, &Device::Cpu).unwrap();
    let c = T5::new_random(&cfg, 8, &Device::Cpu).unwrap();
    let std_of = |t: &Tensor| -> f64 {
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        let n = v.len() as f64;
        let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
        (v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n).sqrt()
    };
    let d = cfg.d_model as f64;
    for (((name, ta), (_, tb)), (_, tc)) in a
        .named_tensors()
        .iter()
        .zip(b.named_tensors().iter())
        .zip(c.named_tensors().iter())
    {
        let va: Vec<f32> = ta.flatten_all().unwrap().to_vec1().unwrap();
        let vb: Vec<f32> = tb.flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(va, vb, "{name}: same seed, different weights");
        let expected = if name.ends_with("layer_norm.weight") {
            assert!(va.iter().all(|&x| x == 1.0), "{name}: norms start at one");
            continue;
        } else if name == "shared.weight" || name == "lm_head.weight" {
            1.0
        } else if name.ends_with(".q.weight") {
            (d * cfg.d_kv as f64).powf(-0.5)
        } else if name.ends_with(".o.weight") {
            (cfg.inner_dim() as f64).powf(-0.5)
        } else if name.ends_with(".wo.weight") {
            (cfg.d_ff as f64).powf(-0.5)
        } else {
            d.powf(-0.5)
        };
        let vc: Vec<f32> = tc.flatten_all().unwrap().to_vec1().unwrap();
        assert_ne!(va, vc, "{name}: another seed, same weights");
        if va.len() >= 1000 {
            let got = std_of(ta);
            assert!(
                (got / expected - 1.0).abs() < 0.1,
                "{name}: std {got}, T5 initialises with {expected}"
            );
        }
    }
}

fn tiny_batch(cfg: &T5Config) -> (Tensor, Tensor, Tensor, Tensor) {
    let dev = Device::Cpu;
    let v = cfg.vocab_size as u32;
    let ids: Vec<u32> = (0..2 * 10).map(|i| 3 + (i * 7) % (v - 3)).collect();
    let input = Tensor::from_vec(ids, (2, 10), &dev).unwrap();
    let mask = Tensor::from_vec(
        [vec![1u32; 10], [vec![1u32; 6], vec![0u32; 4]].concat()].concat(),
        (2, 10),
        &dev,
    )
    .unwrap();
    let labels = Tensor::new(&[[5i64, 9, 1, -100], [7, 1, -100, -100]], &dev).unwrap();
    let dec = Tensor::new(&[[0u32, 5, 9, 1], [0, 7, 1, 0]], &dev).unwrap();
    (input, mask, dec, labels)
}

#[test]
fn dropout_is_active_only_in_training_and_follows_the_seed() {
    use rand::SeedableRng;
    let mut cfg = tiny_config(false);
    cfg.dropout_rate = 0.3;
    let model = T5::new_random(&cfg, 1, &Device::Cpu).unwrap();
    let (input, mask, dec, _) = tiny_batch(&cfg);
    let run = |mode: &mut ForwardMode| -> Vec<f32> {
        model
            .forward(&input, &mask, &dec, None, mode)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap()
    };
    let eval1 = run(&mut ForwardMode::eval());
    let eval2 = run(&mut ForwardMode::eval());
    assert_eq!(eval1, eval2, "evaluation is deterministic");
    let seeded = |s| ForwardMode::train(rand_chacha::ChaCha8Rng::seed_from_u64(s));
    let train1 = run(&mut seeded(5));
    let train2 = run(&mut seeded(5));
    let train3 = run(&mut seeded(6));
    assert_eq!(train1, train2, "the same seed drops the same units");
    assert_ne!(train1, eval1, "training applies dropout");
    assert_ne!(train1, train3, "another seed drops other units");
}

/// On the CPU in f32 the model runs fused kernels (dropout included); in
/// f64 compute it runs candle's composed ops. With the same seed both must
/// drop the same units and give the same loss and gradients, so the fused
/// path is the same model, dropout and all.
#[test]
fn fused_cpu_kernels_train_as_candles_ops_do_with_dropout() {
    use rand::SeedableRng;
    let mut cfg = tiny_config(false);
    cfg.dropout_rate = 0.2;
    let model = T5::new_random(&cfg, 3, &Device::Cpu).unwrap();
    let (input, mask, dec, labels) = tiny_batch(&cfg);
    let run = |compute: DType| {
        let rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let mut mode = ForwardMode::train(rng).with_compute(compute);
        let logits = model.forward(&input, &mask, &dec, None, &mut mode).unwrap();
        let loss = cross_entropy(&logits, &labels, Some(cfg.pad_token_id), 0.0).unwrap();
        let grads = loss.loss.backward().unwrap();
        let g: Vec<Vec<f32>> = model
            .params()
            .iter()
            .map(|(_, v)| {
                let g = grads
                    .get(v.as_tensor())
                    .expect("every parameter gets a gradient");
                g.to_dtype(DType::F32)
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1()
                    .unwrap()
            })
            .collect();
        (loss.cross_entropy, g)
    };
    let (fused_loss, fused) = run(DType::F32);
    let (composed_loss, composed) = run(DType::F64);
    assert!(
        (fused_loss - composed_loss).abs() < 1e-4 * composed_loss.abs().max(1.0),
        "loss {fused_loss} fused, {composed_loss} composed"
    );
    let (mut num, mut den) = (0f64, 0f64);
    for (a, b) in fused.iter().flatten().zip(composed.iter().flatten()) {
        num += ((a - b) as f64).powi(2);
        den += (*b as f64).powi(2);
    }
    let rel = (num / den).sqrt();
    assert!(rel < 1e-4, "gradients differ by {rel} (relative)");
}

#[test]
fn loss_ignores_padding_and_adds_the_z_loss() {
    let cfg = tiny_config(true);
    let model = T5::new_random(&cfg, 2, &Device::Cpu).unwrap();
    let (input, mask, dec, labels) = tiny_batch(&cfg);
    let logits = model
        .forward(&input, &mask, &dec, None, &mut ForwardMode::eval())
        .unwrap();
    let plain = cross_entropy(&logits, &labels, None, 0.0).unwrap();
    assert_eq!(plain.tokens, 5);

    // By hand: mean over the five counted positions of logsumexp - logit.
    let rows: Vec<Vec<Vec<f32>>> = logits.to_vec3().unwrap();
    let labels_host: Vec<Vec<i64>> = labels.to_vec2().unwrap();
    let (mut total, mut z, mut n) = (0f64, 0f64, 0);
    for (b, row) in labels_host.iter().enumerate() {
        for (t, &l) in row.iter().enumerate() {
            if l < 0 {
                continue;
            }
            let xs = &rows[b][t];
            let max = xs.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let lse = max + xs.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            total += lse - xs[l as usize] as f64;
            z += lse * lse;
            n += 1;
        }
    }
    let expected = total / n as f64;
    assert!((plain.cross_entropy as f64 - expected).abs() < 1e-5);

    let with_z = cross_entropy(&logits, &labels, None, 1e-2).unwrap();
    let got = with_z.loss.to_scalar::<f32>().unwrap() as f64;
    assert!((got - (expected + 1e-2 * z / n as f64)).abs() < 1e-5);

    // Label 1 (</s>) treated as padding: three positions fewer.
    let no_eos = cross_entropy(&logits, &labels, Some(1), 0.0).unwrap();
    assert_eq!(no_eos.tokens, 3);
}

#[test]
fn sampling_is_reproducible_and_incremental_decoding_matches_recomputation() {
    let cfg = tiny_config(false);
    let model = T5::new_random(&cfg, 3, &Device::Cpu).unwrap();
    let prompts = vec![vec![5u32, 9, 14, 1], vec![22, 1]];
    let opts = |seed, use_cache| GenerateOptions {
        max_new_tokens: 10,
        strategy: Strategy::Sample {
            temperature: 0.9,
            top_k: 20,
            top_p: 0.95,
            seed,
        },
        use_cache,
    };
    let a = generate(&model, &prompts, &opts(11, true)).unwrap();
    let b = generate(&model, &prompts, &opts(11, false)).unwrap();
    let c = generate(&model, &prompts, &opts(12, true)).unwrap();
    assert_eq!(a, b, "the cache changes nothing");
    assert_ne!(a, c, "another seed samples other tokens");
    assert!(a.iter().all(|s| !s.is_empty() && s.len() <= 10));
}

#[test]
fn generation_rejects_bad_input() {
    let cfg = tiny_config(false);
    let model = T5::new_random(&cfg, 3, &Device::Cpu).unwrap();
    let opts = GenerateOptions::default();
    assert!(generate(&model, &[vec![]], &opts).is_err());
    let err = generate(&model, &[vec![5, 10_000]], &opts).unwrap_err();
    assert!(err.to_string().contains("10000"), "{err}");
}

/// Writes `tensors` as a safetensors checkpoint beside a config.
fn write_checkpoint(dir: &Path, cfg: &T5Config, tensors: &[(String, Tensor)]) {
    std::fs::create_dir_all(dir).unwrap();
    cfg.write_json_file(&dir.join("config.json")).unwrap();
    let map: std::collections::HashMap<_, _> = tensors.iter().cloned().collect();
    candle_core::safetensors::save(&map, dir.join("model.safetensors")).unwrap();
}

fn load_error(dir: &Path) -> String {
    match T5::load_hf_dir(dir, &Device::Cpu) {
        Ok(_) => panic!("{} loaded", dir.display()),
        Err(e @ Error::Checkpoint { .. })
        | Err(e @ Error::Config { .. })
        | Err(e @ Error::Io { .. }) => e.to_string(),
        Err(e) => panic!("unexpected kind of error: {e}"),
    }
}

#[test]
fn checkpoints_that_do_not_fit_give_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tiny_config(false);
    let model = T5::new_random(&cfg, 4, &Device::Cpu).unwrap();
    let tensors = model.named_tensors();

    // Another shape: the config says d_ff 40, the file holds 48.
    let mut other = cfg.clone();
    other.d_ff = 48;
    let wider = T5::new_random(&other, 4, &Device::Cpu).unwrap();
    let dir = tmp.path().join("shape");
    write_checkpoint(&dir, &cfg, &wider.named_tensors());
    let msg = load_error(&dir);
    assert!(msg.contains("model.safetensors"), "{msg}");
    assert!(msg.contains("DenseReluDense.wi_0.weight"), "{msg}");
    assert!(
        msg.contains("[48, 32]") && msg.contains("[40, 32]"),
        "{msg}"
    );

    // A missing tensor.
    let dir = tmp.path().join("missing");
    let missing: Vec<_> = tensors
        .iter()
        .filter(|(n, _)| n != "decoder.block.2.layer.1.EncDecAttention.v.weight")
        .cloned()
        .collect();
    write_checkpoint(&dir, &cfg, &missing);
    let msg = load_error(&dir);
    assert!(
        msg.contains("`decoder.block.2.layer.1.EncDecAttention.v.weight` is missing"),
        "{msg}"
    );

    // A wrong dtype.
    let dir = tmp.path().join("dtype");
    let ints: Vec<_> = tensors
        .iter()
        .map(|(n, t)| {
            let t = if n == "encoder.final_layer_norm.weight" {
                t.to_dtype(DType::I64).unwrap()
            } else {
                t.clone()
            };
            (n.clone(), t)
        })
        .collect();
    write_checkpoint(&dir, &cfg, &ints);
    let msg = load_error(&dir);
    assert!(
        msg.contains("encoder.final_layer_norm.weight") && msg.contains("I64"),
        "{msg}"
    );

    // More layers in the file than in the config.
    let mut deeper = cfg.clone();
    deeper.num_layers = 3;
    let dir = tmp.path().join("deeper");
    write_checkpoint(
        &dir,
        &cfg,
        &T5::new_random(&deeper, 4, &Device::Cpu)
            .unwrap()
            .named_tensors(),
    );
    let msg = load_error(&dir);
    assert!(msg.contains("encoder.block.2"), "{msg}");

    // Not safetensors at all; and no config.
    let dir = tmp.path().join("garbage");
    write_checkpoint(&dir, &cfg, &tensors);
    std::fs::write(dir.join("model.safetensors"), b"not a checkpoint").unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("not a readable safetensors file"), "{msg}");
    let dir = tmp.path().join("empty");
    std::fs::create_dir_all(&dir).unwrap();
    let msg = load_error(&dir);
    assert!(msg.contains("config.json"), "{msg}");

    // Bf16 weights of the right shape load (converted).
    let dir = tmp.path().join("bf16");
    let half: Vec<_> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.to_dtype(DType::BF16).unwrap()))
        .collect();
    write_checkpoint(&dir, &cfg, &half);
    T5::load_hf_dir(&dir, &Device::Cpu).unwrap();
}
