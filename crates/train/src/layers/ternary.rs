//! The ternary side of an mmOp layer's weights: the ternarised copy the forward and
//! input-gradient passes use, and the straight-through gradient onto the shadow weights.

use tern_core::quant::{ternarize, TernaryConfig};
use tern_core::{Backend, Tensor};

#[derive(Default)]
pub struct TernaryWeight {
    /// None: the layer runs in full precision.
    pub config: Option<TernaryConfig>,
    /// Ternary weights of the last forward (same shape and device as the shadow weights).
    q: Option<Tensor>,
    /// Zero fraction of the last ternarisation, `[1]` on the weights' device (read on demand,
    /// so that a device step never waits for it).
    zeros: Option<Tensor>,
}

impl TernaryWeight {
    /// The weights the forward uses: re-ternarised from the shadow weights `w: [rows, ...]`,
    /// or `w` itself in full precision.
    pub fn forward_weight<'a>(&'a mut self, backend: &dyn Backend, w: &'a Tensor, rows: usize) -> &'a Tensor {
        match &self.config {
            None => {
                self.q = None;
                w
            }
            Some(cfg) => {
                let fits = |t: &Tensor, shape: &[usize]| t.shape() == shape && t.device() == w.device();
                let mut q = self.q.take().filter(|q| fits(q, w.shape())).unwrap_or_else(|| backend.alloc(w.shape()));
                let mut z = self.zeros.take().filter(|z| fits(z, &[1])).unwrap_or_else(|| backend.zeros(&[1]));
                backend.ternarize(w, rows, cfg, &mut q, &mut z);
                self.zeros = Some(z);
                self.q.insert(q)
            }
        }
    }

    /// The weights the forward multiplies by, on the host (ternarised afresh from `w`, or
    /// `w` itself in full precision): what an exporter or inference planner reads.
    pub fn host_weight(&self, w: &Tensor, rows: usize) -> Vec<f32> {
        let v = w.host_values();
        match &self.config {
            None => v.into_owned(),
            Some(cfg) => {
                let mut q = vec![0.0; v.len()];
                tern_core::quant::ternarize(&v, rows, cfg, &mut q);
                q
            }
        }
    }

    /// The weights of the last forward, for the input gradient.
    pub fn used_weight<'a>(&'a self, w: &'a Tensor) -> &'a Tensor {
        self.q.as_ref().unwrap_or(w)
    }

    /// Turns the gradient with respect to the used weights into the shadow weights' gradient
    /// (the identity, or zeroed where |w| > clip).
    pub fn to_shadow_grad(&self, backend: &dyn Backend, w: &Tensor, grad: &mut Tensor) {
        if let Some(clip) = self.config.and_then(|c| c.clip) {
            backend.straight_through(w, grad, clip);
        }
    }

    /// Zero fraction of the last ternarisation (None before the first, or in full precision);
    /// waits for the device.
    pub fn zero_fraction(&self) -> Option<f64> {
        self.config?;
        self.zeros.as_ref().map(|z| z.host_values()[0] as f64)
    }

    /// Zero fraction of the weights as the forward would see them now (on the host).
    pub fn weight_zero_fraction(&self, w: &Tensor, rows: usize) -> f64 {
        match &self.config {
            None => w.zero_fraction(),
            Some(cfg) => ternarize(&w.host_values(), rows, cfg, &mut vec![0.0; w.len()]),
        }
    }

    /// Drops the ternary copy (it is rebuilt on the next forward, on the weights' device).
    pub fn clear(&mut self) {
        self.q = None;
        self.zeros = None;
    }
}
