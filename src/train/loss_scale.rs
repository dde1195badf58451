//! Dynamic loss scaling for f16 training: the loss is multiplied by a
//! large factor before the backward pass so that small gradients do not
//! vanish in f16, and the gradients are divided by it again before the
//! optimizer sees them. An overflow (a non-finite gradient with a finite
//! loss) skips the step and halves the factor; a long run of good steps
//! doubles it. The same policy as PyTorch's `GradScaler`.

use serde::{Deserialize, Serialize};

/// The factor f16 training starts from (2^16, as `GradScaler`).
pub const INITIAL_SCALE: f64 = 65_536.0;
/// Good steps in a row before the factor doubles.
pub const GROWTH_INTERVAL: u64 = 2000;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The factor; 1 when scaling is off.
    pub scale: f64,
    /// Good steps since the factor last changed.
    pub good_steps: u64,
    pub enabled: bool,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale::new(false)
    }
}

impl LossScale {
    pub fn new(enabled: bool) -> Self {
        LossScale {
            scale: if enabled { INITIAL_SCALE } else { 1.0 },
            good_steps: 0,
            enabled,
        }
    }

    /// What the loss is multiplied by before the backward pass.
    pub fn factor(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// After a step: `overflowed` when the gradients were not finite. Returns
    /// whether the step was an overflow that scaling absorbs (the step is
    /// skipped, the factor halved) rather than a divergence.
    pub fn update(&mut self, overflowed: bool) -> bool {
        if !self.enabled {
            return false;
        }
        if overflowed {
            self.scale = (self.scale / 2.0).max(1.0);
            self.good_steps = 0;
            return true;
        }
        self.good_steps += 1;
        if self.good_steps >= GROWTH_INTERVAL {
            self.scale *= 2.0;
            self.good_steps = 0;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflows_halve_and_good_runs_double() {
        let mut s = LossScale::new(true);
        assert_eq!(s.factor(), INITIAL_SCALE);
        assert!(s.update(true));
        assert_eq!(s.factor(), INITIAL_SCALE / 2.0);
        for _ in 0..GROWTH_INTERVAL - 1 {
            assert!(!s.update(false));
        }
        assert_eq!(s.factor(), INITIAL_SCALE / 2.0);
        s.update(false);
        assert_eq!(s.factor(), INITIAL_SCALE);
        // Never below 1.
        for _ in 0..100 {
            s.update(true);
        }
        assert_eq!(s.factor(), 1.0);
    }

    #[test]
    fn off_is_a_factor_of_one_that_never_absorbs() {
        let mut s = LossScale::new(false);
        assert_eq!(s.factor(), 1.0);
        assert!(!s.update(true));
        assert_eq!(s.factor(), 1.0);
    }
}
