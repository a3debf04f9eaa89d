//! The paper's recipe for ternary training (§2.3, §4.1–4.2), each technique a switch:
//! ternary weights, full-precision first/last layer (SkipLayer), full-precision warm-up then
//! switch (PI), L1 on activations (Reg), a raised ReLU threshold late in training (ReluT),
//! and zero error for correctly classified samples (GradUpdate). LR lowering on plateau is a
//! schedule (`ScheduleKind::Plateau`).

use crate::model::Model;
use tern_core::quant::TernaryConfig;
use tern_core::{Error, Result};

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recipe {
    /// Ternary weights in the mmOp layers (None: full precision).
    pub ternary: Option<TernaryConfig>,
    /// Keep the first mmOp layer in full precision (SkipLayer).
    pub fp_first_layer: bool,
    /// Keep the last mmOp layer (the classifier) in full precision.
    pub fp_last_layer: bool,
    /// Train this many epochs in full precision before switching to ternary (PI).
    pub fp_warmup_epochs: usize,
    /// λ of the L1 penalty on every ReLU output (Reg; 0: off).
    pub act_l1: f32,
    /// ReLU threshold (ReluT; the paper uses 0.01) ...
    pub relu_threshold: f32,
    /// ... from this epoch on (0-based; before it the threshold is 0).
    pub relu_threshold_from_epoch: usize,
    /// Zero error for correctly classified samples; no backward pass for an all-correct batch
    /// (GradUpdate).
    pub skip_correct: bool,
    /// Block sparsity (beyond the paper, for tern-infer's skipping kernel): the fraction of
    /// 16×4 weight units (16 output × 4 input channels at one tap) of every ternary
    /// convolution held at zero, reached by a cubic ramp over the first half of the ternary
    /// epochs (0: off).
    #[serde(default)]
    pub block_sparsity: f64,
}

impl Recipe {
    pub fn validate(&self, epochs: usize) -> Result<()> {
        if !(self.act_l1 >= 0.0 && self.act_l1.is_finite()) {
            return Err(Error::invalid("--act-l1", format!("{}: expected a number >= 0", self.act_l1)));
        }
        if !(self.relu_threshold >= 0.0 && self.relu_threshold.is_finite()) {
            return Err(Error::invalid("--relu-threshold", format!("{}: expected a number >= 0", self.relu_threshold)));
        }
        if !(0.0..1.0).contains(&self.block_sparsity) {
            return Err(Error::invalid(
                "--block-sparsity",
                format!("{}: expected a fraction in [0, 1)", self.block_sparsity),
            ));
        }
        if self.ternary.is_none() && self.block_sparsity > 0.0 {
            return Err(Error::invalid("--block-sparsity", "only makes sense with --ternary"));
        }
        if self.ternary.is_none() && (self.fp_warmup_epochs > 0 || self.fp_first_layer || self.fp_last_layer) {
            return Err(Error::invalid(
                "--fp-warmup-epochs/--fp-first-layer/--fp-last-layer",
                "only make sense with --ternary",
            ));
        }
        if self.fp_warmup_epochs >= epochs && self.ternary.is_some() {
            return Err(Error::invalid(
                "--fp-warmup-epochs",
                format!("{} leaves no ternary epoch out of --epochs {epochs}", self.fp_warmup_epochs),
            ));
        }
        Ok(())
    }

    /// Whether epoch `epoch` (0-based) trains ternary weights.
    pub fn ternary_at(&self, epoch: usize) -> bool {
        self.ternary.is_some() && epoch >= self.fp_warmup_epochs
    }

    /// Configures the model for epoch `epoch`: which layers are ternary, ReLU thresholds, L1.
    pub fn apply(&self, model: &mut Model, epoch: usize) {
        let ternary = if self.ternary_at(epoch) { self.ternary } else { None };
        model.set_ternary(ternary, self.fp_first_layer, self.fp_last_layer);
        let t = if epoch >= self.relu_threshold_from_epoch { self.relu_threshold } else { 0.0 };
        model.set_relu(t, self.act_l1);
    }

    /// The block-sparsity fraction to set at the start of epoch `epoch` of `epochs`, while
    /// it ramps (None: off, not a ternary epoch, or the masks are frozen after the ramp):
    /// f·(1 − (1 − k/R)³) at the k-th ternary epoch (1-based), R = half the ternary epochs.
    pub fn block_sparsity_at(&self, epoch: usize, epochs: usize) -> Option<f64> {
        if self.block_sparsity <= 0.0 || !self.ternary_at(epoch) {
            return None;
        }
        let ramp = (epochs.saturating_sub(self.fp_warmup_epochs) / 2).max(1);
        let k = epoch - self.fp_warmup_epochs + 1;
        (k <= ramp).then(|| self.block_sparsity * (1.0 - (1.0 - k as f64 / ramp as f64).powi(3)))
    }

    /// The state for evaluating a finished run: as after the last epoch.
    pub fn apply_final(&self, model: &mut Model, epochs: usize) {
        self.apply(model, epochs.saturating_sub(1));
    }
}
