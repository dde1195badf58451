//! Optimizers over a model's named parameters, with the arithmetic of the
//! PyTorch implementations they are named after, so that a run here
//! follows the same run there step for step (`tests/training_parity.rs`):
//!
//! - `adamw`: `torch.optim.AdamW` (decoupled weight decay `p -= lr * wd * p`
//!   before the Adam update, bias correction, `eps` added to `sqrt(v_hat)`);
//! - `adamw_scale`: nanoT5's `AdamWScale` (PiotrNawrot/nanoT5,
//!   `nanoT5/utils/copied_utils.py`): Hugging Face's old AdamW (`eps` added
//!   to `sqrt(v)` before bias correction, weight decay after the update)
//!   with the step multiplied by `max(1e-3, RMS(p))`;
//! - `adafactor`: `transformers.optimization.Adafactor`, as T5 was trained:
//!   factored second moments for matrices, update clipping by RMS, the
//!   learning rate scaled by the parameter's RMS, an optional relative step.
//!
//! The experiment TOML names one with an inline table tagged by `kind` (a
//! bare string takes the defaults):
//!
//! ```toml
//! optimizer = "adamw"
//! optimizer = { kind = "adamw", beta1 = 0.9, beta2 = 0.999, eps = 1e-8, weight_decay = 0.01 }
//! optimizer = { kind = "adamw_scale", eps = 1e-6 }
//! optimizer = { kind = "adafactor", scale_parameter = true, clip_threshold = 1.0, decay_rate = -0.8 }
//! optimizer = { kind = "adafactor", relative_step = true, warmup_init = false }
//! ```
//!
//! Optimizer state is f32 on the parameters' device, whatever the
//! parameters' dtype: gradients are taken in f32 and the update is written
//! back in the parameter's dtype. Every scalar the update needs (an RMS, a
//! clipping factor) stays a tensor, so a step never waits for the device.
//!
//! Which parameters get weight decay is a name predicate given to
//! [`Optimizer::new`]; [`decay_all_but_norms`] is Hugging Face Trainer's
//! rule (T5 has no biases), [`decay_all_but_norms_and_embeddings`] leaves
//! the embedding and output head alone as well.

use std::collections::{BTreeMap, HashMap};

use candle_core::backprop::GradStore;
use candle_core::{CpuStorage, DType, InplaceOp2, InplaceOp3, Layout, Tensor, Var};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::schedule::deserialize_kind_or_table;
use crate::error::{Error, Result};

/// Hugging Face Trainer's weight-decay rule for T5: every parameter but the
/// norm weights (`…layer_norm.weight`, `…final_layer_norm.weight`).
pub fn decay_all_but_norms(name: &str) -> bool {
    !name.ends_with("layer_norm.weight")
}

/// As [`decay_all_but_norms`], and the shared embedding and the output
/// head are left undecayed too.
pub fn decay_all_but_norms_and_embeddings(name: &str) -> bool {
    decay_all_but_norms(name) && name != "shared.weight" && name != "lm_head.weight"
}

/// `torch.optim.AdamW`'s settings; the defaults are PyTorch's but for the
/// weight decay (0 rather than 0.01, as `transformers`' Trainer).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// nanoT5's `AdamWScale` settings, its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdamWScaleConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWScaleConfig {
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-6,
            weight_decay: 0.0,
        }
    }
}

/// `transformers.optimization.Adafactor`'s settings. The defaults are its
/// own but for `relative_step`, off here so that the run's schedule drives
/// the learning rate (T5's pre-training: parameter scaling on, an inverse
/// square-root schedule with peak 0.01, no first moment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdafactorConfig {
    /// Added to the squared gradient.
    pub eps1: f64,
    /// The least parameter RMS that `scale_parameter` multiplies by.
    pub eps2: f64,
    /// Updates whose RMS exceeds this are scaled down to it.
    pub clip_threshold: f64,
    /// `beta2` at step `t` is `1 - t^decay_rate`.
    pub decay_rate: f64,
    /// The first-moment decay; none (no first moment) by default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    pub weight_decay: f64,
    /// Multiply the learning rate by `max(eps2, RMS(param))`.
    pub scale_parameter: bool,
    /// Ignore the schedule: the learning rate is `min(1e-2, 1/sqrt(step))`
    /// (`min(1e-6 * step, 1/sqrt(step))` with `warmup_init`).
    pub relative_step: bool,
    pub warmup_init: bool,
}

impl Default for AdafactorConfig {
    fn default() -> Self {
        Self {
            eps1: 1e-30,
            eps2: 1e-3,
            clip_threshold: 1.0,
            decay_rate: -0.8,
            beta1: None,
            weight_decay: 0.0,
            scale_parameter: true,
            relative_step: false,
            warmup_init: false,
        }
    }
}

/// The optimizer, as the experiment TOML names it (see the module docs):
/// a table tagged by `kind` (`adamw`, `adamw_scale`, `adafactor`) or just
/// the kind, for its defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(remote = "Self", tag = "kind", rename_all = "snake_case")]
pub enum OptimizerConfig {
    Adamw(AdamWConfig),
    AdamwScale(AdamWScaleConfig),
    Adafactor(AdafactorConfig),
}

const OPTIMIZER_KINDS: &[&str] = &["adamw", "adamw_scale", "adafactor"];

impl<'de> Deserialize<'de> for OptimizerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Tagged(OptimizerConfig);
        impl<'de> Deserialize<'de> for Tagged {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                OptimizerConfig::deserialize(d).map(Tagged)
            }
        }
        deserialize_kind_or_table(d, "optimizer", OPTIMIZER_KINDS, |k| {
            OptimizerConfig::from_kind(k).map(Tagged)
        })
        .map(|t| t.0)
    }
}

impl Serialize for OptimizerConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        OptimizerConfig::serialize(self, s)
    }
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig::Adamw(AdamWConfig::default())
    }
}

