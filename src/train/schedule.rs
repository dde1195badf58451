//! Learning-rate schedules: the shape of the learning rate over a run, and
//! the user's runtime changes to it.
//!
//! A [`ScheduleConfig`] is the shape as the experiment TOML names it, an
//! inline table tagged by `kind` (a bare string takes the defaults):
//!
//! ```toml
//! schedule = "cosine"
//! schedule = { kind = "constant" }                        # warmup_steps = 0
//! schedule = { kind = "linear", warmup_steps = 500 }
//! schedule = { kind = "cosine", warmup_steps = 500, min_ratio = 0.1 }
//! schedule = { kind = "inverse_sqrt", warmup_steps = 10000, linear_warmup = false }
//! ```
//!
//! [`Schedule`] is that shape with the peak learning rate and the run's
//! length. [`Schedule::lr_at`] takes a 0-based step, as PyTorch's `LambdaLR`
//! counts them: `lr_at(n)` is the learning rate of the `n`-th update, so
//! with a linear warm-up the first update has learning rate 0, exactly as a
//! `transformers` training loop.
//!
//! [`LrSchedule`] adds the user's runtime scaling: a multiplicative `scale`
//! on the whole schedule, so that a learning rate changed at step `n` scales
//! the schedule from there on and warm-up and decay keep their shape.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::f64::consts::PI;

use crate::error::{Error, Result};

/// The shape of a schedule, as the experiment TOML writes it. Every shape
/// starts with a linear warm-up from 0 to the peak over `warmup_steps`
/// (none when 0), as `transformers`' `get_*_schedule_with_warmup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(
    remote = "Self",
    tag = "kind",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum ScheduleConfig {
    /// The peak learning rate after warm-up (`get_constant_schedule_with_warmup`).
    Constant {
        #[serde(default)]
        warmup_steps: u64,
    },
    /// Linear decay from the peak at the end of warm-up to 0 at the last
    /// step (`get_linear_schedule_with_warmup`).
    Linear {
        #[serde(default)]
        warmup_steps: u64,
    },
    /// Half a cosine from the peak at the end of warm-up down to
    /// `min_ratio * peak` at the last step (`get_cosine_schedule_with_warmup`
    /// when `min_ratio` is 0, `get_cosine_with_min_lr_schedule_with_warmup`
    /// with `min_lr_rate = min_ratio` otherwise).
    Cosine {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default)]
        min_ratio: f64,
    },
    /// `peak * sqrt(warmup_steps / step)` after warm-up, so the peak is
    /// reached at the end of warm-up and continues smoothly. With
    /// `linear_warmup` (the default) the warm-up is a linear ramp, which is
    /// `transformers`' `get_inverse_sqrt_schedule` (its `timescale` equal to
    /// `warmup_steps`); without it the learning rate holds at the peak
    /// during warm-up, which is T5's `1/sqrt(max(step, warmup))` with the
    /// peak `1/sqrt(warmup)` (T5: peak 0.01, 10,000 warm-up steps). A
    /// warm-up of 0 is taken as 1.
    InverseSqrt {
        #[serde(default)]
        warmup_steps: u64,
        #[serde(default = "default_true")]
        linear_warmup: bool,
    },
}

fn default_true() -> bool {
    true
}

/// The schedules by the name a bare string gives, with default settings.
const SCHEDULE_KINDS: &[&str] = &["constant", "linear", "cosine", "inverse_sqrt"];

impl ScheduleConfig {
    /// The shape named `kind` with its defaults (no warm-up).
    pub fn from_kind(kind: &str) -> Option<Self> {
        Some(match kind {
            "constant" => ScheduleConfig::Constant { warmup_steps: 0 },
            "linear" => ScheduleConfig::Linear { warmup_steps: 0 },
            "cosine" => ScheduleConfig::Cosine {
                warmup_steps: 0,
                min_ratio: 0.0,
            },
            "inverse_sqrt" => ScheduleConfig::InverseSqrt {
                warmup_steps: 0,
                linear_warmup: true,
            },
            _ => return None,
        })
    }

