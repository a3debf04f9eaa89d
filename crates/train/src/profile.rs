//! The sparsity probe: for every mmOp layer (conv, linear) and each of the three passes —
//! forward (weight × input), backward (weight × output gradient) and weight gradient
//! ("GradUpdate": input × output gradient) — the exact count of multiply-adds and of those
//! with two non-zero operands, the operands' zero fractions, and the wall time of the pass.

use serde::Serialize;
use tern_core::{Backend, ConvGeometry, Tensor};

pub const PASSES: [&str; 3] = ["forward", "backward", "weight_grad"];

/// One mmOp layer's accumulated counts. Shapes are the paper's: K output channels, CRS the
/// reduction, PQ output positions per image.
#[derive(Clone, Debug, Default, Serialize)]
pub struct LayerProfile {
    pub name: String,
    pub kind: String,
    pub k: usize,
    pub crs: usize,
    pub pq: usize,
    /// Dense multiply-adds and non-zero ones per pass (forward, backward, weight_grad).
    pub macs: [u64; 3],
    pub nonzero: [u64; 3],
    pub weight_zeros: u64,
    pub weight_values: u64,
    pub input_zeros: u64,
    pub input_values: u64,
    pub grad_zeros: u64,
    pub grad_values: u64,
    /// Wall time of each pass, milliseconds. A pass that did not run (the first layer's input
    /// gradient) has zero multiply-adds and zero time.
    pub ms: [f64; 3],
}

impl LayerProfile {
    pub fn nonzero_frac(&self, pass: usize) -> f64 {
        if self.macs[pass] == 0 {
            return f64::NAN;
        }
        self.nonzero[pass] as f64 / self.macs[pass] as f64
    }
    pub fn weight_zero_frac(&self) -> f64 {
        self.weight_zeros as f64 / self.weight_values.max(1) as f64
    }
    pub fn input_zero_frac(&self) -> f64 {
        self.input_zeros as f64 / self.input_values.max(1) as f64
    }
    pub fn grad_zero_frac(&self) -> f64 {
        self.grad_zeros as f64 / self.grad_values.max(1) as f64
    }
}

/// The operands of one mmOp layer in the last batch: x `[n, c, h, w]`, the weights used
/// `[k, crs]`, and dy `[n, k, pq]` once the backward ran.
#[derive(Clone, Debug)]
pub struct Operands {
    pub name: String,
    pub geometry: ConvGeometry,
    pub x: Vec<f32>,
    pub w: Vec<f32>,
    pub dy: Option<Vec<f32>>,
}

/// Collects `LayerProfile`s in forward order of first appearance.
#[derive(Debug, Default)]
pub struct Profiler {
    pub layers: Vec<LayerProfile>,
    /// Keep the last batch's operands (for zero masks and for checking the counts).
    pub capture: bool,
    pub operands: Vec<Operands>,
}

impl Profiler {
    fn entry(&mut self, name: &str, kind: &str, g: &ConvGeometry) -> &mut LayerProfile {
        if let Some(i) = self.layers.iter().position(|l| l.name == name) {
            return &mut self.layers[i];
        }
        self.layers.push(LayerProfile {
            name: name.into(),
            kind: kind.into(),
            k: g.c_out,
            crs: g.crs(),
            pq: g.pq(),
            ..Default::default()
        });
        self.layers.last_mut().unwrap()
    }

    /// The forward pass of a layer: x the input, w the weights it used. The counts run on
    /// `be` (on a GPU, only a few integers come back); operands are copied to the host only
    /// when `capture` asks for them.
    #[allow(clippy::too_many_arguments)]
    pub fn record_forward(
        &mut self,
        be: &dyn Backend,
        name: &str,
        kind: &str,
        g: &ConvGeometry,
        x: &Tensor,
        w: &Tensor,
        ms: f64,
    ) {
        let nz = be.nonzero_forward(x, w, g);
        let e = self.entry(name, kind, g);
        e.macs[0] += (g.n * g.c_out * g.crs() * g.pq()) as u64;
        e.nonzero[0] += nz.macs;
        e.weight_zeros += w.len() as u64 - nz.a;
        e.weight_values += w.len() as u64;
        e.input_zeros += x.len() as u64 - nz.b;
        e.input_values += x.len() as u64;
        e.ms[0] += ms;
        if self.capture {
            self.operands.retain(|o| o.name != name);
            let (x, w) = (x.host_values().into_owned(), w.host_values().into_owned());
            self.operands.push(Operands { name: name.into(), geometry: *g, x, w, dy: None });
        }
    }

