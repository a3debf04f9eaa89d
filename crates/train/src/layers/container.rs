//! Containers: `Sequential` runs layers in order and its backward walks them in reverse;
//! `Residual` computes relu(body(x) + shortcut(x)), the ResNet block.
//! For containers the whole work happens in `backward`; `backward_input` runs it in full.

use super::{BatchNorm, Conv2d, Relu};
use crate::layer::{Ctx, Layer, Param, SummaryRow};
use tern_core::Tensor;

pub struct Sequential {
    name: String,
    pub layers: Vec<Box<dyn Layer>>,
    /// Per layer: whether the last forward fused it into the layer before (a ReLU into its
    /// BN), whose backward then covers it.
    absorbed: Vec<bool>,
}

impl Sequential {
    pub fn new(name: &str, layers: Vec<Box<dyn Layer>>) -> Self {
        let absorbed = vec![false; layers.len()];
        Sequential { name: name.to_string(), layers, absorbed }
    }
}

/// The BN at the head of `layers` and the ReLU right after it, if any.
fn bn_and_relu(layers: &mut [Box<dyn Layer>]) -> Option<(&mut BatchNorm, Option<&mut Relu>)> {
    let (first, rest) = layers.split_first_mut()?;
    let bn = first.as_any_mut().downcast_mut::<BatchNorm>()?;
    let relu = rest.first_mut().and_then(|l| l.as_any_mut().downcast_mut::<Relu>());
    Some((bn, relu))
}

/// Runs a fusable group at the head of `layers`, if there is one: conv → BN (→ ReLU) in
/// train mode, where the conv takes the BN's batch sums while its output is in cache (one
/// pass over the activations less), and BN → ReLU in any mode, one kernel writing relu(bn(x))
/// (one pass and one saved tensor less). Returns the output, the layers consumed, and
/// whether the last of them was a ReLU taken into the BN.
fn forward_fused(layers: &mut [Box<dyn Layer>], ctx: &Ctx, x: &Tensor) -> Option<(Tensor, usize, bool)> {
    let (first, rest) = layers.split_first_mut()?;
    if let Some(conv) = first.as_any_mut().downcast_mut::<Conv2d>() {
        let (bn, relu) = bn_and_relu(rest)?;
        if !ctx.train || bn.frozen_stats {
            return None;
        }
        let (y, sums) = conv.forward_with_sums(ctx, x);
        let out = bn.forward_fused(ctx, &y, sums, relu.as_deref());
        let fused_relu = relu.map(|r| r.clear_cache()).is_some();
        return Some((out, 2 + fused_relu as usize, fused_relu));
    }
    let (bn, relu) = bn_and_relu(layers)?;
    let relu = relu.filter(|_| bn.fuses_relu(ctx))?;
    let out = bn.forward_fused(ctx, x, None, Some(relu));
    relu.clear_cache();
    Some((out, 2, true))
}

impl Layer for Sequential {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "sequential"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        self.layers.iter().fold(input.to_vec(), |s, l| l.out_shape(&s))
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        self.absorbed.clear();
        self.absorbed.resize(self.layers.len(), false);
        let mut h = x.clone();
        let mut i = 0;
        while i < self.layers.len() {
            if ctx.fusing() {
                if let Some((out, used, relu)) = forward_fused(&mut self.layers[i..], ctx, &h) {
                    self.absorbed[i + used - 1] = relu;
                    h = out;
                    i += used;
                    continue;
                }
            }
            let l = &mut self.layers[i];
            h = l.forward(ctx, &h);
            ctx.probe(l.name(), &h);
            i += 1;
        }
        h
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        self.backward(ctx, dy, true).expect("input gradient requested")
    }
    fn backward(&mut self, ctx: &Ctx, dy: &Tensor, need_input: bool) -> Option<Tensor> {
        let mut g = Some(dy.clone());
        for (i, l) in self.layers.iter_mut().enumerate().rev() {
            if self.absorbed[i] {
                continue; // the BN before it applies its mask
            }
            let need = need_input || i > 0;
            g = l.backward(ctx, g.as_ref().expect("gradient flows while layers remain"), need);
        }
        g
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.layers.iter_mut().for_each(|l| l.visit_params(f));
    }
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.layers.iter_mut().for_each(|l| l.visit_buffers(f));
    }
    fn summarize(&self, input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        self.layers.iter().fold(input.to_vec(), |s, l| l.summarize(&s, rows))
    }
    fn visit_leaves(&mut self, f: &mut dyn FnMut(&mut dyn Layer)) {
        self.layers.iter_mut().for_each(|l| l.visit_leaves(f));
    }
    fn clear_cache(&mut self) {
        self.layers.iter_mut().for_each(|l| l.clear_cache());
    }
}