    /// The name of the shape, as `kind` writes it.
    pub fn kind(&self) -> &'static str {
        match self {
            ScheduleConfig::Constant { .. } => "constant",
            ScheduleConfig::Linear { .. } => "linear",
            ScheduleConfig::Cosine { .. } => "cosine",
            ScheduleConfig::InverseSqrt { .. } => "inverse_sqrt",
        }
    }

    pub fn warmup_steps(&self) -> u64 {
        match *self {
            ScheduleConfig::Constant { warmup_steps }
            | ScheduleConfig::Linear { warmup_steps }
            | ScheduleConfig::Cosine { warmup_steps, .. }
            | ScheduleConfig::InverseSqrt { warmup_steps, .. } => warmup_steps,
        }
    }

    /// Sets the warm-up length of any shape.
    pub fn set_warmup_steps(&mut self, steps: u64) {
        match self {
            ScheduleConfig::Constant { warmup_steps }
            | ScheduleConfig::Linear { warmup_steps }
            | ScheduleConfig::Cosine { warmup_steps, .. }
            | ScheduleConfig::InverseSqrt { warmup_steps, .. } => *warmup_steps = steps,
        }
    }

    /// Checks the settings; the message names the field and what is valid.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let ScheduleConfig::Cosine { min_ratio, .. } = *self {
            if !(0.0..=1.0).contains(&min_ratio) {
                return Err(format!(
                    "schedule min_ratio = {min_ratio}: it must be between 0 and 1"
                ));
            }
        }
        Ok(())
    }

    /// The multiplier of the peak learning rate for the 0-based `step` of
    /// a run of `total_steps` updates.
    pub fn factor(&self, step: u64, total_steps: u64) -> f64 {
        let warmup = self.warmup_steps();
        let ramp = |step: u64| step as f64 / warmup.max(1) as f64;
        match *self {
            ScheduleConfig::Constant { .. } => {
                if step < warmup {
                    ramp(step)
                } else {
                    1.0
                }
            }
            ScheduleConfig::Linear { .. } => {
                if step < warmup {
                    ramp(step)
                } else {
                    let left = total_steps as f64 - step as f64;
                    (left / total_steps.saturating_sub(warmup).max(1) as f64).max(0.0)
                }
            }
            ScheduleConfig::Cosine { min_ratio, .. } => {
                if step < warmup {
                    ramp(step)
                } else {
                    let progress =
                        (step - warmup) as f64 / total_steps.saturating_sub(warmup).max(1) as f64;
                    let cosine = 0.5 * (1.0 + (PI * progress).cos());
                    // Past the last step the cosine would rise again; hold
                    // at the floor instead.
                    let cosine = if progress >= 1.0 { 0.0 } else { cosine };
                    (cosine * (1.0 - min_ratio) + min_ratio).max(0.0)
                }
            }
            ScheduleConfig::InverseSqrt { linear_warmup, .. } => {
                let timescale = warmup.max(1) as f64;
                if step < warmup {
                    if linear_warmup {
                        ramp(step)
                    } else {
                        1.0
                    }
                } else {
                    (timescale / (step as f64).max(timescale)).sqrt()
                }
            }
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig::Constant { warmup_steps: 0 }
    }
}

/// Takes the tagged table (`{ kind = "linear", warmup_steps = 100 }`) or
/// a bare kind (`"linear"`, with its defaults).
impl<'de> Deserialize<'de> for ScheduleConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct Tagged(ScheduleConfig);
        impl<'de> Deserialize<'de> for Tagged {
            fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
                ScheduleConfig::deserialize(d).map(Tagged)
            }
        }
        deserialize_kind_or_table(d, "schedule", SCHEDULE_KINDS, |k| {
            ScheduleConfig::from_kind(k).map(Tagged)
        })
        .map(|t| t.0)
    }
}

