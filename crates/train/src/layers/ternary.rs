//! The ternary side of an mmOp layer's weights: the ternarised copy the forward and
//! input-gradient passes use, and the straight-through gradient onto the shadow weights.

use tern_core::quant::{straight_through, ternarize, TernaryConfig};
use tern_core::Tensor;

#[derive(Default)]
pub struct TernaryWeight {
    /// None: the layer runs in full precision.
    pub config: Option<TernaryConfig>,
    /// Ternary weights of the last forward (same shape as the shadow weights).
    q: Option<Tensor>,
    /// Zero fraction of the last ternarisation.
    pub zero_fraction: f64,
}

impl TernaryWeight {
    /// The weights the forward uses: re-ternarised from the shadow weights `w: [rows, ...]`,
    /// or `w` itself in full precision.
    pub fn forward_weight<'a>(&'a mut self, w: &'a Tensor, rows: usize) -> &'a Tensor {
        match &self.config {
            None => {
                self.q = None;
                w
            }
            Some(cfg) => {
                let mut q =
                    self.q.take().filter(|q| q.shape() == w.shape()).unwrap_or_else(|| Tensor::zeros(w.shape()));
                self.zero_fraction = ternarize(w.data(), rows, cfg, q.data_mut());
                self.q.insert(q)
            }
        }
    }

    /// The weights of the last forward, for the input gradient.
    pub fn used_weight<'a>(&'a self, w: &'a Tensor) -> &'a Tensor {
        self.q.as_ref().unwrap_or(w)
    }

    /// Turns the gradient with respect to the used weights into the shadow weights' gradient.
    pub fn to_shadow_grad(&self, w: &Tensor, grad: &mut Tensor) {
        if let Some(cfg) = &self.config {
            straight_through(w.data(), grad.data_mut(), cfg.clip);
        }
    }

    /// Zero fraction of the weights as the forward would see them now.
    pub fn weight_zero_fraction(&self, w: &Tensor, rows: usize) -> f64 {
        match &self.config {
            None => w.zero_fraction(),
            Some(cfg) => ternarize(w.data(), rows, cfg, &mut vec![0.0; w.len()]),
        }
    }
}
