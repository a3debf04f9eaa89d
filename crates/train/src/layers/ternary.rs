//! The ternary side of an mmOp layer's weights: the ternarised copy the forward and
//! input-gradient passes use, the straight-through gradient onto the shadow weights, and
//! the optional block-sparsity mask (whole 16×4 weight units held at zero).

use tern_core::quant::TernaryConfig;
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
    /// Block sparsity: 1 where a weight may be non-zero, 0 in a unit held at zero (same
    /// shape and device as the shadow weights); applied to the ternary weights and to the
    /// shadow weights' gradient. Part of the model's state (a checkpoint buffer).
    pub mask: Option<Tensor>,
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
                if let Some(m) = &self.mask {
                    backend.mask(&mut q, m);
                }
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
                if let Some(m) = &self.mask {
                    q.iter_mut().zip(m.host_values().iter()).for_each(|(q, m)| *q *= m);
                }
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
        if let (Some(_), Some(m)) = (&self.config, &self.mask) {
            // a unit held at zero does not learn (weight decay still shrinks its shadow)
            backend.mask(grad, m);
        }
    }

    /// Sets the block-sparsity mask of weights `w: [c_out, c_in, taps]` so that the
    /// `fraction` of weakest units is held at zero ([`tern_core::quant::unit_mask`]); written
    /// in place where a mask exists (a recorded device step keeps its pointers).
    pub fn set_unit_mask(&mut self, backend: &dyn Backend, w: &Tensor, c_in: usize, fraction: f64) {
        let (c_out, taps) = (w.dim(0), w.len() / w.dim(0) / c_in);
        let host =
            Tensor::from_vec(w.shape(), tern_core::quant::unit_mask(&w.host_values(), c_out, c_in, taps, fraction));
        match &mut self.mask {
            Some(m) if m.shape() == w.shape() && m.device() == w.device() => backend.write(m, &host),
            m => *m = Some(backend.upload(&host)),
        }
    }

    /// Zero fraction of the last ternarisation (None before the first, or in full precision);
    /// waits for the device.
    pub fn zero_fraction(&self) -> Option<f64> {
        self.config?;
        if self.mask.is_some() {
            // the ternarisation counted its zeros before the mask
            let q = self.q.as_ref()?.host_values();
            return Some(q.iter().filter(|&&v| v == 0.0).count() as f64 / q.len().max(1) as f64);
        }
        self.zeros.as_ref().map(|z| z.host_values()[0] as f64)
    }

    /// Zero fraction of the weights as the forward would see them now (on the host).
    pub fn weight_zero_fraction(&self, w: &Tensor, rows: usize) -> f64 {
        match &self.config {
            None => w.zero_fraction(),
            Some(_) => {
                let q = self.host_weight(w, rows);
                q.iter().filter(|&&v| v == 0.0).count() as f64 / q.len().max(1) as f64
            }
        }
    }

    /// Drops the ternary copy (it is rebuilt on the next forward, on the weights' device).
    pub fn clear(&mut self) {
        self.q = None;
        self.zeros = None;
    }

    /// Moves the mask (the layer's state) to `backend`'s device.
    pub fn to_backend(&mut self, backend: &dyn Backend) {
        self.clear();
        if let Some(m) = &mut self.mask {
            *m = backend.upload(m);
        }
    }
}