impl Serialize for ScheduleConfig {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        ScheduleConfig::serialize(self, s)
    }
}

/// Deserializes a config enum tagged by `kind` from either its table or a
/// bare kind string (the kind's defaults). Shared with the optimizer
/// config.
pub(crate) fn deserialize_kind_or_table<'de, D, T>(
    d: D,
    what: &'static str,
    kinds: &'static [&'static str],
    from_kind: fn(&str) -> Option<T>,
) -> std::result::Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    use serde::de::{self, MapAccess, Visitor};
    use std::marker::PhantomData;

    struct KindOrTable<T> {
        what: &'static str,
        kinds: &'static [&'static str],
        from_kind: fn(&str) -> Option<T>,
        marker: PhantomData<T>,
    }

    impl<'de, T: Deserialize<'de>> Visitor<'de> for KindOrTable<T> {
        type Value = T;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            write!(
                f,
                "a {} kind ({}) or a table with a `kind` key",
                self.what,
                self.kinds.join(", ")
            )
        }

        fn visit_str<E: de::Error>(self, v: &str) -> std::result::Result<T, E> {
            (self.from_kind)(v).ok_or_else(|| de::Error::unknown_variant(v, self.kinds))
        }

        fn visit_map<M: MapAccess<'de>>(self, map: M) -> std::result::Result<T, M::Error> {
            T::deserialize(de::value::MapAccessDeserializer::new(map))
        }
    }

    d.deserialize_any(KindOrTable {
        what,
        kinds,
        from_kind,
        marker: PhantomData,
    })
}

/// A schedule shape with its peak learning rate and the run's length.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub shape: ScheduleConfig,
    /// The learning rate at the end of warm-up.
    pub peak_lr: f64,
    /// The updates in the run; decaying shapes reach their floor here.
    pub total_steps: u64,
}

impl Schedule {
    pub fn new(shape: ScheduleConfig, peak_lr: f64, total_steps: u64) -> Result<Self> {
        shape.validate().map_err(Error::Invalid)?;
        if !(peak_lr.is_finite() && peak_lr >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate {peak_lr}: it must be a number of 0 or more"
            )));
        }
        Ok(Self {
            shape,
            peak_lr,
            total_steps,
        })
    }

    /// The learning rate of the 0-based `step`-th update.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.peak_lr * self.shape.factor(step, self.total_steps)
    }
}

/// A schedule as the trainer runs it: the configured [`Schedule`] times a
/// `scale` that the user's learning-rate changes set. Serialize it into a
/// checkpoint; deserializing restores it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LrSchedule {
    pub base: Schedule,
    /// Multiplies the whole schedule; 1 until the user changes the rate.
    pub scale: f64,
}

impl LrSchedule {
    pub fn new(base: Schedule) -> Self {
        Self { base, scale: 1.0 }
    }

    /// The learning rate of the 0-based `step`-th update.
    pub fn lr_at(&self, step: u64) -> f64 {
        self.scale * self.base.lr_at(step)
    }

