//! Fully connected layer (an mmOp with CRS = d_in, PQ = 1 per image).

use super::ternary::TernaryWeight;
use crate::layer::{Ctx, Layer, Param, SummaryRow};
use tern_core::{Backend, ConvGeometry, Rng, Tensor};

pub struct Linear {
    name: String,
    pub d_in: usize,
    pub d_out: usize,
    /// [d_out, d_in]
    pub weight: Param,
    /// [d_out]
    pub bias: Option<Param>,
    /// Ternary weights (Eq. 1) when enabled; full precision otherwise.
    pub ternary: TernaryWeight,
    cache_x: Option<Tensor>,
}

impl Linear {
    /// PyTorch's default initialisation: U(±1/√d_in) for weight and bias.
    pub fn new(name: &str, d_in: usize, d_out: usize, bias: bool, rng: &mut Rng) -> Self {
        let b = 1.0 / (d_in as f32).sqrt();
        let weight = Param::new(format!("{name}.weight"), Tensor::uniform(&[d_out, d_in], -b, b, rng), true);
        let bias = bias.then(|| Param::new(format!("{name}.bias"), Tensor::uniform(&[d_out], -b, b, rng), false));
        Linear { name: name.to_string(), d_in, d_out, weight, bias, ternary: TernaryWeight::default(), cache_x: None }
    }

    /// The layer as a 1x1 convolution of a 1x1 image (for operand counting).
    pub fn geometry(&self, n: usize) -> ConvGeometry {
        ConvGeometry::new(n, self.d_in, 1, 1, self.d_out, 1, 1, 0).expect("1x1 geometry is valid")
    }

    fn check(&self, input: &[usize]) -> usize {
        assert!(input.len() == 2 && input[1] == self.d_in, "{}: expected [n, {}], got {input:?}", self.name, self.d_in);
        input[0]
    }
}

impl Layer for Linear {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "linear"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![self.check(input), self.d_out]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let n = self.check(x.shape());
        let mut y = ctx.backend.alloc(&[n, self.d_out]);
        let bias = self.bias.as_ref().map(|b| &b.value);
        let g = self.geometry(n);
        let w = self.ternary.forward_weight(ctx.backend, &self.weight.value, self.d_out);
        let ((), ms) = ctx.timed(|| ctx.backend.linear_forward(x, w, bias, &mut y));
        if let Some(p) = ctx.profiler {
            p.borrow_mut().record_forward(ctx.backend, &self.name, "linear", &g, x, w, ms);
        }
        self.cache_x = ctx.train.then(|| x.clone());
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let n = dy.dim(0);
        let mut dx = ctx.backend.alloc(&[n, self.d_in]);
        let w = self.ternary.used_weight(&self.weight.value);
        let ((), ms) = ctx.timed(|| ctx.backend.linear_backward_input(dy, w, &mut dx));
        if let Some(p) = ctx.profiler {
            let g = self.geometry(n);
            p.borrow_mut().record_input_grad(ctx.backend, &self.name, "linear", &g, w, dy, ms);
        }
        dx
    }
    fn backward_weight(&mut self, ctx: &Ctx, dy: &Tensor) {
        let x = self.cache_x.as_ref().expect("backward without a train-mode forward");
        let db = self.bias.as_mut().map(|b| &mut b.grad);
        let (n, dw) = (dy.dim(0), &mut self.weight.grad);
        let ((), ms) = ctx.timed(|| ctx.backend.linear_backward_weight(x, dy, dw, db));
        if let Some(p) = ctx.profiler {
            let g = self.geometry(n);
            p.borrow_mut().record_weight_grad(ctx.backend, &self.name, "linear", &g, x, dy, ms);
        }
        self.ternary.to_shadow_grad(ctx.backend, &self.weight.value, &mut self.weight.grad);
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        f(&mut self.weight);
        if let Some(b) = &mut self.bias {
            f(b);
        }
    }
    fn summarize(&self, _input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        let params = self.weight.value.len() + self.bias.as_ref().map_or(0, |b| b.value.len());
        let macs = (self.d_in * self.d_out) as u64;
        rows.push(SummaryRow {
            name: self.name.clone(),
            kind: "linear",
            out_shape: vec![self.d_out],
            params,
            macs,
            ternary: self.ternary.config.is_some(),
            weight_zero_fraction: Some(self.ternary.weight_zero_fraction(&self.weight.value, self.d_out)),
        });
        vec![self.d_out]
    }
    fn clear_cache(&mut self) {
        self.cache_x = None;
    }
    fn to_backend(&mut self, backend: &dyn Backend) {
        self.ternary.clear();
        self.cache_x = None;
        self.visit_params(&mut |p| p.to_backend(backend));
    }
}
