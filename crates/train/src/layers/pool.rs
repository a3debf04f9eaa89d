//! Pooling layers (max, average, global average) and `Flatten`.

use crate::layer::{Ctx, Layer};
use tern_core::{PoolGeometry, Tensor};

fn pool_geometry(name: &str, s: &[usize], k: usize, stride: usize, pad: usize) -> PoolGeometry {
    assert_eq!(s.len(), 4, "{name}: expected [n, c, h, w], got {s:?}");
    PoolGeometry::new(s[0], s[1], s[2], s[3], k, stride, pad).unwrap_or_else(|e| panic!("{name}: {e}"))
}

pub struct MaxPool2d {
    name: String,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    /// The input shape and the argmax index tensor of the last train-mode forward.
    cache: Option<(Vec<usize>, Tensor)>,
}

impl MaxPool2d {
    pub fn new(name: &str, k: usize, stride: usize, pad: usize) -> Self {
        MaxPool2d { name: name.to_string(), k, stride, pad, cache: None }
    }
}

impl Layer for MaxPool2d {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "maxpool"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        let g = pool_geometry(&self.name, input, self.k, self.stride, self.pad);
        vec![g.n, g.c, g.h_out(), g.w_out()]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let g = pool_geometry(&self.name, x.shape(), self.k, self.stride, self.pad);
        let out = [g.n, g.c, g.h_out(), g.w_out()];
        let mut y = ctx.backend.alloc_activation(&out);
        // the last step's argmax buffer, reused: a fresh one page-faults megabytes per step
        let reuse = self.cache.take().map(|(_, a)| a).filter(|a| a.shape() == out && a.device() == x.device());
        let mut arg = reuse.unwrap_or_else(|| ctx.backend.alloc(&out));
        ctx.backend.max_pool_forward(x, &g, &mut y, &mut arg);
        self.cache = ctx.train.then(|| (x.shape().to_vec(), arg));
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let (shape, arg) = self.cache.as_ref().expect("backward without a train-mode forward");
        let g = pool_geometry(&self.name, shape, self.k, self.stride, self.pad);
        let mut dx = ctx.backend.alloc_activation(shape);
        ctx.backend.max_pool_backward(dy, arg, &g, &mut dx);
        dx
    }
    fn clear_cache(&mut self) {
        self.cache = None;
    }
}

pub struct AvgPool2d {
    name: String,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
    in_shape: Vec<usize>,
}

impl AvgPool2d {
    pub fn new(name: &str, k: usize, stride: usize, pad: usize) -> Self {
        AvgPool2d { name: name.to_string(), k, stride, pad, in_shape: Vec::new() }
    }
}

impl Layer for AvgPool2d {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "avgpool"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        let g = pool_geometry(&self.name, input, self.k, self.stride, self.pad);
        vec![g.n, g.c, g.h_out(), g.w_out()]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let g = pool_geometry(&self.name, x.shape(), self.k, self.stride, self.pad);
        let mut y = ctx.backend.alloc_activation(&[g.n, g.c, g.h_out(), g.w_out()]);
        ctx.backend.avg_pool_forward(x, &g, &mut y);
        self.in_shape = x.shape().to_vec();
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let g = pool_geometry(&self.name, &self.in_shape, self.k, self.stride, self.pad);
        let mut dx = ctx.backend.alloc_activation(&self.in_shape);
        ctx.backend.avg_pool_backward(dy, &g, &mut dx);
        dx
    }
}

/// [n, c, h, w] -> [n, c]: the mean of each plane.
pub struct GlobalAvgPool {
    name: String,
    in_shape: Vec<usize>,
}

impl GlobalAvgPool {
    pub fn new(name: &str) -> Self {
        GlobalAvgPool { name: name.to_string(), in_shape: Vec::new() }
    }
}

impl Layer for GlobalAvgPool {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "gap"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        assert_eq!(input.len(), 4, "{}: expected [n, c, h, w], got {input:?}", self.name);
        vec![input[0], input[1]]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let s = x.shape();
        let mut y = ctx.backend.alloc_activation(&self.out_shape(s));
        ctx.backend.global_avg_pool_forward(x, &mut y);
        self.in_shape = s.to_vec();
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        let mut dx = ctx.backend.alloc_activation(&self.in_shape);
        ctx.backend.global_avg_pool_backward(dy, &mut dx);
        dx
    }
}

/// [n, ...] -> [n, product of the rest].
pub struct Flatten {
    name: String,
    in_shape: Vec<usize>,
}

impl Flatten {
    pub fn new(name: &str) -> Self {
        Flatten { name: name.to_string(), in_shape: Vec::new() }
    }
}

impl Layer for Flatten {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "flatten"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        vec![input[0], input[1..].iter().product()]
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        self.in_shape = x.shape().to_vec();
        if x.shape().len() == 4 {
            ctx.backend.flatten(x)
        } else {
            x.clone().reshape(&self.out_shape(x.shape()))
        }
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        if self.in_shape.len() == 4 {
            ctx.backend.unflatten(dy, &self.in_shape)
        } else {
            dy.clone().reshape(&self.in_shape)
        }
    }
}