impl OptimizerConfig {
    /// The optimizer named `kind` with its default settings.
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "adamw" => OptimizerConfig::Adamw(AdamWConfig::default()),
            "adamw_scale" => OptimizerConfig::AdamwScale(AdamWScaleConfig::default()),
            "adafactor" => OptimizerConfig::Adafactor(AdafactorConfig::default()),
            _ => return None,
        })
    }

    /// The name `kind` gives it.
    pub fn kind(&self) -> &'static str {
        match self {
            OptimizerConfig::Adamw(_) => "adamw",
            OptimizerConfig::AdamwScale(_) => "adamw_scale",
            OptimizerConfig::Adafactor(_) => "adafactor",
        }
    }

    pub fn weight_decay(&self) -> f64 {
        match self {
            OptimizerConfig::Adamw(c) => c.weight_decay,
            OptimizerConfig::AdamwScale(c) => c.weight_decay,
            OptimizerConfig::Adafactor(c) => c.weight_decay,
        }
    }

    /// Whether [`Optimizer::step`] uses the learning rate it is given
    /// (false for Adafactor with `relative_step`).
    pub fn uses_external_lr(&self) -> bool {
        !matches!(self, OptimizerConfig::Adafactor(c) if c.relative_step)
    }

    /// Checks the settings; the message names the field and what is valid.
    pub fn validate(&self) -> std::result::Result<(), String> {
        let kind = self.kind();
        let field = |name: &str, value: f64, ok: bool, valid: &str| {
            if ok {
                Ok(())
            } else {
                Err(format!(
                    "optimizer ({kind}) {name} = {value}: it must be {valid}"
                ))
            }
        };
        let beta = |name: &str, b: f64| field(name, b, (0.0..1.0).contains(&b), "in [0, 1)");
        let non_negative =
            |name: &str, v: f64| field(name, v, v >= 0.0 && v.is_finite(), "0 or more");
        match self {
            OptimizerConfig::Adamw(AdamWConfig {
                beta1,
                beta2,
                eps,
                weight_decay,
            })
            | OptimizerConfig::AdamwScale(AdamWScaleConfig {
                beta1,
                beta2,
                eps,
                weight_decay,
            }) => {
                beta("beta1", *beta1)?;
                beta("beta2", *beta2)?;
                non_negative("eps", *eps)?;
                non_negative("weight_decay", *weight_decay)
            }
            OptimizerConfig::Adafactor(c) => {
                non_negative("eps1", c.eps1)?;
                non_negative("eps2", c.eps2)?;
                field(
                    "clip_threshold",
                    c.clip_threshold,
                    c.clip_threshold > 0.0 && c.clip_threshold.is_finite(),
                    "greater than 0",
                )?;
                field(
                    "decay_rate",
                    c.decay_rate,
                    c.decay_rate < 0.0 && c.decay_rate.is_finite(),
                    "below 0 (beta2 at step t is 1 - t^decay_rate; T5 used -0.8)",
                )?;
                if let Some(b) = c.beta1 {
                    beta("beta1", b)?;
                }
                non_negative("weight_decay", c.weight_decay)?;
                if c.warmup_init && !c.relative_step {
                    return Err(format!(
                        "optimizer ({kind}) warmup_init = true needs relative_step = true"
                    ));
                }
                Ok(())
            }
        }
    }
}

/// The optimizer's own second moments of one Adafactor parameter.
enum SecondMoment {
    /// Row and column means of a matrix's squared gradients.
    Factored { row: Tensor, col: Tensor },
    /// A vector's squared gradients, elementwise.
    Full(Tensor),
}

enum SlotState {
    Adam {
        exp_avg: Tensor,
        exp_avg_sq: Tensor,
    },
    Adafactor {
        exp_avg: Option<Tensor>,
        second: SecondMoment,
    },
}

/// One parameter, its decay setting and its state.
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// Updates this parameter has had (it skips steps without a gradient,
    /// as PyTorch's optimizers do).
    step: u64,
    state: SlotState,
}

/// The optimizer's scalar state, saved beside its tensors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OptimizerMeta {
    /// The optimizer's `kind`.
    pub kind: String,
    /// Calls of [`Optimizer::step`].
    pub step: u64,
    /// The update count of every parameter whose count differs from
    /// `step` (one that had no gradient in some step); usually empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub param_steps: BTreeMap<String, u64>,
}

/// An optimizer over a model's named parameters.
pub struct Optimizer {
    config: OptimizerConfig,
    slots: Vec<Slot>,
    step: u64,
}

fn zeros(var: &Var, dims: &[usize]) -> Result<Tensor> {
    Ok(Tensor::zeros(dims, DType::F32, var.device())?)
}

/// `‖t‖₂ / sqrt(numel)` as a 0-d f32 tensor, as `transformers`' `_rms`.
fn rms(t: &Tensor) -> Result<Tensor> {
    let n = t.elem_count().max(1) as f64;
    Ok((t.sqr()?.sum_all()?.sqrt()? / n.sqrt())?)
}

