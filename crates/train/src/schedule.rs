//! Learning-rate schedules: constant, step, cosine, one-cycle, and reduce-on-plateau (the
//! paper's aggressive lowering: keep a history of the train error, lower the rate when it
//! stops falling).

use tern_core::{Error, Result};

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum ScheduleKind {
    Constant,
    /// lr · gamma^(epoch / every)
    Step {
        every: usize,
        gamma: f32,
    },
    /// Half-cosine from lr to 0 over the run.
    Cosine,
    /// Linear warm-up from lr/25 to lr over the first 30%, then cosine down to lr/10⁴.
    OneCycle,
    /// Multiply by `factor` when the train error has not improved for `patience` epochs.
    Plateau {
        patience: usize,
        factor: f32,
        min_lr: f32,
    },
}

impl ScheduleKind {
    pub const NAMES: [&'static str; 5] = ["constant", "step", "cosine", "onecycle", "plateau"];

    /// Parses `--schedule`; the numeric knobs come from their own flags.
    pub fn parse(s: &str, step_every: usize, step_gamma: f32, patience: usize, factor: f32) -> Result<Self> {
        let kind = match s {
            "constant" => ScheduleKind::Constant,
            "step" => ScheduleKind::Step { every: step_every, gamma: step_gamma },
            "cosine" => ScheduleKind::Cosine,
            "onecycle" | "one-cycle" => ScheduleKind::OneCycle,
            "plateau" => ScheduleKind::Plateau { patience, factor, min_lr: 0.0 },
            _ => {
                return Err(Error::invalid(
                    "--schedule",
                    format!("unknown schedule `{s}`: expected one of {:?}", Self::NAMES),
                ))
            }
        };
        match &kind {
            ScheduleKind::Step { every: 0, .. } => Err(Error::invalid("--step-every", "must be at least 1")),
            ScheduleKind::Step { gamma, .. } if !(*gamma > 0.0 && *gamma <= 1.0) => {
                Err(Error::invalid("--step-gamma", format!("{gamma}: expected 0 < gamma <= 1")))
            }
            ScheduleKind::Plateau { factor, .. } if !(*factor > 0.0 && *factor < 1.0) => {
                Err(Error::invalid("--plateau-factor", format!("{factor}: expected 0 < factor < 1")))
            }
            _ => Ok(kind),
        }
    }
}

/// A schedule with its state (the plateau history), saved in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    pub kind: ScheduleKind,
    pub base_lr: f32,
    pub epochs: usize,
    /// Current rate of the plateau schedule.
    pub plateau_lr: f32,
    /// Lowest train error seen (None before the first epoch).
    pub best_error: Option<f64>,
    pub bad_epochs: usize,
    /// Epochs at which the plateau schedule lowered the rate.
    pub lowered_at: Vec<usize>,
}

impl Schedule {
    pub fn new(kind: ScheduleKind, base_lr: f32, epochs: usize) -> Self {
        Schedule { kind, base_lr, epochs, plateau_lr: base_lr, best_error: None, bad_epochs: 0, lowered_at: Vec::new() }
    }

    /// Rate at `epoch` (0-based) plus `frac` ∈ [0, 1) of the way through it.
    pub fn lr(&self, epoch: usize, frac: f64) -> f32 {
        let t = (epoch as f64 + frac) / self.epochs.max(1) as f64;
        let base = self.base_lr as f64;
        let cos =
            |t: f64, hi: f64, lo: f64| lo + (hi - lo) * 0.5 * (1.0 + (std::f64::consts::PI * t.clamp(0.0, 1.0)).cos());
        let lr = match &self.kind {
            ScheduleKind::Constant => base,
            ScheduleKind::Step { every, gamma } => base * (*gamma as f64).powi((epoch / every) as i32),
            ScheduleKind::Cosine => cos(t, base, 0.0),
            ScheduleKind::OneCycle => {
                let warm = 0.3;
                if t < warm {
                    base / 25.0 + (base - base / 25.0) * t / warm
                } else {
                    cos((t - warm) / (1.0 - warm), base, base / 1e4)
                }
            }
            ScheduleKind::Plateau { .. } => self.plateau_lr as f64,
        };
        lr as f32
    }

    /// Feeds the epoch's train error (1 − accuracy) to the plateau schedule; returns true if
    /// the rate was lowered.
    pub fn end_epoch(&mut self, epoch: usize, train_error: f64) -> bool {
        let ScheduleKind::Plateau { patience, factor, min_lr } = self.kind else { return false };
        // An improvement must be at least 1% relative, so noise does not count as progress.
        if self.best_error.is_none_or(|best| train_error < best * 0.99) {
            self.best_error = Some(train_error);
            self.bad_epochs = 0;
            return false;
        }
        self.bad_epochs += 1;
        if self.bad_epochs >= patience && self.plateau_lr > min_lr {
            self.plateau_lr = (self.plateau_lr * factor).max(min_lr);
            self.bad_epochs = 0;
            self.lowered_at.push(epoch);
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_of_the_schedules() {
        let s = Schedule::new(ScheduleKind::Step { every: 2, gamma: 0.1 }, 1.0, 6);
        assert_eq!((s.lr(1, 0.9), s.lr(2, 0.0)), (1.0, 0.1));
        let c = Schedule::new(ScheduleKind::Cosine, 1.0, 10);
        assert!((c.lr(5, 0.0) - 0.5).abs() < 1e-6 && c.lr(0, 0.0) == 1.0);
        let o = Schedule::new(ScheduleKind::OneCycle, 1.0, 10);
        assert!((o.lr(0, 0.0) - 0.04).abs() < 1e-6);
        assert!((o.lr(3, 0.0) - 1.0).abs() < 1e-6);
        assert!(o.lr(9, 0.99) < 0.01);
    }

    #[test]
    fn plateau_lowers_when_train_error_stalls() {
        let mut s = Schedule::new(ScheduleKind::Plateau { patience: 2, factor: 0.5, min_lr: 0.0 }, 0.1, 20);
        assert!(!s.end_epoch(0, 0.30));
        assert!(!s.end_epoch(1, 0.20));
        assert!(!s.end_epoch(2, 0.20)); // one stalled epoch
        assert!(s.end_epoch(3, 0.199)); // second: lowered
        assert!((s.lr(4, 0.0) - 0.05).abs() < 1e-7);
        assert_eq!(s.lowered_at, vec![3]);
        assert!(!s.end_epoch(4, 0.10));
    }

    #[test]
    fn bad_schedule_flags_are_errors() {
        assert!(ScheduleKind::parse("linear", 1, 0.1, 1, 0.1).unwrap_err().to_string().contains("--schedule"));
        assert!(ScheduleKind::parse("step", 0, 0.1, 1, 0.1).unwrap_err().to_string().contains("--step-every"));
        assert!(ScheduleKind::parse("plateau", 1, 0.1, 1, 1.5).unwrap_err().to_string().contains("--plateau-factor"));
    }
}
