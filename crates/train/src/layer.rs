//! The `Layer` trait: forward, and a backward split into the input gradient
//! (`backward_input`) and the weight gradient (`backward_weight`, the paper's "GradUpdate").

use crate::profile::Profiler;
use std::cell::RefCell;
use tern_core::{Backend, Tensor};

/// What every call into a layer gets: the kernel backend, the mode, and a finite-check probe.
pub struct Ctx<'a> {
    pub backend: &'a dyn Backend,
    /// Train mode: batch statistics in BN, inputs cached for backward.
    pub train: bool,
    /// When set, containers record the first layer whose output is not finite.
    pub check_finite: bool,
    pub first_non_finite: RefCell<Option<String>>,
    /// When set, mmOp layers count their operands' non-zeros and time their passes.
    pub profiler: Option<&'a RefCell<Profiler>>,
    /// Lets containers run conv → BN → ReLU as fused kernels (see `Sequential`); off, every
    /// layer runs on its own (the tests compare the two).
    pub fuse: bool,
}

impl<'a> Ctx<'a> {
    pub fn new(backend: &'a dyn Backend, train: bool) -> Self {
        Ctx { backend, train, check_finite: false, first_non_finite: RefCell::new(None), profiler: None, fuse: true }
    }

    /// Whether to fuse now: not while the profiler times and counts layer by layer, nor
    /// while the finite-value probe looks for the first bad layer (a fused ReLU would hide a
    /// NaN of the BN before it).
    pub fn fusing(&self) -> bool {
        self.fuse && self.profiler.is_none() && !self.check_finite
    }

    /// Runs `f`, returning its result and its wall time in milliseconds if profiling.
    pub fn timed<T>(&self, f: impl FnOnce() -> T) -> (T, f64) {
        if self.profiler.is_none() {
            return (f(), 0.0);
        }
        let t = std::time::Instant::now();
        let r = f();
        (r, t.elapsed().as_secs_f64() * 1e3)
    }

    /// Records `name` as the first non-finite layer if checking and `y` has NaN/Inf.
    pub fn probe(&self, name: &str, y: &Tensor) {
        if self.check_finite && self.first_non_finite.borrow().is_none() && !y.is_finite() {
            *self.first_non_finite.borrow_mut() = Some(name.to_string());
        }
    }
}

/// A trainable tensor with its gradient. `decay`: whether weight decay applies
/// (not to biases and BN parameters).
#[derive(Clone, Debug)]
pub struct Param {
    pub name: String,
    pub value: Tensor,
    pub grad: Tensor,
    pub decay: bool,
}

impl Param {
    pub fn new(name: impl Into<String>, value: Tensor, decay: bool) -> Self {
        let grad = Tensor::zeros(value.shape());
        Param { name: name.into(), value, grad, decay }
    }

    /// Moves value and gradient to `backend`'s device.
    pub fn to_backend(&mut self, backend: &dyn Backend) {
        self.value = backend.upload(&self.value);
        self.grad = backend.upload(&self.grad);
    }
}

/// One row of a model summary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SummaryRow {
    pub name: String,
    pub kind: &'static str,
    /// Output shape for one image: [c, h, w] or [features].
    pub out_shape: Vec<usize>,
    pub params: usize,
    /// Forward multiply-adds for one image.
    pub macs: u64,
    /// Whether the layer's weights are ternary (its multiply-adds need no multiplier).
    pub ternary: bool,
    /// Zero fraction of the weights as the forward uses them (mmOp layers only).
    pub weight_zero_fraction: Option<f64>,
}

impl SummaryRow {
    /// A row for a layer without weights.
    pub fn plain(name: &str, kind: &'static str, out_shape: Vec<usize>) -> Self {
        SummaryRow {
            name: name.to_string(),
            kind,
            out_shape,
            params: 0,
            macs: 0,
            ternary: false,
            weight_zero_fraction: None,
        }
    }
}

pub trait Layer: Send {
    fn name(&self) -> &str;
    fn kind(&self) -> &'static str;

    /// Output shape for a batch input shape `[n, ...]`.
    fn out_shape(&self, input: &[usize]) -> Vec<usize>;

    /// x: the input batch. In train mode the layer keeps what its backward needs.
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor;

    /// dL/dx from dL/dy, using what the last forward kept.
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor;

    /// Writes dL/dθ into every parameter's `grad` (no-op for parameter-free layers).
    fn backward_weight(&mut self, _ctx: &Ctx, _dy: &Tensor) {}

    /// Both halves: the weight gradient, then the input gradient when `need_input`
    /// (the first layer of a network skips it). Containers override this to recurse.
    fn backward(&mut self, ctx: &Ctx, dy: &Tensor, need_input: bool) -> Option<Tensor> {
        self.backward_weight(ctx, dy);
        need_input.then(|| self.backward_input(ctx, dy))
    }

    fn visit_params(&mut self, _f: &mut dyn FnMut(&mut Param)) {}

    /// Non-trainable state that a checkpoint keeps (BN running statistics).
    fn visit_buffers(&mut self, _f: &mut dyn FnMut(&str, &mut Tensor)) {}

    /// Appends summary rows for per-image input shape `input`; returns the output shape.
    fn summarize(&self, input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        let mut batch = vec![1];
        batch.extend_from_slice(input);
        let out = self.out_shape(&batch)[1..].to_vec();
        rows.push(SummaryRow::plain(self.name(), self.kind(), out.clone()));
        out
    }

    /// Calls `f` on every leaf layer (containers recurse), e.g. to configure convolutions.
    fn visit_leaves(&mut self, f: &mut dyn FnMut(&mut dyn Layer)) {
        f(self.as_dyn_mut())
    }

    /// Self as a trait object (for `visit_leaves`); see [`layer_accessors`].
    fn as_dyn_mut(&mut self) -> &mut dyn Layer;

    /// Downcasting hook for leaf layers that others configure (conv, linear, ReLU).
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any;

    /// Drops cached activations (frees memory between training and evaluation).
    fn clear_cache(&mut self) {}

    /// Moves a leaf layer's parameters and buffers to `backend`'s device and drops what it
    /// cached on the old one (`Model::to_backend` calls it on every leaf).
    fn to_backend(&mut self, backend: &dyn Backend) {
        self.clear_cache();
        self.visit_params(&mut |p| p.to_backend(backend));
        self.visit_buffers(&mut |_, t| *t = backend.upload(t));
    }
}

/// The two trait-object accessors every layer implements the same way.
#[macro_export]
macro_rules! layer_accessors {
    () => {
        fn as_dyn_mut(&mut self) -> &mut dyn $crate::layer::Layer {
            self
        }
        fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
            self
        }
    };
}