impl Optimizer {
    /// An optimizer over `params` (name, variable), with zero state.
    /// `decays(name)` says which parameters get weight decay (see
    /// [`decay_all_but_norms`]).
    pub fn new(
        config: &OptimizerConfig,
        params: &[(String, Var)],
        decays: &dyn Fn(&str) -> bool,
    ) -> Result<Self> {
        config.validate().map_err(Error::Invalid)?;
        let mut slots = Vec::with_capacity(params.len());
        for (name, var) in params {
            let dims = var.dims().to_vec();
            let state = match config {
                OptimizerConfig::Adamw(_) | OptimizerConfig::AdamwScale(_) => SlotState::Adam {
                    exp_avg: zeros(var, &dims)?,
                    exp_avg_sq: zeros(var, &dims)?,
                },
                OptimizerConfig::Adafactor(c) => {
                    let second = if dims.len() >= 2 {
                        let r = dims.len();
                        let mut col = dims[..r - 2].to_vec();
                        col.push(dims[r - 1]);
                        SecondMoment::Factored {
                            row: zeros(var, &dims[..r - 1])?,
                            col: zeros(var, &col)?,
                        }
                    } else {
                        SecondMoment::Full(zeros(var, &dims)?)
                    };
                    let exp_avg = match c.beta1 {
                        Some(_) => Some(zeros(var, &dims)?),
                        None => None,
                    };
                    SlotState::Adafactor { exp_avg, second }
                }
            };
            slots.push(Slot {
                name: name.clone(),
                var: var.clone(),
                decay: decays(name),
                step: 0,
                state,
            });
        }
        Ok(Self {
            config: config.clone(),
            slots,
            step: 0,
        })
    }

    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }

    /// Calls of [`Optimizer::step`] so far.
    pub fn steps_taken(&self) -> u64 {
        self.step
    }

    /// The names of the parameters that get weight decay.
    pub fn decayed(&self) -> impl Iterator<Item = &str> {
        self.slots
            .iter()
            .filter(|s| s.decay)
            .map(|s| s.name.as_str())
    }

    /// Adafactor's relative step size for the next step (before the
    /// parameter scaling), when it sets its own learning rate.
    pub fn relative_step_lr(&self) -> Option<f64> {
        match &self.config {
            OptimizerConfig::Adafactor(c) if c.relative_step => {
                Some(adafactor_relative_step(c, self.step + 1))
            }
            _ => None,
        }
    }

    /// One update of every parameter that has a gradient in `grads`, with
    /// learning rate `lr` (ignored by Adafactor with `relative_step`).
    pub fn step(&mut self, grads: &GradStore, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate {lr}: it must be a number of 0 or more"
            )));
        }
        self.step += 1;
        for slot in &mut self.slots {
            let Some(grad) = grads.get(slot.var.as_tensor()) else {
                continue;
            };
            slot.step += 1;
            if let OptimizerConfig::Adamw(c) = &self.config {
                if adamw_in_place(c, slot, grad, lr)? {
                    continue;
                }
            }
            let grad = grad.detach().to_dtype(DType::F32)?;
            let param = slot.var.as_tensor().detach().to_dtype(DType::F32)?;
            let updated = match &self.config {
                OptimizerConfig::Adamw(c) => adamw(c, slot, &grad, param, lr)?,
                OptimizerConfig::AdamwScale(c) => adamw_scale(c, slot, &grad, param, lr)?,
                OptimizerConfig::Adafactor(c) => adafactor(c, slot, &grad, param, lr)?,
            };
            slot.var.set(&updated.to_dtype(slot.var.dtype())?)?;
        }
        Ok(())
    }

    /// The optimizer's tensors by name (`exp_avg.<param>`,
    /// `exp_avg_sq.<param>`, `exp_avg_sq_row.<param>`,
    /// `exp_avg_sq_col.<param>`), f32, to save beside the model.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for slot in &self.slots {
            for (prefix, t) in slot_tensors(&slot.state) {
                out.push((format!("{prefix}.{}", slot.name), t.clone()));
            }
        }
        out
    }

    /// The optimizer's scalar state, to save beside [`Self::state_tensors`].
    pub fn meta(&self) -> OptimizerMeta {
        OptimizerMeta {
            kind: self.config.kind().to_string(),
            step: self.step,
            param_steps: self
                .slots
                .iter()
                .filter(|s| s.step != self.step)
                .map(|s| (s.name.clone(), s.step))
                .collect(),
        }
    }

    /// [`Self::meta`] as JSON.
    pub fn state_meta(&self) -> serde_json::Value {
        serde_json::to_value(self.meta()).unwrap_or(serde_json::Value::Null)
    }

    /// Restores what [`Self::state_tensors`] and [`Self::state_meta`] saved.
    /// `tensors` must hold exactly this optimizer's tensors, each of its
    /// parameter's shape; they move to the parameters' device as f32.
    /// Nothing changes when it fails.
    pub fn load_state(
        &mut self,
        tensors: &HashMap<String, Tensor>,
        meta: &serde_json::Value,
    ) -> Result<()> {
        let meta: OptimizerMeta = serde_json::from_value(meta.clone()).map_err(|e| {
            Error::Invalid(format!(
                "optimizer state: {e}; expected {{\"kind\": …, \"step\": …}}"
            ))
        })?;
        if meta.kind != self.config.kind() {
            return Err(Error::Invalid(format!(
                "optimizer state is of a `{}` optimizer, but this run uses `{}`",
                meta.kind,
                self.config.kind()
            )));
        }
        if let Some(name) = meta
            .param_steps
            .keys()
            .find(|n| !self.slots.iter().any(|s| &s.name == *n))
        {
            return Err(Error::Invalid(format!(
                "optimizer state has a step count for `{name}`, which is not a parameter of this model"
            )));
        }
        let mut loaded: Vec<Vec<Tensor>> = Vec::with_capacity(self.slots.len());
        let mut used = 0;
        for slot in &self.slots {
            let mut these = Vec::new();
            for (prefix, current) in slot_tensors(&slot.state) {
                let key = format!("{prefix}.{}", slot.name);
                let t = tensors.get(&key).ok_or_else(|| {
                    Error::Invalid(format!(
                        "optimizer state has no tensor `{key}`: it was saved for another model shape or optimizer setting"
                    ))
                })?;
                if t.dims() != current.dims() {
                    return Err(Error::Invalid(format!(
                        "optimizer state tensor `{key}` has shape {:?}, expected {:?}",
                        t.dims(),
                        current.dims()
                    )));
                }
                // A copy of its own: the update may write it in place.
                these.push(
                    t.to_device(current.device())?
                        .to_dtype(DType::F32)?
                        .copy()?,
                );
                used += 1;
            }
            loaded.push(these);
        }
        if used != tensors.len() {
            let extra = tensors
                .keys()
                .filter(|k| {
                    !self.slots.iter().any(|s| {
                        slot_tensors(&s.state)
                            .iter()
                            .any(|(p, _)| **k == format!("{p}.{}", s.name))
                    })
                })
                .min()
                .cloned()
                .unwrap_or_default();
            return Err(Error::Invalid(format!(
                "optimizer state has tensor `{extra}`, which this optimizer does not use: it was saved for another model shape or optimizer setting"
            )));
        }
        for (slot, these) in self.slots.iter_mut().zip(loaded) {
            let mut these = these.into_iter();
            let mut next = || {
                these
                    .next()
                    .ok_or_else(|| Error::Other("optimizer state count".into()))
            };
            match &mut slot.state {
                SlotState::Adam {
                    exp_avg,
                    exp_avg_sq,
                } => {
                    *exp_avg = next()?;
                    *exp_avg_sq = next()?;
                }
                SlotState::Adafactor { exp_avg, second } => {
                    if let Some(m) = exp_avg {
                        *m = next()?;
                    }
                    match second {
                        SecondMoment::Factored { row, col } => {
                            *row = next()?;
                            *col = next()?;
                        }
                        SecondMoment::Full(v) => *v = next()?,
                    }
                }
            }
            slot.step = meta
                .param_steps
                .get(&slot.name)
                .copied()
                .unwrap_or(meta.step);
        }
        self.step = meta.step;
        Ok(())
    }
}