    /// Makes the learning rate at `step` equal `lr`, scaling the schedule
    /// from there on: warm-up and decay keep their shape. Where the
    /// configured schedule is 0 at `step` (the very first warm-up step, or
    /// the end of a decay to 0) there is nothing to scale, so `lr` is taken
    /// as the new peak instead. Returns the new scale.
    pub fn set_lr(&mut self, step: u64, lr: f64) -> Result<f64> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning rate {lr}: it must be a number of 0 or more"
            )));
        }
        let base = self.base.lr_at(step);
        let reference = if base > 0.0 { base } else { self.base.peak_lr };
        if reference <= 0.0 {
            return Err(Error::Invalid(
                "the schedule's peak learning rate is 0, so it cannot be scaled".into(),
            ));
        }
        self.scale = lr / reference;
        Ok(self.scale)
    }

    /// Multiplies the schedule from now on by `factor`. Returns the new scale.
    pub fn scale_lr(&mut self, factor: f64) -> Result<f64> {
        if !(factor.is_finite() && factor >= 0.0) {
            return Err(Error::Invalid(format!(
                "learning-rate factor {factor}: it must be a number of 0 or more"
            )));
        }
        self.scale *= factor;
        Ok(self.scale)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1.0)
    }

    fn sched(shape: ScheduleConfig) -> Schedule {
        Schedule::new(shape, 1e-3, 110).unwrap()
    }

    #[test]
    fn constant_warms_up_then_holds() {
        let s = sched(ScheduleConfig::Constant { warmup_steps: 10 });
        assert_eq!(s.lr_at(0), 0.0);
        assert!(close(s.lr_at(5), 0.5e-3));
        assert!(close(s.lr_at(10), 1e-3));
        assert!(close(s.lr_at(1000), 1e-3));
        let s = sched(ScheduleConfig::Constant { warmup_steps: 0 });
        assert!(close(s.lr_at(0), 1e-3));
    }

    #[test]
    fn linear_matches_transformers() {
        // get_linear_schedule_with_warmup(num_warmup_steps=10, num_training_steps=110)
        let s = sched(ScheduleConfig::Linear { warmup_steps: 10 });
        assert_eq!(s.lr_at(0), 0.0);
        assert!(close(s.lr_at(1), 1e-4));
        assert!(close(s.lr_at(10), 1e-3));
        assert!(close(s.lr_at(60), 0.5e-3));
        assert!(close(s.lr_at(109), 1e-5));
        assert_eq!(s.lr_at(110), 0.0);
        assert_eq!(s.lr_at(500), 0.0);
    }

    #[test]
    fn cosine_matches_transformers() {
        let s = sched(ScheduleConfig::Cosine {
            warmup_steps: 10,
            min_ratio: 0.0,
        });
        assert!(close(s.lr_at(5), 0.5e-3));
        assert!(close(s.lr_at(10), 1e-3));
        assert!(close(s.lr_at(60), 0.5e-3));
        // A quarter of the way: 0.5 * (1 + cos(pi / 4)).
        let q = 0.5 * (1.0 + (PI / 4.0).cos());
        assert!(close(s.lr_at(35), q * 1e-3));
        assert!(s.lr_at(110).abs() < 1e-18);
        assert!(s.lr_at(200).abs() < 1e-18);
        let s = sched(ScheduleConfig::Cosine {
            warmup_steps: 10,
            min_ratio: 0.1,
        });
        assert!(close(s.lr_at(10), 1e-3));
        assert!(close(s.lr_at(60), 0.55e-3));
        assert!(close(s.lr_at(110), 1e-4));
        assert!(close(s.lr_at(1000), 1e-4));
    }

    #[test]
    fn inverse_sqrt_both_warmups() {
        let s = sched(ScheduleConfig::InverseSqrt {
            warmup_steps: 100,
            linear_warmup: true,
        });
        assert!(close(s.lr_at(50), 0.5e-3));
        assert!(close(s.lr_at(100), 1e-3));
        assert!(close(s.lr_at(400), 0.5e-3));
        assert!(close(s.lr_at(10_000), 1e-4));
        // T5: 1/sqrt(max(step, 10^4)), a peak of 0.01.
        let t5 = Schedule::new(
            ScheduleConfig::InverseSqrt {
                warmup_steps: 10_000,
                linear_warmup: false,
            },
            0.01,
            1_000_000,
        )
        .unwrap();
        for step in [0u64, 1, 5000, 9999, 10_000, 40_000, 250_000] {
            let want = 1.0 / (step.max(10_000) as f64).sqrt();
            assert!(close(t5.lr_at(step), want), "step {step}");
        }
        let s = sched(ScheduleConfig::InverseSqrt {
            warmup_steps: 0,
            linear_warmup: true,
        });
        assert!(close(s.lr_at(0), 1e-3));
        assert!(close(s.lr_at(4), 0.5e-3));
    }

    #[test]
    fn set_lr_scales_the_rest_of_the_schedule() {
        let mut s = LrSchedule::new(sched(ScheduleConfig::Linear { warmup_steps: 10 }));
        // In warm-up at step 5 (base 5e-4): doubling keeps the ramp's shape.
        s.set_lr(5, 1e-3).unwrap();
        assert!(close(s.scale, 2.0));
        assert!(close(s.lr_at(5), 1e-3));
        assert!(close(s.lr_at(10), 2e-3));
        assert!(close(s.lr_at(60), 1e-3));
        assert_eq!(s.lr_at(110), 0.0);
        // Scaling composes.
        s.scale_lr(0.5).unwrap();
        assert!(close(s.lr_at(60), 0.5e-3));
        assert!(close(s.lr_at(10), 1e-3));
        // Where the base is 0 the new rate becomes the peak.
        s.set_lr(0, 3e-3).unwrap();
        assert!(close(s.lr_at(10), 3e-3));
        assert!(s.set_lr(3, f64::NAN).is_err());
        assert!(s.scale_lr(-1.0).is_err());
    }

    #[test]
    fn lr_schedule_round_trips_through_json() {
        let mut s = LrSchedule::new(sched(ScheduleConfig::Cosine {
            warmup_steps: 3,
            min_ratio: 0.25,
        }));
        s.scale_lr(0.3).unwrap();
        let json = serde_json::to_string(&s).unwrap();
        let back: LrSchedule = serde_json::from_str(&json).unwrap();
        assert_eq!(back, s);
        for step in 0..120 {
            assert_eq!(back.lr_at(step), s.lr_at(step));
        }
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Train {
        schedule: ScheduleConfig,
    }

    fn parse(toml_text: &str) -> std::result::Result<ScheduleConfig, String> {
        toml::from_str::<Train>(toml_text)
            .map(|t| t.schedule)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn parses_from_toml() {
        assert_eq!(
            parse("schedule = \"cosine\"").unwrap(),
            ScheduleConfig::Cosine {
                warmup_steps: 0,
                min_ratio: 0.0
            }
        );
        assert_eq!(
            parse("schedule = { kind = \"linear\", warmup_steps = 500 }").unwrap(),
            ScheduleConfig::Linear { warmup_steps: 500 }
        );
        assert_eq!(
            parse("schedule = { kind = \"inverse_sqrt\", warmup_steps = 10000, linear_warmup = false }")
                .unwrap(),
            ScheduleConfig::InverseSqrt {
                warmup_steps: 10_000,
                linear_warmup: false
            }
        );
        assert_eq!(
            parse("[schedule]\nkind = \"constant\"").unwrap(),
            ScheduleConfig::Constant { warmup_steps: 0 }
        );
        let e = parse("schedule = \"cosin\"").unwrap_err();
        assert!(e.contains("unknown variant `cosin`"), "{e}");
        let e = parse("schedule = { kind = \"linear\", warmup = 5 }").unwrap_err();
        assert!(e.contains("unknown field `warmup`"), "{e}");
        let e = parse("schedule = { warmup_steps = 5 }").unwrap_err();
        assert!(e.contains("kind"), "{e}");
    }

    #[test]
    fn serializes_to_toml_and_back() {
        #[derive(Serialize)]
        struct Out {
            schedule: ScheduleConfig,
        }
        let shape = ScheduleConfig::Cosine {
            warmup_steps: 7,
            min_ratio: 0.1,
        };
        let text = toml::to_string(&Out {
            schedule: shape.clone(),
        })
        .unwrap();
        assert_eq!(parse(&text).unwrap(), shape, "{text}");
    }
}