    /// The input-gradient pass ("backward"), counted only when it runs (never for the first
    /// layer of a network): w the weights the forward used, dy the output gradient.
    #[allow(clippy::too_many_arguments)]
    pub fn record_input_grad(
        &mut self,
        be: &dyn Backend,
        name: &str,
        kind: &str,
        g: &ConvGeometry,
        w: &Tensor,
        dy: &Tensor,
        ms: f64,
    ) {
        let back = be.nonzero_backward(w, dy, g);
        let e = self.entry(name, kind, g);
        e.macs[1] += (g.n * g.c_out * g.crs() * g.pq()) as u64;
        e.nonzero[1] += back.macs;
        e.ms[1] += ms;
    }

    /// The weight-gradient pass ("GradUpdate"), which every trained layer runs: x the cached
    /// input, dy the output gradient (whose zeros are counted here, once per step).
    #[allow(clippy::too_many_arguments)]
    pub fn record_weight_grad(
        &mut self,
        be: &dyn Backend,
        name: &str,
        kind: &str,
        g: &ConvGeometry,
        x: &Tensor,
        dy: &Tensor,
        ms: f64,
    ) {
        let grad = be.nonzero_weight_grad(x, dy, g);
        let e = self.entry(name, kind, g);
        e.macs[2] += (g.n * g.c_out * g.crs() * g.pq()) as u64;
        e.nonzero[2] += grad.macs;
        e.grad_zeros += dy.len() as u64 - grad.a;
        e.grad_values += dy.len() as u64;
        e.ms[2] += ms;
        if let Some(o) = self.operands.iter_mut().find(|o| o.name == name) {
            o.dy = Some(dy.host_values().into_owned());
        }
    }

    /// Whether `pass` ran for layer `l` (the first layer's input gradient never does).
    pub fn ran(l: &LayerProfile, pass: usize) -> bool {
        l.macs[pass] > 0
    }

    /// Σ non-zero / Σ dense over all layers, per pass (the paper's Fig. 1 numbers).
    pub fn totals(&self) -> [f64; 3] {
        let mut t = [0.0; 3];
        for (p, v) in t.iter_mut().enumerate() {
            let nz: u64 = self.layers.iter().map(|l| l.nonzero[p]).sum();
            let dense: u64 = self.layers.iter().map(|l| l.macs[p]).sum();
            *v = nz as f64 / dense.max(1) as f64;
        }
        t
    }