/// A slot's state tensors with their name prefixes, in a fixed order.
fn slot_tensors(state: &SlotState) -> Vec<(&'static str, &Tensor)> {
    match state {
        SlotState::Adam {
            exp_avg,
            exp_avg_sq,
        } => vec![("exp_avg", exp_avg), ("exp_avg_sq", exp_avg_sq)],
        SlotState::Adafactor { exp_avg, second } => {
            let mut v = Vec::new();
            if let Some(m) = exp_avg {
                v.push(("exp_avg", m));
            }
            match second {
                SecondMoment::Factored { row, col } => {
                    v.push(("exp_avg_sq_row", row));
                    v.push(("exp_avg_sq_col", col));
                }
                SecondMoment::Full(s) => v.push(("exp_avg_sq", s)),
            }
            v
        }
    }
}

/// `m + (g - m) * (1 - beta)`: PyTorch's `exp_avg.lerp_(grad, 1 - beta1)`.
fn lerp(m: &Tensor, g: &Tensor, weight: f64) -> Result<Tensor> {
    Ok((m + (g - m)?.affine(weight, 0.0)?)?)
}

/// `v * beta + g² * (1 - beta)`.
fn ema_sq(v: &Tensor, g: &Tensor, beta: f64) -> Result<Tensor> {
    Ok((v.affine(beta, 0.0)? + g.sqr()?.affine(1.0 - beta, 0.0)?)?)
}

fn adam_moments(
    slot: &mut Slot,
    grad: &Tensor,
    beta1: f64,
    beta2: f64,
) -> Result<(Tensor, Tensor)> {
    let SlotState::Adam {
        exp_avg,
        exp_avg_sq,
    } = &mut slot.state
    else {
        return Err(Error::Other("Adam step on non-Adam state".into()));
    };
    *exp_avg = lerp(exp_avg, grad, 1.0 - beta1)?;
    *exp_avg_sq = ema_sq(exp_avg_sq, grad, beta2)?;
    Ok((exp_avg.clone(), exp_avg_sq.clone()))
}

/// `torch.optim.AdamW`, single-tensor path.
fn adamw(
    c: &AdamWConfig,
    slot: &mut Slot,
    grad: &Tensor,
    param: Tensor,
    lr: f64,
) -> Result<Tensor> {
    let wd = if slot.decay { c.weight_decay } else { 0.0 };
    let param = if wd != 0.0 {
        param.affine(1.0 - lr * wd, 0.0)?
    } else {
        param
    };
    let (m, v) = adam_moments(slot, grad, c.beta1, c.beta2)?;
    let t = slot.step as i32;
    let bias1 = 1.0 - c.beta1.powi(t);
    let bias2_sqrt = (1.0 - c.beta2.powi(t)).sqrt();
    let step_size = lr / bias1;
    let denom = (v.sqrt()? / bias2_sqrt)?.affine(1.0, c.eps)?;
    Ok((param - (m / denom)?.affine(step_size, 0.0)?)?)
}

/// [`adamw`] as three in-place passes over memory (first moment, second
/// moment, parameter) instead of a dozen ops that each allocate: on the CPU
/// the optimizer step of a small model otherwise costs a tenth of the
/// training step. The arithmetic is the same, in the same order. Returns
/// false, having changed nothing, where it does not apply (another device
/// or dtype, a strided tensor); [`adamw`] then does the step.
fn adamw_in_place(c: &AdamWConfig, slot: &mut Slot, grad: &Tensor, lr: f64) -> Result<bool> {
    let SlotState::Adam {
        exp_avg,
        exp_avg_sq,
    } = &slot.state
    else {
        return Ok(false);
    };
    let param = slot.var.as_tensor();
    let all = [param, exp_avg, exp_avg_sq, grad];
    if !all.iter().all(|t| {
        t.device().is_cpu()
            && t.dtype() == DType::F32
            && t.is_contiguous()
            && t.shape() == param.shape()
    }) {
        return Ok(false);
    }
    let wd = if slot.decay { c.weight_decay } else { 0.0 };
    let t = slot.step as i32;
    let bias1 = 1.0 - c.beta1.powi(t);
    exp_avg.inplace_op2(
        grad,
        &Lerp {
            weight: (1.0 - c.beta1) as f32,
        },
    )?;
    exp_avg_sq.inplace_op2(
        grad,
        &EmaSquare {
            beta: c.beta2 as f32,
        },
    )?;
    param.inplace_op3(
        exp_avg,
        exp_avg_sq,
        &AdamStep {
            keep: (1.0 - lr * wd) as f32,
            decays: wd != 0.0,
            step_size: (lr / bias1) as f32,
            bias2_sqrt: (1.0 - c.beta2.powi(t)).sqrt() as f32,
            eps: c.eps as f32,
        },
    )?;
    Ok(true)
}

fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("optimizer: expects contiguous f32 tensors"),
    }
}

fn cpu_f32_mut<'a>(s: &'a mut CpuStorage, l: &Layout) -> candle_core::Result<&'a mut [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&mut v[a..b]),
        _ => candle_core::bail!("optimizer: expects contiguous f32 tensors"),
    }
}

/// Elements per parallel task of the in-place passes.
const OPT_CHUNK: usize = 1 << 15;

/// Runs `f` over matching chunks of `dst` and `src` in parallel.
fn zip_chunks(dst: &mut [f32], src: &[f32], f: impl Fn(&mut [f32], &[f32], usize) + Sync) {
    use rayon::prelude::*;
    dst.par_chunks_mut(OPT_CHUNK)
        .zip(src.par_chunks(OPT_CHUNK))
        .enumerate()
        .for_each(|(i, (d, s))| f(d, s, i * OPT_CHUNK));
}

