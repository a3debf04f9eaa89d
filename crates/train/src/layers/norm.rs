//! Batch normalisation over channels (dimension 1) of `[n, c, ...]`, optionally with the
//! batch sums from the layer before and the ReLU after fused in (see `Sequential`).

use super::Relu;
use crate::layer::{Ctx, Layer, Param, SummaryRow};
use tern_core::kernels::norm::ChannelSums;
use tern_core::{BnSaved, FusedRelu, Tensor};

pub struct BatchNorm {
    name: String,
    pub c: usize,
    pub eps: f32,
    pub momentum: f32,
    pub gamma: Param,
    pub beta: Param,
    pub running_mean: Tensor,
    pub running_var: Tensor,
    /// Normalise with the running statistics even in train mode (fine-tuning with frozen
    /// statistics); the backward then treats the statistics as constants.
    pub frozen_stats: bool,
    cache_x: Option<Tensor>,
    /// Train-mode batch statistics of the last forward (None: it ran in eval mode).
    saved: Option<BnSaved>,
    /// The ReLU fused into the last forward: its threshold and gradient term λ/n.
    fused_relu: Option<FusedRelu>,
}

impl BatchNorm {
    pub fn new(name: &str, c: usize) -> Self {
        BatchNorm {
            name: name.to_string(),
            c,
            eps: 1e-5,
            momentum: 0.1,
            gamma: Param::new(format!("{name}.weight"), Tensor::full(&[c], 1.0), false),
            beta: Param::new(format!("{name}.bias"), Tensor::zeros(&[c]), false),
            running_mean: Tensor::zeros(&[c]),
            running_var: Tensor::full(&[c], 1.0),
            frozen_stats: false,
            cache_x: None,
            saved: None,
            fused_relu: None,
        }
    }

    /// Whether a following ReLU can be fused in this mode: not when fine-tuning with frozen
    /// statistics (that backward is a plain scaling, kept unfused).
    pub fn fuses_relu(&self, ctx: &Ctx) -> bool {
        !(ctx.train && self.frozen_stats)
    }

    /// The forward; `sums`: x's channel sums when its producer took them (train mode),
    /// `relu`: the ReLU that follows, applied here (its own forward and backward are skipped;
    /// this layer's backward applies its mask).
    pub fn forward_fused(&mut self, ctx: &Ctx, x: &Tensor, sums: Option<ChannelSums>, relu: Option<&Relu>) -> Tensor {
        let (n, _) = self.dims(x.shape());
        let mut y = ctx.backend.alloc_activation(x.shape());
        let threshold = relu.map(|r| r.threshold);
        self.fused_relu = relu.map(|r| FusedRelu { threshold: r.threshold, extra: r.l1 / n as f32 });
        let (g, b) = (&self.gamma.value, &self.beta.value);
        if ctx.train && !self.frozen_stats {
            let (rm, rv) = (&mut self.running_mean, &mut self.running_var);
            let saved = ctx.backend.batch_norm_train(x, sums, g, b, rm, rv, self.eps, self.momentum, threshold, &mut y);
            self.saved = Some(saved);
            self.cache_x = Some(x.clone());
        } else {
            assert!(threshold.is_none() || !ctx.train, "{}: no fused ReLU with frozen statistics", self.name);
            let (rm, rv) = (&self.running_mean, &self.running_var);
            let saved = ctx.backend.batch_norm_eval(x, g, b, rm, rv, self.eps, threshold, &mut y);
            self.saved = ctx.train.then_some(saved);
            self.cache_x = ctx.train.then(|| x.clone());
        }
        y
    }

    fn dims(&self, s: &[usize]) -> (usize, usize) {
        assert!(s.len() >= 2 && s[1] == self.c, "{}: expected [n, {}, ...], got {s:?}", self.name, self.c);
        (s[0], s[2..].iter().product())
    }
}

impl Layer for BatchNorm {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "bn"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        self.dims(input);
        input.to_vec()
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        self.forward_fused(ctx, x, None, None)
    }
    fn backward_weight(&mut self, ctx: &Ctx, dy: &Tensor) {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let saved = self.saved.as_ref().expect("train-mode statistics");
        let (g, b) = (&self.gamma.value, &self.beta.value);
        let (dg, db) = (&mut self.gamma.grad, &mut self.beta.grad);
        ctx.backend.batch_norm_backward_sums(x, dy, g, b, saved, self.fused_relu, dg, db);
    }
    /// Uses dγ and dβ from `backward_weight` (the per-channel sums it needs); `backward` calls
    /// the two in that order.
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let mut dx = ctx.backend.alloc_activation(x.shape());
        if self.frozen_stats {
            let (g, rv) = (&self.gamma.value, &self.running_var);
            ctx.backend.batch_norm_frozen_backward_input(dy, g, rv, self.eps, &mut dx);
            return dx;
        }
        let saved = self.saved.as_ref().expect("train-mode statistics");
        let (g, b, dg, db) = (&self.gamma.value, &self.beta.value, &self.gamma.grad, &self.beta.grad);
        ctx.backend.batch_norm_backward_input(x, dy, g, b, saved, self.fused_relu, dg, db, &mut dx);
        dx
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.gamma);
        f(&mut self.beta);
    }
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        f(&format!("{}.running_mean", self.name), &mut self.running_mean);
        f(&format!("{}.running_var", self.name), &mut self.running_var);
    }
    fn summarize(&self, input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        rows.push(SummaryRow { params: 2 * self.c, ..SummaryRow::plain(&self.name, "bn", input.to_vec()) });
        input.to_vec()
    }
    fn clear_cache(&mut self) {
        self.cache_x = None;
        self.saved = None;
        self.fused_relu = None;
    }
}
