//! 2-D convolution layer (an mmOp): K = c_out, CRS = c_in·k·k, PQ = h_out·w_out.

use super::ternary::TernaryWeight;
use crate::layer::{Ctx, Layer, Param, SummaryRow};
use tern_core::kernels::norm::ChannelSums;
use tern_core::{Backend, ConvGeometry, Rng, Tensor};

pub struct Conv2d {
    name: String,
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// [c_out, c_in, k, k]
    pub weight: Param,
    /// [c_out]
    pub bias: Option<Param>,
    /// Ternary weights (Eq. 1) when enabled; full precision otherwise.
    pub ternary: TernaryWeight,
    cache_x: Option<Tensor>,
}

impl Conv2d {
    /// Kaiming-normal weights (fan-in, ReLU gain), zero bias.
    pub fn new(
        name: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
        rng: &mut Rng,
    ) -> Self {
        let std = (2.0 / (c_in * k * k) as f32).sqrt();
        let weight = Param::new(format!("{name}.weight"), Tensor::randn(&[c_out, c_in, k, k], std, rng), true);
        let bias = bias.then(|| Param::new(format!("{name}.bias"), Tensor::zeros(&[c_out]), false));
        Conv2d {
            name: name.to_string(),
            c_in,
            c_out,
            k,
            stride,
            pad,
            weight,
            bias,
            ternary: TernaryWeight::default(),
            cache_x: None,
        }
    }

    /// Geometry for a batch input `[n, c_in, h, w]`; panics on a shape the model builder
    /// should have rejected.
    pub fn geometry(&self, input: &[usize]) -> ConvGeometry {
        assert_eq!(input.len(), 4, "{}: expected [n, c, h, w], got {input:?}", self.name);
        assert_eq!(input[1], self.c_in, "{}: expected {} input channels, got {input:?}", self.name, self.c_in);
        ConvGeometry::new(input[0], self.c_in, input[2], input[3], self.c_out, self.k, self.stride, self.pad)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
}

impl Conv2d {
    /// The forward, also returning the output's channel sums (for a train-mode BN after it).
    /// (None where the backend leaves the statistics to the BN).
    pub fn forward_with_sums(&mut self, ctx: &Ctx, x: &Tensor) -> (Tensor, Option<ChannelSums>) {
        self.run_forward(ctx, x, true)
    }

    fn run_forward(&mut self, ctx: &Ctx, x: &Tensor, sums: bool) -> (Tensor, Option<ChannelSums>) {
        let g = self.geometry(x.shape());
        let mut y = ctx.backend.alloc_activation(&[g.n, g.c_out, g.h_out(), g.w_out()]);
        let bias = self.bias.as_ref().map(|b| &b.value);
        let w = self.ternary.forward_weight(ctx.backend, &self.weight.value, self.c_out);
        let (s, ms) = ctx.timed(|| {
            if sums {
                ctx.backend.conv2d_forward_sums(x, w, bias, &g, &mut y)
            } else {
                ctx.backend.conv2d_forward(x, w, bias, &g, &mut y);
                None
            }
        });
        if let Some(p) = ctx.profiler {
            p.borrow_mut().record_forward(ctx.backend, &self.name, "conv", &g, x, w, ms);
        }
        self.cache_x = ctx.train.then(|| x.clone());
        (y, s)
    }
}

impl Layer for Conv2d {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "conv"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        let g = self.geometry(input);
        vec![g.n, g.c_out, g.h_out(), g.w_out()]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        self.run_forward(ctx, x, false).0
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let g = self.geometry(x.shape());
        let mut dx = ctx.backend.alloc_activation(x.shape());
        let w = self.ternary.used_weight(&self.weight.value);
        let ((), ms) = ctx.timed(|| ctx.backend.conv2d_backward_input(dy, w, &g, &mut dx));
        if let Some(p) = ctx.profiler {
            p.borrow_mut().record_input_grad(ctx.backend, &self.name, "conv", &g, w, dy, ms);
        }
        dx
    }
    fn backward_weight(&mut self, ctx: &Ctx, dy: &Tensor) {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let g = self.geometry(x.shape());
        let db = self.bias.as_mut().map(|b| &mut b.grad);
        let dw = &mut self.weight.grad;
        let ((), ms) = ctx.timed(|| ctx.backend.conv2d_backward_weight(x, dy, &g, dw, db));
        if let Some(p) = ctx.profiler {
            p.borrow_mut().record_weight_grad(ctx.backend, &self.name, "conv", &g, x, dy, ms);
        }
        self.ternary.to_shadow_grad(ctx.backend, &self.weight.value, &mut self.weight.grad);
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
    fn summarize(&self, input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        let mut b = vec![1];
        b.extend_from_slice(input);
        let g = self.geometry(&b);
        let params = self.weight.value.len() + self.bias.as_ref().map_or(0, |b| b.value.len());
        let out = vec![g.c_out, g.h_out(), g.w_out()];
        rows.push(SummaryRow {
            name: self.name.clone(),
            kind: "conv",
            out_shape: out.clone(),
            params,
            macs: g.macs(),
            ternary: self.ternary.config.is_some(),
            weight_zero_fraction: Some(self.ternary.weight_zero_fraction(&self.weight.value, self.c_out)),
        });
        out
    }
    fn clear_cache(&mut self) {
        self.cache_x = None;
    }
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        if let Some(m) = &mut self.ternary.mask {
            f(&format!("{}.unit_mask", self.name), m);
        }
    }
    fn to_backend(&mut self, backend: &dyn Backend) {
        self.ternary.to_backend(backend);
        self.cache_x = None;
        self.visit_params(&mut |p| p.to_backend(backend));
    }
}