/// `m += (g - m) * weight`, as [`lerp`].
struct Lerp {
    weight: f32,
}

impl InplaceOp2 for Lerp {
    fn name(&self) -> &'static str {
        "adam-lerp"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (m, g) = (cpu_f32_mut(s1, l1)?, cpu_f32(s2, l2)?);
        let w = self.weight;
        zip_chunks(m, g, |m, g, _| {
            for (m, &g) in m.iter_mut().zip(g) {
                *m += (g - *m) * w;
            }
        });
        Ok(())
    }
}

/// `v = v * beta + g² * (1 - beta)`, as [`ema_sq`].
struct EmaSquare {
    beta: f32,
}

impl InplaceOp2 for EmaSquare {
    fn name(&self) -> &'static str {
        "adam-ema-square"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<()> {
        let (v, g) = (cpu_f32_mut(s1, l1)?, cpu_f32(s2, l2)?);
        let (b, rest) = (self.beta, 1.0 - self.beta);
        zip_chunks(v, g, |v, g, _| {
            for (v, &g) in v.iter_mut().zip(g) {
                *v = *v * b + g * g * rest;
            }
        });
        Ok(())
    }
}

/// The parameter's part of [`adamw`]: decay, then
/// `p -= (m / (sqrt(v) / bias2_sqrt + eps)) * step_size`.
struct AdamStep {
    keep: f32,
    decays: bool,
    step_size: f32,
    bias2_sqrt: f32,
    eps: f32,
}

impl InplaceOp3 for AdamStep {
    fn name(&self) -> &'static str {
        "adam-step"
    }

    fn cpu_fwd(
        &self,
        s1: &mut CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<()> {
        let (p, m, v) = (cpu_f32_mut(s1, l1)?, cpu_f32(s2, l2)?, cpu_f32(s3, l3)?);
        let Self {
            keep,
            decays,
            step_size,
            bias2_sqrt,
            eps,
        } = *self;
        zip_chunks(p, m, |p, m, start| {
            let v = &v[start..start + p.len()];
            for ((p, &m), &v) in p.iter_mut().zip(m).zip(v) {
                let decayed = if decays { *p * keep } else { *p };
                *p = decayed - (m / (v.sqrt() / bias2_sqrt + eps)) * step_size;
            }
        });
        Ok(())
    }
}

/// nanoT5's `AdamWScale`.
fn adamw_scale(
    c: &AdamWScaleConfig,
    slot: &mut Slot,
    grad: &Tensor,
    param: Tensor,
    lr: f64,
) -> Result<Tensor> {
    let scale = rms(&param)?.maximum(1e-3)?;
    let (m, v) = adam_moments(slot, grad, c.beta1, c.beta2)?;
    let t = slot.step as i32;
    let bias1 = 1.0 - c.beta1.powi(t);
    let bias2 = 1.0 - c.beta2.powi(t);
    let step_size = lr * bias2.sqrt() / bias1;
    let denom = v.sqrt()?.affine(1.0, c.eps)?;
    let step = (m / denom)?.broadcast_mul(&scale.affine(step_size, 0.0)?)?;
    let param = (param - step)?;
    let wd = if slot.decay { c.weight_decay } else { 0.0 };
    Ok(if wd > 0.0 {
        (&param + param.affine(-lr * wd, 0.0)?)?
    } else {
        param
    })
}

fn adafactor_relative_step(c: &AdafactorConfig, step: u64) -> f64 {
    let min_step = if c.warmup_init {
        1e-6 * step as f64
    } else {
        1e-2
    };
    min_step.min(1.0 / (step as f64).sqrt())
}

/// `transformers.optimization.Adafactor.step` for one parameter.
fn adafactor(
    c: &AdafactorConfig,
    slot: &mut Slot,
    grad: &Tensor,
    param: Tensor,
    lr: f64,
) -> Result<Tensor> {
    let t = slot.step;
    let rel = if c.relative_step {
        adafactor_relative_step(c, t)
    } else {
        lr
    };
    // The step size as a 0-d tensor: `rel * max(eps2, RMS(p))`.
    let lr_t = if c.scale_parameter {
        rms(&param)?.maximum(c.eps2)?.affine(rel, 0.0)?
    } else {
        Tensor::new(rel as f32, param.device())?
    };
    let beta2t = 1.0 - (t as f64).powf(c.decay_rate);
    let sq = grad.sqr()?.affine(1.0, c.eps1)?;
    let SlotState::Adafactor { exp_avg, second } = &mut slot.state else {
        return Err(Error::Other("Adafactor step on non-Adafactor state".into()));
    };
    let update = match second {
        SecondMoment::Factored { row, col } => {
            let r = grad.rank();
            *row = (row.affine(beta2t, 0.0)? + sq.mean(r - 1)?.affine(1.0 - beta2t, 0.0)?)?;
            *col = (col.affine(beta2t, 0.0)? + sq.mean(r - 2)?.affine(1.0 - beta2t, 0.0)?)?;
            // `_approx_sq_grad`: rsqrt(row / mean(row)) ⊗ rsqrt(col).
            let r_factor = row
                .broadcast_div(&row.mean_keepdim(r - 2)?)?
                .sqrt()?
                .recip()?
                .unsqueeze(r - 1)?;
            let c_factor = col.unsqueeze(r - 2)?.sqrt()?.recip()?;
            r_factor.broadcast_mul(&c_factor)?.mul(grad)?
        }
        SecondMoment::Full(v) => {
            *v = (v.affine(beta2t, 0.0)? + sq.affine(1.0 - beta2t, 0.0)?)?;
            v.sqrt()?.recip()?.mul(grad)?
        }
    };
    let clip = (rms(&update)? / c.clip_threshold)?.maximum(1.0)?;
    let mut update = update.broadcast_div(&clip)?.broadcast_mul(&lr_t)?;
    if let (Some(beta1), Some(m)) = (c.beta1, exp_avg.as_mut()) {
        *m = (m.affine(beta1, 0.0)? + update.affine(1.0 - beta1, 0.0)?)?;
        update = m.clone();
    }
    let wd = if slot.decay { c.weight_decay } else { 0.0 };
    let param = if wd != 0.0 {
        (&param + param.broadcast_mul(&lr_t.affine(-wd, 0.0)?)?)?
    } else {
        param
    };
    Ok((param - update)?)
}