    pub fn clear(&mut self) {
        self.layers.clear();
        self.operands.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::{Ctx, Layer};
    use crate::layers::*;
    use std::cell::RefCell;
    use tern_core::kernels::sparsity::conv_pass_counts_reference;
    use tern_core::{CpuBackend, Rng, Tensor};

    fn tiny_net(rng: &mut Rng) -> Sequential {
        let body = Sequential::new(
            "block.body",
            vec![
                Box::new(Conv2d::new("block.conv1", 4, 6, 3, 2, 1, false, rng)) as Box<dyn Layer>,
                Box::new(BatchNorm::new("block.bn1", 6)),
                Box::new(Relu::new("block.relu1")),
                Box::new(Conv2d::new("block.conv2", 6, 6, 3, 1, 1, false, rng)),
            ],
        );
        let sc = Sequential::new(
            "block.sc",
            vec![Box::new(Conv2d::new("block.sc.conv", 4, 6, 1, 2, 0, false, rng)) as Box<dyn Layer>],
        );
        Sequential::new(
            "net",
            vec![
                Box::new(Conv2d::new("stem", 3, 4, 3, 1, 1, true, rng)) as Box<dyn Layer>,
                Box::new(Relu::new("stem.relu")),
                Box::new(Residual::new("block", body, Some(sc))),
                Box::new(GlobalAvgPool::new("gap")),
                Box::new(Linear::new("fc", 6, 5, true, rng)),
            ],
        )
    }

    #[test]
    fn counts_of_every_layer_in_a_residual_net_equal_brute_force() {
        let mut rng = Rng::new(4);
        let mut net = tiny_net(&mut rng);
        // ternary weights plant zeros in the weights, ReLUs in the activations
        net.visit_leaves(&mut |l| {
            if let Some(c) = l.as_any_mut().downcast_mut::<Conv2d>() {
                c.ternary.config = Some(tern_core::quant::TernaryConfig::default());
            }
        });
        let mut x = Tensor::randn(&[3, 3, 7, 7], 1.0, &mut rng);
        x.data_mut().iter_mut().step_by(3).for_each(|v| *v = 0.0);
        let prof = RefCell::new(Profiler { capture: true, ..Default::default() });
        let be = CpuBackend;
        let mut ctx = Ctx::new(&be, true);
        ctx.profiler = Some(&prof);
        let y = net.forward(&ctx, &x);
        let mut dy = Tensor::randn(y.shape(), 1.0, &mut rng);
        dy.data_mut()[0] = 0.0;
        net.backward(&ctx, &dy, false);
        let p = prof.into_inner();
        let names: Vec<&str> = p.layers.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["stem", "block.conv1", "block.conv2", "block.sc.conv", "fc"]);
        for (i, (l, o)) in p.layers.iter().zip(&p.operands).enumerate() {
            let want = conv_pass_counts_reference(&o.x, &o.w, o.dy.as_deref(), &o.geometry);
            // the stem's input gradient never runs, so it is not counted
            let back = if i == 0 { (0, 0) } else { (want.dense, want.backward) };
            assert_eq!(l.macs, [want.dense, back.0, want.dense], "{}", l.name);
            assert_eq!(l.nonzero, [want.forward, back.1, want.weight_grad], "{}", l.name);
        }
        assert!(!Profiler::ran(&p.layers[0], 1) && Profiler::ran(&p.layers[1], 1));
        // totals are the sums over layers
        let t = p.totals();
        for pass in 0..3 {
            let nz: u64 = p.layers.iter().map(|l| l.nonzero[pass]).sum();
            let dense: u64 = p.layers.iter().map(|l| l.macs[pass]).sum();
            assert!((t[pass] - nz as f64 / dense as f64).abs() < 1e-12);
            assert!(t[pass] < 1.0);
        }
        assert!(p.layers[0].nonzero_frac(1).is_nan());
        assert!(p.layers[1].weight_zero_frac() > 0.2 && p.layers[1].input_zero_frac() > 0.2);
        // the zero fractions found on the way equal direct counts
        for (l, o) in p.layers.iter().zip(&p.operands) {
            let z = |v: &[f32]| v.iter().filter(|&&a| a == 0.0).count() as f64 / v.len() as f64;
            assert!((l.input_zero_frac() - z(&o.x)).abs() < 1e-12, "{}", l.name);
            assert!((l.weight_zero_frac() - z(&o.w)).abs() < 1e-12, "{}", l.name);
            assert!((l.grad_zero_frac() - z(o.dy.as_ref().unwrap())).abs() < 1e-12, "{}", l.name);
        }
    }

    #[test]
    fn a_layer_without_zeros_reports_one() {
        let mut rng = Rng::new(5);
        let mut fc = Linear::new("fc", 7, 3, false, &mut rng);
        fc.weight.value = Tensor::full(&[3, 7], 0.5);
        let prof = RefCell::new(Profiler::default());
        let be = CpuBackend;
        let mut ctx = Ctx::new(&be, true);
        ctx.profiler = Some(&prof);
        fc.forward(&ctx, &Tensor::full(&[2, 7], 1.0));
        fc.backward(&ctx, &Tensor::full(&[2, 3], 1.0), true);
        let p = prof.into_inner();
        assert_eq!([p.layers[0].nonzero_frac(0), p.layers[0].nonzero_frac(1), p.layers[0].nonzero_frac(2)], [1.0; 3]);
        assert_eq!(p.totals(), [1.0; 3]);
    }
}
