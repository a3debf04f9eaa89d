//! `Model`: a named network (a `Sequential`) with the configuration that rebuilds it.

use crate::layer::{Ctx, Layer, Param, SummaryRow};
use crate::layers::{Conv2d, Linear, Relu, Sequential, TernaryWeight};
use tern_core::quant::TernaryConfig;
use tern_core::Tensor;

/// Everything needed to rebuild a model; stored in checkpoints.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ModelConfig {
    pub name: String,
    /// Per-image input `[c, h, w]`.
    pub in_shape: [usize; 3],
    pub classes: usize,
    /// Base channel width (0: the model's default).
    pub width: usize,
    /// ImageNet-style ResNets: a 3x3 stride-1 stem without max pooling, for small images.
    pub small_input: bool,
    /// The layers of a `graph` model (one imported from elsewhere that is none of the
    /// zoo's architectures); None for every named architecture.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<Vec<crate::models::LayerSpec>>,
}

pub struct Model {
    pub config: ModelConfig,
    pub net: Sequential,
}

impl Model {
    /// x: [n, c, h, w] -> logits [n, classes]
    pub fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        self.net.forward(ctx, x)
    }

    /// Backward from dL/dlogits; fills every parameter's gradient. The input gradient of the
    /// first layer is never computed.
    pub fn backward(&mut self, ctx: &Ctx, dlogits: &Tensor) {
        self.net.backward(ctx, dlogits, false);
    }

    pub fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.net.visit_params(f);
    }

    pub fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.net.visit_buffers(f);
    }

    pub fn clear_cache(&mut self) {
        self.net.clear_cache();
    }

    /// Moves every parameter and buffer to `backend`'s device.
    pub fn to_backend(&mut self, backend: &dyn tern_core::Backend) {
        self.net.visit_leaves(&mut |l| l.to_backend(backend));
    }

    /// Per-layer rows for one image.
    pub fn summary(&self) -> Vec<SummaryRow> {
        let mut rows = Vec::new();
        self.net.summarize(&self.config.in_shape, &mut rows);
        rows
    }

    pub fn num_params(&mut self) -> usize {
        let mut n = 0;
        self.visit_params(&mut |p| n += p.value.len());
        n
    }

    /// Calls `f` with the name and ternary state of every mmOp layer (conv, linear), in
    /// forward order.
    pub fn visit_mm_layers(&mut self, f: &mut dyn FnMut(&str, &mut TernaryWeight)) {
        self.net.visit_leaves(&mut |l| {
            let name = l.name().to_string();
            let any = l.as_any_mut();
            if let Some(c) = any.downcast_mut::<Conv2d>() {
                f(&name, &mut c.ternary);
            } else if let Some(c) = any.downcast_mut::<Linear>() {
                f(&name, &mut c.ternary);
            }
        });
    }

    /// Ternarises every mmOp layer with `cfg` (None: all full precision), except the first
    /// and/or last when they are kept in full precision (the paper's SkipLayer).
    pub fn set_ternary(&mut self, cfg: Option<TernaryConfig>, fp_first: bool, fp_last: bool) {
        let mut count = 0;
        self.visit_mm_layers(&mut |_, _| count += 1);
        let mut i = 0;
        self.visit_mm_layers(&mut |_, t| {
            let keep_fp = (fp_first && i == 0) || (fp_last && i + 1 == count);
            t.config = if keep_fp { None } else { cfg };
            i += 1;
        });
    }

    /// Block sparsity: in every ternary convolution, holds the `fraction` of its weakest
    /// 16×4 weight units at zero (masks recomputed from the shadow weights now).
    pub fn set_unit_masks(&mut self, backend: &dyn tern_core::Backend, fraction: f64) {
        self.net.visit_leaves(&mut |l| {
            if let Some(c) = l.as_any_mut().downcast_mut::<Conv2d>() {
                if c.ternary.config.is_some() {
                    c.ternary.set_unit_mask(backend, &c.weight.value, c.c_in, fraction);
                }
            }
        });
    }

    /// Sets every ReLU's threshold and L1 activation penalty.
    pub fn set_relu(&mut self, threshold: f32, l1: f32) {
        self.net.visit_leaves(&mut |l| {
            if let Some(r) = l.as_any_mut().downcast_mut::<Relu>() {
                r.threshold = threshold;
                r.l1 = l1;
            }
        });
    }

    /// Name of the first parameter holding a NaN or infinity.
    pub fn first_non_finite_param(&mut self) -> Option<String> {
        let mut bad = None;
        self.visit_params(&mut |p| {
            if bad.is_none() && !p.value.is_finite() {
                bad = Some(p.name.clone());
            }
        });
        bad
    }
}