/// The global L2 norm of the gradients of `params` (those that have one),
/// as `torch.nn.utils.clip_grad_norm_` computes it, in f32. It is not
/// finite when some gradient holds a NaN or an infinity (or when the sum
/// of squares overflows f32, a gradient norm above ~1.8e19).
pub fn grad_norm(grads: &GradStore, params: &[(String, Var)]) -> Result<f64> {
    let mut total: Option<Tensor> = None;
    for (_, var) in params {
        if let Some(g) = grads.get(var.as_tensor()) {
            let sq = g.detach().to_dtype(DType::F32)?.sqr()?.sum_all()?;
            total = Some(match total {
                Some(t) => (t + sq)?,
                None => sq,
            });
        }
    }
    match total {
        Some(t) => Ok(t.sqrt()?.to_scalar::<f32>()? as f64),
        None => Ok(0.0),
    }
}

/// Whether every gradient of `params` is finite (no NaN, no infinity).
pub fn grads_are_finite(grads: &GradStore, params: &[(String, Var)]) -> Result<bool> {
    Ok(grad_norm(grads, params)?.is_finite())
}

/// `torch.nn.utils.clip_grad_norm_`: when the global norm exceeds
/// `max_norm`, every gradient is multiplied by `max_norm / (norm + 1e-6)`.
/// Returns the norm before clipping. A `max_norm` of 0 (or less) only
/// measures; a non-finite norm leaves the gradients as they are, for the
/// caller to skip the step.
pub fn clip_grad_norm(
    grads: &mut GradStore,
    params: &[(String, Var)],
    max_norm: f64,
) -> Result<f64> {
    let norm = grad_norm(grads, params)?;
    if !norm.is_finite() || max_norm <= 0.0 {
        return Ok(norm);
    }
    let coef = (max_norm as f32 / (norm as f32 + 1e-6)) as f64;
    if coef < 1.0 {
        for (_, var) in params {
            if let Some(g) = grads.get(var.as_tensor()) {
                let scaled = g.detach().affine(coef, 0.0)?;
                grads.insert(var.as_tensor(), scaled);
            }
        }
    }
    Ok(norm)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn var(name: &str, values: &[f32], dims: &[usize]) -> (String, Var) {
        let t = Tensor::from_vec(values.to_vec(), dims, &Device::Cpu).unwrap();
        (name.to_string(), Var::from_tensor(&t).unwrap())
    }

    /// Gradients equal to `grads[i]` for `params[i]`: the gradient of
    /// `sum(p * g)`.
    fn grads_of(params: &[(String, Var)], grads: &[&[f32]]) -> GradStore {
        let mut total: Option<Tensor> = None;
        for ((_, v), g) in params.iter().zip(grads) {
            let g = Tensor::from_vec(g.to_vec(), v.dims(), &Device::Cpu).unwrap();
            let term = (v.as_tensor() * g).unwrap().sum_all().unwrap();
            total = Some(match total {
                Some(t) => (t + term).unwrap(),
                None => term,
            });
        }
        total.unwrap().backward().unwrap()
    }

    fn values(v: &Var) -> Vec<f32> {
        v.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Train {
        optimizer: OptimizerConfig,
    }

    fn parse(text: &str) -> std::result::Result<OptimizerConfig, String> {
        toml::from_str::<Train>(text)
            .map(|t| t.optimizer)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_from_toml() {
        assert_eq!(
            parse("optimizer = \"adamw\"").unwrap(),
            OptimizerConfig::default()
        );
        assert_eq!(
            parse("optimizer = { kind = \"adamw\", weight_decay = 0.01 }").unwrap(),
            OptimizerConfig::Adamw(AdamWConfig {
                weight_decay: 0.01,
                ..AdamWConfig::default()
            })
        );
        assert_eq!(
            parse("optimizer = \"adamw_scale\"").unwrap(),
            OptimizerConfig::AdamwScale(AdamWScaleConfig::default())
        );
        assert_eq!(
            parse("[optimizer]\nkind = \"adafactor\"\nbeta1 = 0.9\nrelative_step = true\n")
                .unwrap(),
            OptimizerConfig::Adafactor(AdafactorConfig {
                beta1: Some(0.9),
                relative_step: true,
                ..AdafactorConfig::default()
            })
        );
        let e = parse("optimizer = \"adam\"").unwrap_err();
        assert!(e.contains("unknown variant `adam`, expected one of"), "{e}");
        let e = parse("optimizer = { kind = \"adamw\", beta = 0.9 }").unwrap_err();
        assert!(e.contains("unknown field `beta`"), "{e}");
        let e = parse("optimizer = { kind = \"sgd\" }").unwrap_err();
        assert!(e.contains("unknown variant `sgd`"), "{e}");
        let e = parse("optimizer = { weight_decay = 0.1 }").unwrap_err();
        assert!(e.contains("missing field `kind`"), "{e}");
        // Written out and read back.
        #[derive(Serialize)]
        struct Out {
            optimizer: OptimizerConfig,
        }
        for cfg in [
            OptimizerConfig::default(),
            OptimizerConfig::AdamwScale(AdamWScaleConfig::default()),
            OptimizerConfig::Adafactor(AdafactorConfig::default()),
            OptimizerConfig::Adafactor(AdafactorConfig {
                beta1: Some(0.5),
                ..AdafactorConfig::default()
            }),
        ] {
            let text = toml::to_string(&Out {
                optimizer: cfg.clone(),
            })
            .unwrap();
            assert_eq!(parse(&text).unwrap(), cfg, "{text}");
        }
    }

    #[test]
    fn validation_names_the_field() {
        let bad = OptimizerConfig::Adamw(AdamWConfig {
            beta2: 1.0,
            ..AdamWConfig::default()
        });
        assert_eq!(
            bad.validate().unwrap_err(),
            "optimizer (adamw) beta2 = 1: it must be in [0, 1)"
        );
        let bad = OptimizerConfig::Adafactor(AdafactorConfig {
            warmup_init: true,
            ..AdafactorConfig::default()
        });
        assert!(bad.validate().unwrap_err().contains("relative_step"));
        let bad = OptimizerConfig::Adafactor(AdafactorConfig {
            decay_rate: 0.8,
            ..AdafactorConfig::default()
        });
        assert!(bad.validate().unwrap_err().contains("decay_rate = 0.8"));
        assert!(Optimizer::new(&bad, &[], &decay_all_but_norms).is_err());
    }

    #[test]
    fn norm_weights_get_no_weight_decay() {
        assert!(!decay_all_but_norms(
            "encoder.block.0.layer.0.layer_norm.weight"
        ));
        assert!(!decay_all_but_norms("decoder.final_layer_norm.weight"));
        assert!(decay_all_but_norms(
            "encoder.block.0.layer.0.SelfAttention.q.weight"
        ));
        assert!(decay_all_but_norms("shared.weight"));
        assert!(!decay_all_but_norms_and_embeddings("shared.weight"));
        assert!(!decay_all_but_norms_and_embeddings("lm_head.weight"));
        assert!(decay_all_but_norms_and_embeddings(
            "decoder.block.1.layer.2.DenseReluDense.wo.weight"
        ));

        // With zero gradients only the decay moves a parameter.
        let initial = [
            var(
                "encoder.block.0.layer.0.SelfAttention.q.weight",
                &[1.0, -2.0, 3.0, 4.0],
                &[2, 2],
            ),
            var("encoder.final_layer_norm.weight", &[1.0, 2.0], &[2]),
        ];
        for cfg in [
            OptimizerConfig::Adamw(AdamWConfig {
                weight_decay: 0.1,
                ..AdamWConfig::default()
            }),
            OptimizerConfig::AdamwScale(AdamWScaleConfig {
                weight_decay: 0.1,
                ..AdamWScaleConfig::default()
            }),
            OptimizerConfig::Adafactor(AdafactorConfig {
                weight_decay: 0.1,
                scale_parameter: false,
                ..AdafactorConfig::default()
            }),
        ] {
            let params = vec![
                var(&initial[0].0, &values(&initial[0].1), &[2, 2]),
                var(&initial[1].0, &values(&initial[1].1), &[2]),
            ];
            let mut opt = Optimizer::new(&cfg, &params, &decay_all_but_norms).unwrap();
            assert_eq!(
                opt.decayed().collect::<Vec<_>>(),
                vec!["encoder.block.0.layer.0.SelfAttention.q.weight"]
            );
            let grads = grads_of(&params, &[&[0.0; 4], &[0.0; 2]]);
            opt.step(&grads, 0.5).unwrap();
            let kind = cfg.kind();
            assert!(
                close(&values(&params[0].1), &[0.95, -1.9, 2.85, 3.8], 1e-6),
                "{kind}: {:?}",
                values(&params[0].1)
            );
            assert_eq!(values(&params[1].1), vec![1.0, 2.0], "{kind}");
        }
    }

    #[test]
    fn adamw_first_step_is_lr_times_sign() {
        let params = vec![var("w", &[1.0, 1.0, 1.0], &[3])];
        let mut opt =
            Optimizer::new(&OptimizerConfig::default(), &params, &decay_all_but_norms).unwrap();
        let grads = grads_of(&params, &[&[0.5, -2.0, 0.0]]);
        opt.step(&grads, 0.1).unwrap();
        assert!(close(&values(&params[0].1), &[0.9, 1.1, 1.0], 1e-6));
        assert_eq!(opt.steps_taken(), 1);
        let names: Vec<String> = opt.state_tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, vec!["exp_avg.w", "exp_avg_sq.w"]);
    }

    #[test]
    fn adafactor_factors_matrices_only() {
        let params = vec![var("m", &[0.1; 6], &[2, 3]), var("v", &[0.1; 3], &[3])];
        let cfg = OptimizerConfig::Adafactor(AdafactorConfig {
            beta1: Some(0.9),
            ..AdafactorConfig::default()
        });
        let opt = Optimizer::new(&cfg, &params, &decay_all_but_norms).unwrap();
        let shapes: Vec<(String, Vec<usize>)> = opt
            .state_tensors()
            .into_iter()
            .map(|(n, t)| (n, t.dims().to_vec()))
            .collect();
        assert_eq!(
            shapes,
            vec![
                ("exp_avg.m".to_string(), vec![2, 3]),
                ("exp_avg_sq_row.m".to_string(), vec![2]),
                ("exp_avg_sq_col.m".to_string(), vec![3]),
                ("exp_avg.v".to_string(), vec![3]),
                ("exp_avg_sq.v".to_string(), vec![3]),
            ]
        );
        // relative_step sets its own rate: min(1e-2, 1/sqrt(step)).
        let rel = OptimizerConfig::Adafactor(AdafactorConfig {
            relative_step: true,
            ..AdafactorConfig::default()
        });
        assert!(!rel.uses_external_lr());
        let opt = Optimizer::new(&rel, &params, &decay_all_but_norms).unwrap();
        assert_eq!(opt.relative_step_lr(), Some(1e-2));
    }

    #[test]
    fn half_precision_parameters_keep_their_dtype_and_f32_state() {
        let t = Tensor::new(&[1.0f32, -1.0], &Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let params = vec![("w".to_string(), Var::from_tensor(&t).unwrap())];
        let mut opt =
            Optimizer::new(&OptimizerConfig::default(), &params, &decay_all_but_norms).unwrap();
        let loss = params[0].1.as_tensor().sum_all().unwrap();
        let grads = loss.backward().unwrap();
        opt.step(&grads, 0.25).unwrap();
        assert_eq!(params[0].1.dtype(), DType::BF16);
        let v: Vec<f32> = params[0]
            .1
            .as_tensor()
            .to_dtype(DType::F32)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(v, vec![0.75, -1.25]);
        assert!(opt
            .state_tensors()
            .iter()
            .all(|(_, t)| t.dtype() == DType::F32));
    }

    #[test]
    fn clipping_scales_to_max_norm_and_returns_the_norm() {
        let params = vec![var("a", &[0.0, 0.0], &[2]), var("b", &[0.0], &[1])];
        let mut grads = grads_of(&params, &[&[3.0, 0.0], &[4.0]]);
        let norm = clip_grad_norm(&mut grads, &params, 1.0).unwrap();
        assert!((norm - 5.0).abs() < 1e-6);
        let a: Vec<f32> = grads
            .get(params[0].1.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        let b: Vec<f32> = grads
            .get(params[1].1.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert!(close(&a, &[0.6, 0.0], 1e-6) && close(&b, &[0.8], 1e-6));
        assert!((grad_norm(&grads, &params).unwrap() - 1.0).abs() < 1e-5);
        // Under the limit, or with clipping off: untouched.
        let norm = clip_grad_norm(&mut grads, &params, 2.0).unwrap();
        assert!((norm - 1.0).abs() < 1e-5);
        let mut grads = grads_of(&params, &[&[3.0, 0.0], &[4.0]]);
        assert!((clip_grad_norm(&mut grads, &params, 0.0).unwrap() - 5.0).abs() < 1e-6);
        let b: Vec<f32> = grads
            .get(params[1].1.as_tensor())
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(b, vec![4.0]);
        // A NaN or an infinity shows in the norm; the gradients stay.
        let mut grads = grads_of(&params, &[&[f32::NAN, 0.0], &[4.0]]);
        assert!(clip_grad_norm(&mut grads, &params, 1.0).unwrap().is_nan());
        assert!(!grads_are_finite(&grads, &params).unwrap());
        let grads = grads_of(&params, &[&[f32::INFINITY, 0.0], &[4.0]]);
        assert!(!grads_are_finite(&grads, &params).unwrap());
        let grads = grads_of(&params, &[&[1.0, 0.0], &[4.0]]);
        assert!(grads_are_finite(&grads, &params).unwrap());
    }

    #[test]
    fn state_round_trips_and_bad_state_is_refused() {
        let make = || {
            vec![
                var("m", &[0.5, -0.25, 1.0, 2.0], &[2, 2]),
                var("v", &[1.0, 2.0], &[2]),
            ]
        };
        let cfg = OptimizerConfig::Adafactor(AdafactorConfig {
            beta1: Some(0.9),
            weight_decay: 0.01,
            ..AdafactorConfig::default()
        });
        let grads_a: &[&[f32]] = &[&[0.1, -0.2, 0.3, 0.4], &[1.0, -1.0]];
        let grads_b: &[&[f32]] = &[&[-0.3, 0.2, 0.1, 0.0], &[0.5, 2.0]];

        let straight = make();
        let mut opt = Optimizer::new(&cfg, &straight, &decay_all_but_norms).unwrap();
        opt.step(&grads_of(&straight, grads_a), 1e-2).unwrap();
        let tensors: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        let meta = opt.state_meta();
        assert_eq!(meta["kind"], "adafactor");
        assert_eq!(meta["step"], 1);
        let after_one: Vec<Vec<f32>> = straight.iter().map(|(_, v)| values(v)).collect();
        opt.step(&grads_of(&straight, grads_b), 1e-2).unwrap();

        let resumed = make();
        for ((_, v), vals) in resumed.iter().zip(&after_one) {
            v.set(&Tensor::from_vec(vals.clone(), v.dims(), &Device::Cpu).unwrap())
                .unwrap();
        }
        let mut opt2 = Optimizer::new(&cfg, &resumed, &decay_all_but_norms).unwrap();
        opt2.load_state(&tensors, &meta).unwrap();
        assert_eq!(opt2.steps_taken(), 1);
        opt2.step(&grads_of(&resumed, grads_b), 1e-2).unwrap();
        for ((_, a), (_, b)) in straight.iter().zip(&resumed) {
            assert_eq!(values(a), values(b));
        }

        // Another kind, a missing tensor, a wrong shape, an extra tensor.
        let mut adam =
            Optimizer::new(&OptimizerConfig::default(), &resumed, &decay_all_but_norms).unwrap();
        let e = adam.load_state(&tensors, &meta).unwrap_err().to_string();
        assert_eq!(
            e,
            "optimizer state is of a `adafactor` optimizer, but this run uses `adamw`"
        );
        let mut missing = tensors.clone();
        missing.remove("exp_avg_sq_col.m");
        let e = opt2.load_state(&missing, &meta).unwrap_err().to_string();
        assert!(e.contains("no tensor `exp_avg_sq_col.m`"), "{e}");
        let mut reshaped = tensors.clone();
        reshaped.insert(
            "exp_avg.v".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = opt2.load_state(&reshaped, &meta).unwrap_err().to_string();
        assert!(e.contains("`exp_avg.v` has shape [3], expected [2]"), "{e}");
        let mut extra = tensors.clone();
        extra.insert(
            "exp_avg.x".into(),
            Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap(),
        );
        let e = opt2.load_state(&extra, &meta).unwrap_err().to_string();
        assert!(
            e.contains("tensor `exp_avg.x`, which this optimizer does not use"),
            "{e}"
        );
        let e = opt2
            .load_state(&tensors, &serde_json::json!({"kind": "adafactor"}))
            .unwrap_err()
            .to_string();
        assert!(e.contains("missing field `step`"), "{e}");
    }

    #[test]
    fn parameters_without_a_gradient_are_skipped_and_counted() {
        let params = vec![var("a", &[1.0], &[1]), var("b", &[1.0], &[1])];
        let mut opt =
            Optimizer::new(&OptimizerConfig::default(), &params, &decay_all_but_norms).unwrap();
        let grads = params[0]
            .1
            .as_tensor()
            .sum_all()
            .unwrap()
            .backward()
            .unwrap();
        opt.step(&grads, 0.1).unwrap();
        assert_eq!(values(&params[1].1), vec![1.0]);
        let meta = opt.meta();
        assert_eq!(meta.step, 1);
        assert_eq!(meta.param_steps, BTreeMap::from([("b".to_string(), 0)]));
        let tensors: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        let mut again =
            Optimizer::new(&OptimizerConfig::default(), &params, &decay_all_but_norms).unwrap();
        again.load_state(&tensors, &opt.state_meta()).unwrap();
        assert_eq!(again.meta(), meta);
    }
}