pub struct Residual {
    name: String,
    pub body: Sequential,
    /// None: identity shortcut.
    pub shortcut: Option<Sequential>,
    pub relu: Relu,
}

impl Residual {
    pub fn new(name: &str, body: Sequential, shortcut: Option<Sequential>) -> Self {
        Residual { name: name.to_string(), body, shortcut, relu: Relu::new(&format!("{name}.relu")) }
    }
}

impl Layer for Residual {
    crate::layer_accessors!();
    fn name(&self) -> &str {
        &self.name
    }
    fn kind(&self) -> &'static str {
        "residual"
    }
    fn out_shape(&self, input: &[usize]) -> Vec<usize> {
        let a = self.body.out_shape(input);
        let s = self.shortcut.as_ref().map_or(input.to_vec(), |sc| sc.out_shape(input));
        assert_eq!(a, s, "{}: body gives {a:?} but shortcut gives {s:?}", self.name);
        a
    }
    fn forward(&mut self, ctx: &Ctx, x: &Tensor) -> Tensor {
        let a = self.body.forward(ctx, x);
        let s = match &mut self.shortcut {
            Some(sc) => sc.forward(ctx, x),
            None => x.clone(),
        };
        if ctx.fusing() {
            return self.relu.forward_after_add(ctx, &a, &s);
        }
        let mut z = ctx.backend.alloc_activation(a.shape());
        ctx.backend.add(&a, &s, &mut z);
        ctx.probe(&format!("{}.add", self.name), &z);
        let y = self.relu.forward(ctx, &z);
        ctx.probe(self.relu.name(), &y);
        y
    }
    fn backward_input(&mut self, ctx: &Ctx, dy: &Tensor) -> Tensor {
        self.backward(ctx, dy, true).expect("input gradient requested")
    }
    fn backward(&mut self, ctx: &Ctx, dy: &Tensor, need_input: bool) -> Option<Tensor> {
        let dz = self.relu.backward_input(ctx, dy);
        let da = self.body.backward(ctx, &dz, need_input);
        let ds = match &mut self.shortcut {
            Some(sc) => sc.backward(ctx, &dz, need_input),
            None => need_input.then(|| dz.clone()),
        };
        match (da, ds) {
            (Some(a), Some(s)) => {
                let mut dx = ctx.backend.alloc_activation(a.shape());
                ctx.backend.add(&a, &s, &mut dx);
                Some(dx)
            }
            _ => None,
        }
    }
    fn visit_params(&mut self, f: &mut dyn FnMut(&mut Param)) {
        self.body.visit_params(f);
        if let Some(sc) = &mut self.shortcut {
            sc.visit_params(f);
        }
    }
    fn visit_buffers(&mut self, f: &mut dyn FnMut(&str, &mut Tensor)) {
        self.body.visit_buffers(f);
        if let Some(sc) = &mut self.shortcut {
            sc.visit_buffers(f);
        }
    }
    fn summarize(&self, input: &[usize], rows: &mut Vec<SummaryRow>) -> Vec<usize> {
        let out = self.body.summarize(input, rows);
        if let Some(sc) = &self.shortcut {
            sc.summarize(input, rows);
        }
        rows.push(SummaryRow::plain(&format!("{}.add", self.name), "add", out.clone()));
        rows.push(SummaryRow::plain(self.relu.name(), "relu", out.clone()));
        out
    }
    fn visit_leaves(&mut self, f: &mut dyn FnMut(&mut dyn Layer)) {
        self.body.visit_leaves(f);
        if let Some(sc) = &mut self.shortcut {
            sc.visit_leaves(f);
        }
        f(&mut self.relu);
    }
    fn clear_cache(&mut self) {
        self.body.clear_cache();
        if let Some(sc) = &mut self.shortcut {
            sc.clear_cache();
        }
        self.relu.clear_cache();
    }
}
