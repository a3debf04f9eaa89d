//! Thresholded ReLU: y = x if x > t else 0 (t = 0 is the usual ReLU; the paper's ReluT raises
//! it), with an optional L1 penalty λ·Σ|y|/n on its outputs (the paper's Reg).

use crate::layer::{Ctx, Layer};
use tern_core::Tensor;

pub struct Relu {
    name: String,
    /// Must be ≥ 0 (validated where the flag is parsed).
    pub threshold: f32,
    /// λ of the L1 activation penalty (0: off).
    pub l1: f32,
    cache_x: Option<Tensor>,
}

impl Relu {
    pub fn new(name: &str) -> Self {
        Relu { name: name.to_string(), threshold: 0.0, l1: 0.0, cache_x: None }
    }
}

impl Relu {
    /// relu(a + b) in one pass (a residual block's add and ReLU). It keeps its output for the
    /// backward: with a threshold ≥ 0 the output passes the threshold exactly where its input
    /// did, so the mask is the same.
    pub fn forward_after_add(&mut self, ctx: &Ctx, a: &Tensor, b: &Tensor) -> Tensor {
        let mut y = ctx.backend.alloc_activation(a.shape());
        ctx.backend.add_relu(a, b, self.threshold, &mut y);
        self.cache_x = ctx.train.then(|| y.clone());
        y
    }
}

impl Layer for Relu {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "relu"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        input.to_vec()
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let mut y = ctx.backend.alloc_activation(x.shape());
        ctx.backend.relu_forward(x, self.threshold, &mut y);
        self.cache_x = ctx.train.then(|| x.clone());
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let mut dx = ctx.backend.alloc_activation(x.shape());
        // d(λ·Σ|y|/n)/dy = λ/n where y > 0, which is where the mask passes (threshold ≥ 0).
        let extra = self.l1 / x.dim(0) as f32;
        ctx.backend.relu_backward(x, dy, self.threshold, extra, &mut dx);
        dx
    }
    fn clear_cache(&mut self) {
        self.cache_x = None;
    }
}
