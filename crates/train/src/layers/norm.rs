//! Batch normalisation over channels (dimension 1) of `[n, c, ...]`, optionally with the
//! batch sums from the layer before and the ReLU after fused in (see `Sequential`).

use super::Relu;
use crate::layer::{Ctx, Layer, Param, SummaryRow};
use tern_core::kernels::norm::{eval_scale_shift, BnSaved, ChannelSums, ReluMask};
use tern_core::Tensor;

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
    fused_relu: Option<(f32, f32)>,
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
        let (n, hw) = self.dims(x.shape());
        let mut y = Tensor::for_overwrite(x.shape());
        let (g, b) = (self.gamma.value.data(), self.beta.value.data());
        let threshold = relu.map(|r| r.threshold);
        self.fused_relu = relu.map(|r| (r.threshold, r.l1 / n as f32));
        if ctx.train && !self.frozen_stats {
            let sums = sums.unwrap_or_else(|| ctx.backend.channel_sums(x.data(), n, self.c, hw));
            let (rm, rv) = (self.running_mean.data_mut(), self.running_var.data_mut());
            let saved = BnSaved::from_sums(&sums, n * hw, self.eps, self.momentum, rm, rv);
            let (scale, shift) = saved.scale_shift(g, b);
            ctx.backend.batch_norm_apply(x.data(), &scale, &shift, hw, threshold, y.data_mut());
            self.saved = Some(saved);
            self.cache_x = Some(x.clone());
        } else {
            assert!(threshold.is_none() || !ctx.train, "{}: no fused ReLU with frozen statistics", self.name);
            let (rm, rv) = (self.running_mean.data(), self.running_var.data());
            let (scale, shift) = eval_scale_shift(g, b, rm, rv, self.eps);
            ctx.backend.batch_norm_apply(x.data(), &scale, &shift, hw, threshold, y.data_mut());
            if ctx.train {
                let inv_std = rv.iter().map(|v| 1.0 / (v + self.eps).sqrt()).collect();
                self.saved = Some(BnSaved { mean: rm.to_vec(), inv_std });
                self.cache_x = Some(x.clone());
            } else {
                self.saved = None;
                self.cache_x = None;
            }
        }
        y
    }

    /// The mask of the ReLU fused into the last forward, if any.
    fn relu_mask(&self) -> Option<ReluMask> {
        let (threshold, extra) = self.fused_relu?;
        let saved = self.saved.as_ref().expect("train-mode statistics");
        let (scale, shift) = saved.scale_shift(self.gamma.value.data(), self.beta.value.data());
        Some(ReluMask { scale, shift, threshold, extra })
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
        let (n, hw) = self.dims(x.shape());
        let saved = self.saved.as_ref().expect("train-mode statistics");
        let mask = self.relu_mask();
        let (dg, db) = (self.gamma.grad.data_mut(), self.beta.grad.data_mut());
        ctx.backend.batch_norm_backward_sums(x.data(), dy.data(), saved, mask.as_ref(), n, self.c, hw, dg, db);
    }
    /// Uses dγ and dβ from `backward_weight` (the per-channel sums it needs); `backward` calls
    /// the two in that order.
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let (n, hw) = self.dims(x.shape());
        let mut dx = Tensor::for_overwrite(x.shape());
        if self.frozen_stats {
            // Constant statistics: dx = dy·γ/σ, which is the eval-mode forward applied to dy
            // with zero mean and zero shift.
            let zeros = vec![0.0; self.c];
            let (g, rv) = (self.gamma.value.data(), self.running_var.data());
            let (scale, shift) = eval_scale_shift(g, &zeros, &zeros, rv, self.eps);
            ctx.backend.batch_norm_apply(dy.data(), &scale, &shift, hw, None, dx.data_mut());
            return dx;
        }
        let saved = self.saved.as_ref().expect("train-mode statistics");
        let mask = self.relu_mask();
        ctx.backend.batch_norm_backward_input(
            x.data(),
            dy.data(),
            self.gamma.value.data(),
            saved,
            mask.as_ref(),
            self.gamma.grad.data(),
            self.beta.grad.data(),
            n,
            hw,
            dx.data_mut(),
        );
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
