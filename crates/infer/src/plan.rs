//! A trained tern model as a flat list of fused operations over numbered values, and its
//! two interpreters: [`FloatPlan::run`] (f32, the model's own arithmetic: the calibration
//! pass and the yardstick) and [`Plan::run`] (u8 activations, s8 weights, VNNI kernels).
//!
//! Building walks the model once: each convolution absorbs the BN after it (a multiplier
//! and an offset per channel), the ReLU after that (with its threshold) and, at the end of
//! a residual body, the shortcut's value and the block's ReLU. Activations after a ReLU are
//! u8 with zero point 0 (exact zeros stay exact, so zero padding is free); the input is u8
//! with a zero point; values that can be negative and feed only an epilogue or a classifier
//! stay f32.

use crate::conv::{self, ConvKernel, ConvShape, Epilogue, Output, PackedConv, Residual, U8Image, LANES};
use tern_core::kernels::{conv as fconv, linear as flinear, pool as fpool};
use tern_core::{ConvGeometry, Error, PoolGeometry, Result};
use tern_train::layers::Sequential;
use tern_train::layers::{
    AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, Relu, Residual as Res,
};
use tern_train::{Layer, Model};

/// A value's shape, per image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shape {
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// A max or average pooling of value `src` into `dst`, alike in every form of a plan.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Pool {
    pub src: usize,
    pub dst: usize,
    /// Max pooling; else the average (padding counted as zeros, as tern's).
    pub max: bool,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

/// One fused operation of the float plan (weights as the model's forward uses them).
#[derive(Clone, Debug)]
pub enum FloatOp {
    /// y = relu(conv(x, w) · scale + shift (+ residual)).
    Conv {
        src: usize,
        dst: usize,
        residual: Option<usize>,
        shape: ConvShape,
        /// `[c_out][c_in][k][k]`, the effective (ternary or FP) weights.
        weights: Vec<f32>,
        /// Whether the weights are ternary (±α or 0 per output channel).
        ternary: bool,
        scale: Vec<f32>,
        shift: Vec<f32>,
        relu: Option<f32>,
    },
    Pool(Pool),
    GlobalAvgPool {
        src: usize,
        dst: usize,
    },
    /// y = relu(W · flatten(x) + b), flatten in NCHW order as the model's.
    Linear {
        src: usize,
        dst: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        d_out: usize,
        relu: Option<f32>,
    },
}

/// The float plan: value 0 is the input; the last value the logits.
#[derive(Clone, Debug)]
pub struct FloatPlan {
    pub values: Vec<Shape>,
    pub ops: Vec<FloatOp>,
}

fn unsupported(name: &str, what: &str) -> Error {
    Error::invalid("tern infer", format!("layer {name}: {what} (not supported by the inference planner)"))
}

struct Builder {
    values: Vec<Shape>,
    ops: Vec<FloatOp>,
}

impl Builder {
    fn value(&mut self, s: Shape) -> usize {
        self.values.push(s);
        self.values.len() - 1
    }

    /// Emits `layers` applied to value `x`. With `tail = (residual, relu threshold)`, the
    /// sequence must end in a convolution (and BN), which then adds the residual and applies
    /// the block's ReLU.
    fn seq(&mut self, layers: &mut [Box<dyn Layer>], mut x: usize, tail: Option<(usize, f32)>) -> Result<usize> {
        let mut i = 0;
        while i < layers.len() {
            let last = i + 1 == layers.len();
            let name = layers[i].name().to_string();
            if let Some(s) = layers[i].as_any_mut().downcast_mut::<Sequential>() {
                x = self.seq(&mut s.layers, x, if last { tail } else { None })?;
                i += 1;
                continue;
            }
            if layers[i].as_any_mut().downcast_mut::<Conv2d>().is_some() {
                // conv [bn] [relu]
                let has_bn = layers.get_mut(i + 1).is_some_and(|l| l.as_any_mut().is::<BatchNorm>());
                let relu_at = i + 1 + has_bn as usize;
                let relu =
                    layers.get_mut(relu_at).and_then(|l| l.as_any_mut().downcast_mut::<Relu>().map(|r| r.threshold));
                let end = relu_at + relu.is_some() as usize;
                let (residual, relu) = match tail {
                    Some((r, t)) if end == layers.len() => {
                        if relu.is_some() {
                            return Err(unsupported(&name, "a residual body that ends in a ReLU"));
                        }
                        (Some(r), Some(t))
                    }
                    _ => (None, relu),
                };
                let (c, bn) = layers[i..].split_at_mut(1);
                let c = c[0].as_any_mut().downcast_mut::<Conv2d>().expect("checked above");
                let bn = if has_bn { bn[0].as_any_mut().downcast_mut::<BatchNorm>() } else { None };
                x = self.conv(c, bn, x, residual, relu)?;
                i = end;
                continue;
            }
            if tail.is_some() && last {
                return Err(unsupported(&name, "a residual body must end in a convolution"));
            }
            let next_relu =
                layers.get_mut(i + 1).and_then(|l| l.as_any_mut().downcast_mut::<Relu>().map(|r| r.threshold));
            let kind = layers[i].kind();
            let any = layers[i].as_any_mut();
            let s = self.values[x];
            if let Some(r) = any.downcast_mut::<Res>() {
                let short = match &mut r.shortcut {
                    Some(sc) => self.seq(&mut sc.layers, x, None)?,
                    None => x,
                };
                x = self.seq(&mut r.body.layers, x, Some((short, r.relu.threshold)))?;
            } else if let Some((max, k, stride, pad)) = any
                .downcast_ref::<MaxPool2d>()
                .map(|p| (true, p.k, p.stride, p.pad))
                .or_else(|| any.downcast_ref::<AvgPool2d>().map(|p| (false, p.k, p.stride, p.pad)))
            {
                let g = PoolGeometry::new(1, s.c, s.h, s.w, k, stride, pad)?;
                let dst = self.value(Shape { c: s.c, h: g.h_out(), w: g.w_out() });
                self.ops.push(FloatOp::Pool(Pool { src: x, dst, max, k, stride, pad }));
                x = dst;
            } else if any.is::<GlobalAvgPool>() {
                let dst = self.value(Shape { c: s.c, h: 1, w: 1 });
                self.ops.push(FloatOp::GlobalAvgPool { src: x, dst });
                x = dst;
            } else if any.is::<Flatten>() {
                // NCHW flattening is what Linear reads (below); nothing to compute
            } else if let Some(l) = any.downcast_mut::<Linear>() {
                if s.c * s.h * s.w != l.d_in {
                    return Err(unsupported(&name, &format!("{} inputs for {:?}", l.d_in, s)));
                }
                let weights = l.ternary.host_weight(&l.weight.value, l.d_out);
                let bias = l.bias.as_ref().map_or(vec![0.0; l.d_out], |b| b.value.host_values().into_owned());
                let relu = next_relu;
                let dst = self.value(Shape { c: l.d_out, h: 1, w: 1 });
                self.ops.push(FloatOp::Linear { src: x, dst, weights, bias, d_out: l.d_out, relu });
                x = dst;
                i += relu.is_some() as usize;
            } else {
                return Err(unsupported(&name, &format!("a `{kind}` layer here")));
            }
            i += 1;
        }
        Ok(x)
    }

    fn conv(
        &mut self,
        c: &mut Conv2d,
        bn: Option<&mut BatchNorm>,
        x: usize,
        residual: Option<usize>,
        relu: Option<f32>,
    ) -> Result<usize> {
        let s = self.values[x];
        if s.c != c.c_in {
            return Err(unsupported(c.name(), &format!("{} input channels for {:?}", c.c_in, s)));
        }
        let shape = ConvShape { c_in: c.c_in, c_out: c.c_out, k: c.k, stride: c.stride, pad: c.pad };
        ConvGeometry::new(1, s.c, s.h, s.w, c.c_out, c.k, c.stride, c.pad)?;
        let (weights, ternary) = (c.ternary.host_weight(&c.weight.value, c.c_out), c.ternary.config.is_some());
        let bias = c.bias.as_ref().map_or(vec![0.0; c.c_out], |b| b.value.host_values().into_owned());
        // BN(conv + bias) = conv · scale + (bias − mean) · scale + beta
        let (mut scale, mut shift) = (vec![1.0f32; c.c_out], bias.clone());
        if let Some(bn) = bn {
            let (g, b) = (bn.gamma.value.host_values(), bn.beta.value.host_values());
            let (m, v) = (bn.running_mean.host_values(), bn.running_var.host_values());
            for o in 0..c.c_out {
                let inv = 1.0 / (v[o] + bn.eps).sqrt();
                scale[o] = g[o] * inv;
                shift[o] = (bias[o] - m[o]) * scale[o] + b[o];
            }
        }
        let (ho, wo) = shape.out_hw(s.h, s.w);
        let dst = self.value(Shape { c: c.c_out, h: ho, w: wo });
        self.ops.push(FloatOp::Conv { src: x, dst, residual, shape, weights, ternary, scale, shift, relu });
        Ok(dst)
    }
}

impl FloatPlan {
    /// The plan of `model` (in eval semantics: BN with its running statistics).
    pub fn of(model: &mut Model) -> Result<FloatPlan> {
        let [c, h, w] = model.config.in_shape;
        let mut b = Builder { values: vec![Shape { c, h, w }], ops: Vec::new() };
        b.seq(&mut model.net.layers, 0, None)?;
        Ok(FloatPlan { values: b.values, ops: b.ops })
    }

    /// Runs `n` images `x: [n, c, h, w]` (normalised as the model's loader does); returns
    /// every value, NCHW f32 (the last holds the logits).
    pub fn run(&self, x: &[f32], n: usize) -> Vec<Vec<f32>> {
        let mut v: Vec<Vec<f32>> = vec![Vec::new(); self.values.len()];
        v[0] = x.to_vec();
        let len = |s: &Shape| n * s.c * s.h * s.w;
        for op in &self.ops {
            match op {
                FloatOp::Conv { src, dst, residual, shape, weights, scale, shift, relu, .. } => {
                    let s = self.values[*src];
                    let g = ConvGeometry::new(n, s.c, s.h, s.w, shape.c_out, shape.k, shape.stride, shape.pad)
                        .expect("checked when planned");
                    let mut y = vec![0.0; len(&self.values[*dst])];
                    fconv::conv2d_forward(&v[*src], weights, None, &g, &mut y);
                    let hw = g.pq();
                    for (i, out) in y.iter_mut().enumerate() {
                        let o = (i / hw) % shape.c_out;
                        let mut t = *out * scale[o] + shift[o];
                        if let Some(r) = residual {
                            t += v[*r][i];
                        }
                        *out = match relu {
                            Some(th) if !(t > *th) => 0.0,
                            _ => t,
                        };
                    }
                    v[*dst] = y;
                }
                FloatOp::Pool(p) => {
                    let s = self.values[p.src];
                    let g = PoolGeometry::new(n, s.c, s.h, s.w, p.k, p.stride, p.pad).expect("checked when planned");
                    let mut y = vec![0.0; len(&self.values[p.dst])];
                    if p.max {
                        let mut arg = vec![0u32; y.len()];
                        fpool::max_pool_forward(&v[p.src], &g, &mut y, &mut arg);
                    } else {
                        fpool::avg_pool_forward(&v[p.src], &g, &mut y);
                    }
                    v[p.dst] = y;
                }
                FloatOp::GlobalAvgPool { src, dst } => {
                    let s = self.values[*src];
                    let mut y = vec![0.0; n * s.c];
                    fpool::global_avg_pool_forward(&v[*src], s.h * s.w, &mut y);
                    v[*dst] = y;
                }
                FloatOp::Linear { src, dst, weights, bias, d_out, relu } => {
                    let d_in = weights.len() / d_out;
                    let mut y = vec![0.0; n * d_out];
                    flinear::linear_forward(&v[*src], weights, Some(bias), n, d_in, *d_out, &mut y);
                    if let Some(th) = relu {
                        y.iter_mut().for_each(|t| *t = if *t > *th { *t } else { 0.0 });
                    }
                    v[*dst] = y;
                }
            }
        }
        v
    }
}

// ---------------------------------------------------------------- the quantised plan

/// How a value is stored at run time.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Storage {
    /// real = scale · (q − zero), channels-last with `stride` bytes per pixel.
    U8 { scale: f32, zero: u8, stride: usize },
    /// channels-last f32 with `stride` floats per pixel.
    F32 { stride: usize },
}

/// One convolution's kernel choice and the timings behind it ([`Plan::tune`]).
#[derive(Clone, Debug, serde::Serialize)]
pub struct KernelChoice {
    pub layer: String,
    /// Fraction of its weight units (16 output × 4 input channels at one tap) all zero.
    pub zero_weight_units: f64,
    pub dense_ms: f64,
    /// None where the kernel could not win (a non-zero input zero point, no zero units).
    pub skip_zero_inputs_ms: Option<f64>,
    pub skip_zero_weight_units_ms: Option<f64>,
    pub kernel: ConvKernel,
}

/// One operation of the quantised plan.
#[derive(Clone, Debug)]
pub enum Op {
    Conv {
        src: usize,
        dst: usize,
        residual: Option<usize>,
        packed: PackedConv,
        mul: Vec<f32>,
        add: Vec<f32>,
        relu: Option<f32>,
        /// The kernel that runs it (set by [`Plan::tune`] to the fastest measured).
        kernel: ConvKernel,
    },
    Pool(Pool),
    GlobalAvgPool {
        src: usize,
        dst: usize,
    },
    /// Weights reordered to the source's channels-last order.
    Linear {
        src: usize,
        dst: usize,
        weights: Vec<f32>,
        bias: Vec<f32>,
        d_out: usize,
        relu: Option<f32>,
    },
}

impl Op {
    /// A short description (kind and shape), for traces.
    pub fn label(&self) -> String {
        match self {
            Op::Conv { packed, residual, .. } => {
                let s = packed.shape;
                let r = if residual.is_some() { " +residual" } else { "" };
                format!("conv {}x{} s{} {}->{}{r}", s.k, s.k, s.stride, s.c_in, s.c_out)
            }
            Op::Pool(p) => format!("{} {k}x{k} s{}", if p.max { "maxpool" } else { "avgpool" }, p.stride, k = p.k),
            Op::GlobalAvgPool { .. } => "global avgpool".into(),
            Op::Linear { d_out, .. } => format!("linear ->{d_out}"),
        }
    }
}

/// The quantised plan: shapes and storage of every value, and the operations.
#[derive(Clone, Debug)]
pub struct Plan {
    pub values: Vec<Shape>,
    pub storage: Vec<Storage>,
    pub ops: Vec<Op>,
}

/// Per-value calibration: the largest and smallest value seen.
fn ranges(float: &FloatPlan, calib: &[f32], n: usize) -> Vec<(f32, f32)> {
    float.run(calib, n).iter().map(|v| v.iter().fold((0.0f32, 0.0f32), |(lo, hi), &x| (lo.min(x), hi.max(x)))).collect()
}

/// s8 codes and a scale per output channel: ternary weights as their signs times α, FP
/// weights quantised symmetrically (127 levels).
fn codes(weights: &[f32], c_out: usize, ternary: bool) -> (Vec<i8>, Vec<f32>) {
    let per = weights.len() / c_out;
    let mut codes = vec![0i8; weights.len()];
    let mut scales = vec![0.0f32; c_out];
    for o in 0..c_out {
        let w = &weights[o * per..(o + 1) * per];
        let max = w.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let s = if ternary { max } else { max / 127.0 };
        scales[o] = s;
        if s > 0.0 {
            for (c, &v) in codes[o * per..(o + 1) * per].iter_mut().zip(w) {
                *c = if ternary {
                    v.signum() as i8 * (v != 0.0) as i8
                } else {
                    (v / s).round().clamp(-127.0, 127.0) as i8
                };
            }
        }
    }
    (codes, scales)
}

fn padded(c: usize) -> usize {
    c.div_ceil(LANES) * LANES
}

impl Plan {
    /// Quantises `float` with activation ranges calibrated on `calib: [n, c, h, w]`.
    pub fn quantise(float: &FloatPlan, calib: &[f32], n: usize) -> Result<Plan> {
        let range = ranges(float, calib, n);
        let nv = float.values.len();
        // which values are u8: the input, and outputs of a ReLU or of pooling a u8 value
        let mut storage: Vec<Option<Storage>> = vec![None; nv];
        let u8_of = |lo: f32, hi: f32, stride: usize| {
            let (lo, hi) = (lo.min(0.0), hi.max(lo + 1e-6).max(1e-6));
            let scale = (hi - lo) / 255.0;
            Storage::U8 { scale, zero: (-lo / scale).round().clamp(0.0, 255.0) as u8, stride }
        };
        let s0 = float.values[0];
        storage[0] = Some(u8_of(range[0].0, range[0].1, s0.c.div_ceil(4) * 4));
        for op in &float.ops {
            match op {
                FloatOp::Conv { dst, relu, shape, .. } => {
                    let ks = padded(shape.c_out);
                    storage[*dst] = Some(match relu {
                        Some(t) if *t >= 0.0 => u8_of(0.0, range[*dst].1, ks),
                        _ => Storage::F32 { stride: ks },
                    });
                }
                FloatOp::Pool(Pool { src, dst, .. }) => {
                    storage[*dst] = match storage[*src] {
                        Some(s @ Storage::U8 { .. }) => Some(s),
                        _ => return Err(unsupported("pool", "pooling of a value that is not u8")),
                    };
                }
                FloatOp::GlobalAvgPool { dst, .. } => {
                    storage[*dst] = Some(Storage::F32 { stride: float.values[*dst].c })
                }
                FloatOp::Linear { dst, d_out, .. } => storage[*dst] = Some(Storage::F32 { stride: *d_out }),
            }
        }
        let storage: Vec<Storage> = storage.into_iter().map(|s| s.expect("every value is written")).collect();
        let mut ops = Vec::new();
        for op in &float.ops {
            ops.push(match op {
                FloatOp::Conv { src, dst, residual, shape, weights, ternary, scale, shift, relu } => {
                    let Storage::U8 { scale: s_in, .. } = storage[*src] else {
                        return Err(unsupported("conv", "a convolution of a value that is not u8"));
                    };
                    let (codes, w_scale) = codes(weights, shape.c_out, *ternary);
                    let ks = padded(shape.c_out);
                    let (mut mul, mut add) = (vec![0.0; ks], vec![0.0; ks]);
                    for o in 0..shape.c_out {
                        mul[o] = s_in * w_scale[o] * scale[o];
                        add[o] = shift[o];
                    }
                    Op::Conv {
                        src: *src,
                        dst: *dst,
                        residual: *residual,
                        packed: PackedConv::new(*shape, codes),
                        mul,
                        add,
                        relu: *relu,
                        kernel: ConvKernel::Dense,
                    }
                }
                FloatOp::Pool(p) => Op::Pool(*p),
                FloatOp::GlobalAvgPool { src, dst } => Op::GlobalAvgPool { src: *src, dst: *dst },
                FloatOp::Linear { src, dst, weights, bias, d_out, relu } => {
                    // NCHW flattening order → the source's channels-last order
                    let s = float.values[*src];
                    let d_in = s.c * s.h * s.w;
                    let mut w = vec![0.0; weights.len()];
                    for o in 0..*d_out {
                        for c in 0..s.c {
                            for p in 0..s.h * s.w {
                                w[o * d_in + p * s.c + c] = weights[o * d_in + c * s.h * s.w + p];
                            }
                        }
                    }
                    Op::Linear { src: *src, dst: *dst, weights: w, bias: bias.clone(), d_out: *d_out, relu: *relu }
                }
            });
        }
        Ok(Plan { values: float.values.clone(), storage, ops })
    }

    /// Checks that the graph is one [`Plan::run`] can run: values written once before they
    /// are read, storage that matches what each operation reads and writes (a plan read
    /// from a file passes through here before it runs).
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.values.len();
        if n < 2 || self.storage.len() != n {
            return Err(format!("{n} values, {} storage entries", self.storage.len()));
        }
        let u8_stride = |v: usize| match self.storage[v] {
            Storage::U8 { scale, stride, .. } if scale.is_finite() && scale > 0.0 && stride % 4 == 0 => Some(stride),
            _ => None,
        };
        let f32_stride = |v: usize| match self.storage[v] {
            Storage::F32 { stride } => Some(stride),
            _ => None,
        };
        if u8_stride(0).is_none_or(|s| s < self.values[0].c) {
            return Err("the input must be u8 with a channel stride of at least its channels".into());
        }
        let mut written = vec![false; n];
        written[0] = true;
        for (i, op) in self.ops.iter().enumerate() {
            let bad = |what: String| Err(format!("op {i}: {what}"));
            let (src, dst, residual) = match op {
                Op::Conv { src, dst, residual, .. } => (*src, *dst, *residual),
                Op::Pool(p) => (p.src, p.dst, None),
                Op::GlobalAvgPool { src, dst } | Op::Linear { src, dst, .. } => (*src, *dst, None),
            };
            if src >= n || dst >= n || residual.is_some_and(|r| r >= n) {
                return bad(format!("a value beyond the {n} of the plan"));
            }
            if !written[src] || residual.is_some_and(|r| !written[r]) || written[dst] {
                return bad("reads a value before it is written, or writes one twice".into());
            }
            written[dst] = true;
            let (s, d) = (self.values[src], self.values[dst]);
            match op {
                Op::Conv { packed, mul, add, .. } => {
                    let ks = packed.shape.blocks() * LANES;
                    if u8_stride(src).is_none_or(|st| st < packed.shape.c4() * 4) {
                        return bad("a convolution reads a u8 value with room for its channel groups".into());
                    }
                    if u8_stride(dst).or(f32_stride(dst)) != Some(ks) || mul.len() != ks || add.len() != ks {
                        return bad(format!("a convolution writes {ks} channels per pixel"));
                    }
                    if let Some(r) = residual {
                        let rs = self.values[r];
                        if (rs.h, rs.w, rs.c) != (d.h, d.w, d.c) || u8_stride(r).or(f32_stride(r)) != Some(ks) {
                            return bad(format!("residual {rs:?} for an output of {d:?}"));
                        }
                    }
                }
                Op::Pool(_) => {
                    if u8_stride(src).is_none_or(|st| st < s.c) || self.storage[dst] != self.storage[src] {
                        return bad("pooling keeps a u8 value's storage".into());
                    }
                }
                Op::GlobalAvgPool { .. } => {
                    if u8_stride(src).is_none_or(|st| st < s.c) || f32_stride(dst) != Some(d.c) || d.c != s.c {
                        return bad("global pooling of a u8 value into f32 channels".into());
                    }
                }
                Op::Linear { d_out, .. } => {
                    if u8_stride(src).or(f32_stride(src)).is_none_or(|st| st < s.c) || f32_stride(dst) != Some(*d_out) {
                        return bad("a linear layer writes its outputs as f32".into());
                    }
                    if d.c != *d_out || d.h * d.w != 1 {
                        return bad(format!("{d_out} outputs into {d:?}"));
                    }
                }
            }
        }
        if !written[n - 1] || f32_stride(n - 1).is_none() {
            return Err("the last value (the logits) must be written, as f32".into());
        }
        Ok(())
    }

    /// Logits of several images, one contiguous share of them per rayon thread, each with its
    /// own workspace in `wss` (resized to the thread count): each image's convolutions then
    /// mostly stay on their thread — no fork-join per layer. Same logits as [`Plan::run`]
    /// image by image. (A thread waiting inside a convolution may run another share; each
    /// share owns its workspace, so nothing is locked.)
    pub fn run_batch(&self, images: &[&[f32]], wss: &mut Vec<Workspace>) -> Vec<Vec<f32>> {
        let threads = rayon::current_num_threads().min(images.len()).max(1);
        wss.resize_with(wss.len().max(threads), Workspace::default);
        let mut out = vec![Vec::new(); images.len()];
        if threads == 1 {
            for (o, x) in out.iter_mut().zip(images) {
                *o = self.run(x, &mut wss[0]);
            }
            return out;
        }
        let share = images.len().div_ceil(threads);
        rayon::scope(|s| {
            for ((ws, outs), xs) in wss.iter_mut().zip(out.chunks_mut(share)).zip(images.chunks(share)) {
                s.spawn(move |_| {
                    for (o, x) in outs.iter_mut().zip(xs) {
                        *o = self.run(x, ws);
                    }
                });
            }
        });
        out
    }

    /// Logits of one image `x: [c, h, w]` (normalised), with scratch buffers kept in `ws`.
    pub fn run(&self, x: &[f32], ws: &mut Workspace) -> Vec<f32> {
        let nv = self.values.len();
        if ws.u8s.len() != nv {
            ws.u8s = vec![Vec::new(); nv];
            ws.f32s = vec![Vec::new(); nv];
        }
        // the input, quantised channels-last
        let s0 = self.values[0];
        let Storage::U8 { scale, zero, stride } = self.storage[0] else { unreachable!("the input is u8") };
        let buf = &mut ws.u8s[0];
        if buf.len() != s0.h * s0.w * stride {
            // channels beyond the input's stay at the zero point (a workspace serves one plan)
            buf.clear();
            buf.resize(s0.h * s0.w * stride, zero);
        }
        let t = std::time::Instant::now();
        let inv = 1.0 / scale;
        let hw = s0.h * s0.w;
        let mut q = std::mem::take(&mut ws.plane);
        q.resize(s0.c * hw, 0);
        conv::quantise(&x[..s0.c * hw], inv, zero as i32, &mut q);
        for (p, px) in buf.chunks_exact_mut(stride).enumerate() {
            for (c, v) in px[..s0.c].iter_mut().enumerate() {
                *v = q[c * hw + p];
            }
        }
        ws.plane = q;
        let trace = tracing();
        if trace {
            eprintln!("{:>8.3} ms quantise the input", t.elapsed().as_secs_f64() * 1e3);
        }
        for op in &self.ops {
            let t = std::time::Instant::now();
            self.step(op, ws);
            if trace {
                eprintln!("{:>8.3} ms {}", t.elapsed().as_secs_f64() * 1e3, op.label());
            }
        }
        let last = nv - 1;
        let c = self.values[last].c;
        ws.f32s[last][..c].to_vec()
    }

    /// Chooses, per convolution, the kernel ([`ConvKernel`]) by timing each that could win
    /// on the inputs `images` produce (the best of three runs each; a skipping kernel must
    /// beat the dense one by 10 %). All give the same bits, so only speed changes.
    pub fn tune(&mut self, images: &[&[f32]], ws: &mut Workspace) -> Vec<KernelChoice> {
        let convs: Vec<usize> = (0..self.ops.len()).filter(|&i| matches!(self.ops[i], Op::Conv { .. })).collect();
        let mut times = vec![[f64::NAN; 3]; convs.len()];
        for x in images {
            self.run(x, ws); // fills every value for this image
            for (j, &i) in convs.iter().enumerate() {
                let Op::Conv { packed, src, .. } = &self.ops[i] else { unreachable!() };
                let zero_point = matches!(self.storage[*src], Storage::U8 { zero: 0, .. });
                let candidates = [true, zero_point, packed.zero_unit_fraction() > 0.0];
                for (k, kernel) in ConvKernel::ALL.into_iter().enumerate() {
                    if !candidates[k] {
                        continue;
                    }
                    if let Op::Conv { kernel: kn, .. } = &mut self.ops[i] {
                        *kn = kernel;
                    }
                    let best = (0..3)
                        .map(|_| {
                            let t = std::time::Instant::now();
                            self.step(&self.ops[i], ws);
                            t.elapsed().as_secs_f64() * 1e3
                        })
                        .fold(f64::INFINITY, f64::min);
                    let slot = &mut times[j][k];
                    *slot = if slot.is_nan() { best } else { *slot + best };
                }
            }
        }
        convs
            .iter()
            .zip(times)
            .map(|(&i, ms)| {
                let mut chosen = ConvKernel::Dense;
                for k in 1..3 {
                    if ms[k] < 0.9 * ms[0] && !(ms[k] >= ms[chosen as usize]) {
                        chosen = ConvKernel::ALL[k];
                    }
                }
                let label = self.ops[i].label();
                let Op::Conv { kernel, packed, .. } = &mut self.ops[i] else { unreachable!() };
                *kernel = chosen;
                let ms = |k: usize| (!ms[k].is_nan()).then_some(ms[k]);
                KernelChoice {
                    layer: label,
                    zero_weight_units: packed.zero_unit_fraction(),
                    dense_ms: ms(0).unwrap_or(0.0),
                    skip_zero_inputs_ms: ms(1),
                    skip_zero_weight_units_ms: ms(2),
                    kernel: chosen,
                }
            })
            .collect()
    }

    fn step(&self, op: &Op, ws: &mut Workspace) {
        match op {
            Op::Conv { src, dst, residual, packed, mul, add, relu, kernel } => {
                let s = self.values[*src];
                let d = self.values[*dst];
                let Storage::U8 { zero, stride, .. } = self.storage[*src] else { unreachable!() };
                let mut u8_out = std::mem::take(&mut ws.u8s[*dst]);
                let mut f32_out = std::mem::take(&mut ws.f32s[*dst]);
                let mut scratch = std::mem::take(&mut ws.padded);
                {
                    let x = U8Image { data: &ws.u8s[*src], h: s.h, w: s.w, stride, zero };
                    let res = residual.map(|r| match self.storage[r] {
                        Storage::U8 { scale, zero, stride } => {
                            Residual::U8 { data: &ws.u8s[r], stride, scale, zero: zero as i32 }
                        }
                        Storage::F32 { stride } => Residual::F32 { data: &ws.f32s[r], stride },
                    });
                    let ep = Epilogue { mul, add, relu: *relu, residual: res };
                    match self.storage[*dst] {
                        Storage::U8 { scale, zero, stride } => {
                            u8_out.resize(d.h * d.w * stride, 0);
                            let out = Output::U8 { data: &mut u8_out, inv_scale: 1.0 / scale, zero: zero as i32 };
                            kernel.run(&x, packed, &ep, out, &mut scratch);
                        }
                        Storage::F32 { stride } => {
                            f32_out.resize(d.h * d.w * stride, 0.0);
                            kernel.run(&x, packed, &ep, Output::F32 { data: &mut f32_out }, &mut scratch);
                        }
                    }
                }
                ws.u8s[*dst] = u8_out;
                ws.f32s[*dst] = f32_out;
                ws.padded = scratch;
            }
            Op::Pool(p) => {
                let (s, d) = (self.values[p.src], self.values[p.dst]);
                let Storage::U8 { stride: cs, zero, .. } = self.storage[p.src] else { unreachable!() };
                let mut y = std::mem::take(&mut ws.u8s[p.dst]);
                y.clear();
                y.resize(d.h * d.w * cs, 0);
                pool_u8(&ws.u8s[p.src], s, d, cs, zero, p, &mut y);
                ws.u8s[p.dst] = y;
            }
            Op::GlobalAvgPool { src, dst } => {
                let s = self.values[*src];
                let Storage::U8 { scale, zero, stride } = self.storage[*src] else { unreachable!() };
                let x = &ws.u8s[*src];
                let hw = s.h * s.w;
                let mut sums = vec![0u32; s.c];
                for p in 0..hw {
                    for (c, sum) in sums.iter_mut().enumerate() {
                        *sum += x[p * stride + c] as u32;
                    }
                }
                ws.f32s[*dst] =
                    sums.iter().map(|&t| (t as f32 - (hw * zero as usize) as f32) * scale / hw as f32).collect();
            }
            Op::Linear { src, dst, weights, bias, relu, .. } => {
                let s = self.values[*src];
                let input: Vec<f32> = match self.storage[*src] {
                    Storage::U8 { scale, zero, stride } => (0..s.h * s.w)
                        .flat_map(|p| (0..s.c).map(move |c| (p, c)))
                        .map(|(p, c)| (ws.u8s[*src][p * stride + c] as f32 - zero as f32) * scale)
                        .collect(),
                    Storage::F32 { stride } => (0..s.h * s.w)
                        .flat_map(|p| (0..s.c).map(move |c| (p, c)))
                        .map(|(p, c)| ws.f32s[*src][p * stride + c])
                        .collect(),
                };
                // one image: a dot product per output (a GEMM call costs more than it computes).
                // The weights (2 MB for ResNet's 512→1000) make it memory-bound: outputs are
                // split over the threads so that each core streams half of them (and keeps
                // its half in its own L2 from one image to the next).
                use rayon::prelude::*;
                let d_in = input.len();
                let dot = |(w, b): (&[f32], &f32)| {
                    let mut acc = [0.0f32; 16];
                    for (wc, xc) in w.chunks(16).zip(input.chunks(16)) {
                        for i in 0..wc.len() {
                            acc[i] += wc[i] * xc[i];
                        }
                    }
                    acc.iter().sum::<f32>() + b
                };
                let mut y: Vec<f32> = if weights.len() >= 1 << 16 {
                    weights.par_chunks_exact(d_in).zip(bias.par_iter()).with_min_len(16).map(dot).collect()
                } else {
                    weights.chunks_exact(d_in).zip(bias).map(dot).collect()
                };
                if let Some(th) = relu {
                    y.iter_mut().for_each(|t| *t = if *t > *th { *t } else { 0.0 });
                }
                ws.f32s[*dst] = y;
            }
        }
    }
}

/// Max or average pooling of a u8 channels-last image (same scale in and out), output rows
/// over the rayon pool; each tap is a run of `cs` contiguous bytes, so the channel loops
/// vectorise. The average counts padding as zeros, as tern's does.
#[allow(clippy::too_many_arguments)]
fn pool_u8(x: &[u8], s: Shape, d: Shape, cs: usize, zero: u8, pool: &Pool, y: &mut [u8]) {
    use rayon::prelude::*;
    let Pool { k, stride, pad, max, .. } = *pool;
    let row_of = |(p, row): (usize, &mut [u8])| {
        let mut sums = vec![0u32; cs];
        for q in 0..d.w {
            let out = &mut row[q * cs..(q + 1) * cs];
            let mut first = true;
            sums.iter_mut().for_each(|v| *v = 0);
            for r in 0..k {
                for t in 0..k {
                    let (ih, iw) = ((p * stride + r) as isize - pad as isize, (q * stride + t) as isize - pad as isize);
                    if ih < 0 || iw < 0 || ih >= s.h as isize || iw >= s.w as isize {
                        sums.iter_mut().for_each(|v| *v += zero as u32);
                        continue;
                    }
                    let tap = &x[(ih as usize * s.w + iw as usize) * cs..][..cs];
                    if max {
                        if first {
                            out.copy_from_slice(tap);
                        } else {
                            out.iter_mut().zip(tap).for_each(|(o, &v)| *o = (*o).max(v));
                        }
                    } else {
                        sums.iter_mut().zip(tap).for_each(|(o, &v)| *o += v as u32);
                    }
                    first = false;
                }
            }
            if !max {
                let kk = (k * k) as f32;
                out.iter_mut().zip(&sums).for_each(|(o, &v)| *o = (v as f32 / kk).round_ties_even().min(255.0) as u8);
            }
        }
    };
    if y.len() * k * k < 1 << 20 {
        y.chunks_mut(d.w * cs).enumerate().for_each(row_of);
    } else {
        y.par_chunks_mut(d.w * cs).enumerate().for_each(row_of);
    }
}

/// The zeros a convolution's kernel could skip, counted on its u8 input: single values,
/// the kernel's unit (4 consecutive channels at one pixel: one `vpdpbusd` broadcast), and
/// whole 4-channel groups that are zero over the entire image.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ConvZeros {
    pub layer: String,
    pub values: u64,
    pub zero_values: u64,
    pub units: u64,
    pub zero_units: u64,
    pub groups: u64,
    pub zero_groups: u64,
}

impl Plan {
    /// Adds the zero counts of every convolution's input for the image last run with `ws`
    /// (one entry per convolution, in order; only inputs with zero point 0 can skip).
    pub fn count_zeros(&self, ws: &Workspace, into: &mut Vec<ConvZeros>) {
        let convs = self.ops.iter().filter_map(|op| match op {
            Op::Conv { src, packed, .. } => Some((*src, packed)),
            _ => None,
        });
        for (i, (src, packed)) in convs.enumerate() {
            if into.len() <= i {
                into.push(ConvZeros { layer: self.ops_label(src, packed), ..Default::default() });
            }
            let Storage::U8 { zero, stride, .. } = self.storage[src] else { continue };
            let s = self.values[src];
            let x = &ws.u8s[src];
            let z = &mut into[i];
            let c4 = s.c.div_ceil(4);
            let mut live = vec![false; c4];
            for p in 0..s.h * s.w {
                let px = &x[p * stride..p * stride + s.c];
                for (g, chunk) in px.chunks(4).enumerate() {
                    let nz = chunk.iter().filter(|&&v| v != zero).count() as u64;
                    z.values += chunk.len() as u64;
                    z.zero_values += chunk.len() as u64 - nz;
                    z.units += 1;
                    z.zero_units += (nz == 0) as u64;
                    live[g] |= nz > 0;
                }
            }
            z.groups += c4 as u64;
            z.zero_groups += live.iter().filter(|&&l| !l).count() as u64;
        }
    }

    fn ops_label(&self, src: usize, packed: &PackedConv) -> String {
        let s = self.values[src];
        let k = packed.shape;
        format!("conv {}x{}/{} {}->{} at {}x{}", k.k, k.k, k.stride, k.c_in, k.c_out, s.h, s.w)
    }
}

/// Whether `TERN_INFER_TRACE` asks for per-operation times (read once per process).
fn tracing() -> bool {
    static TRACE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *TRACE.get_or_init(|| std::env::var_os("TERN_INFER_TRACE").is_some())
}

/// Scratch buffers of [`Plan::run`], reused from image to image.
#[derive(Debug, Default)]
pub struct Workspace {
    u8s: Vec<Vec<u8>>,
    f32s: Vec<Vec<f32>>,
    /// A convolution's zero-point-padded input.
    padded: Vec<u8>,
    /// The input quantised, plane by plane.
    plane: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::{Backend, CpuBackend, Rng, Tensor};
    use tern_train::layer::Ctx;
    use tern_train::ModelConfig;

    fn model(name: &str, in_shape: [usize; 3], ternary: bool, seed: u64) -> Model {
        let cfg = ModelConfig { name: name.into(), in_shape, classes: 10, width: 8, small_input: false, spec: None };
        let mut m = tern_train::models::build(&cfg, &mut Rng::new(seed)).unwrap();
        if ternary {
            m.set_ternary(Some(Default::default()), true, false);
        }
        // BN statistics and affine parameters away from the identity
        let mut rng = Rng::new(seed + 1);
        m.net.visit_leaves(&mut |l| {
            if let Some(bn) = l.as_any_mut().downcast_mut::<BatchNorm>() {
                let c = bn.c;
                let r = |rng: &mut Rng, lo: f32, span: f32| {
                    Tensor::from_vec(&[c], (0..c).map(|_| lo + span * rng.uniform()).collect())
                };
                bn.running_mean = r(&mut rng, -0.2, 0.4);
                bn.running_var = r(&mut rng, 0.5, 1.0);
                bn.gamma.value = r(&mut rng, 0.6, 0.8);
                bn.beta.value = r(&mut rng, -0.1, 0.3);
            }
        });
        m
    }

    fn images(n: usize, s: [usize; 3], rng: &mut Rng) -> Vec<f32> {
        (0..n * s[0] * s[1] * s[2]).map(|_| rng.normal()).collect()
    }

    /// The float plan is the model's own eval forward; the quantised plan is close to it.
    #[test]
    fn plans_of_the_model_zoo_match_the_models_forward() {
        let mut rng = Rng::new(3);
        for (name, shape) in [
            ("vgg-small", [1, 28, 28]),
            ("resnet20", [3, 32, 32]),
            ("lenet5", [1, 28, 28]),
            ("resnet18", [3, 64, 64]),
            ("resnet50", [3, 64, 64]),
        ] {
            for ternary in [false, true] {
                let mut m = model(name, shape, ternary, 5);
                let n = 6;
                let x = images(n, shape, &mut rng);
                let be = CpuBackend;
                let ctx = Ctx::new(&be, false);
                let want = m.forward(&ctx, &Tensor::from_vec(&[n, shape[0], shape[1], shape[2]], x.clone()));
                let want = be.flatten(&want).host_values().into_owned();
                let fp = FloatPlan::of(&mut m).unwrap_or_else(|e| panic!("{name}: {e}"));
                let got = fp.run(&x, n).pop().unwrap();
                let err = rel(&got, &want);
                assert!(err < 1e-4, "{name} ternary {ternary}: float plan off by {err:.2e}");
                let plan = Plan::quantise(&fp, &x, n).unwrap();
                let mut ws = Workspace::default();
                let per = shape.iter().product::<usize>();
                let q: Vec<f32> = (0..n).flat_map(|i| plan.run(&x[i * per..(i + 1) * per], &mut ws)).collect();
                let err = rel(&q, &want);
                eprintln!("{name} ternary {ternary}: u8 plan rel. error {err:.4}");
                assert!(err < 0.06, "{name} ternary {ternary}: u8 plan off by {err:.3}");
                // images shared out over the threads: the same logits, bit for bit
                let xs: Vec<&[f32]> = x.chunks(per).collect();
                let batched: Vec<f32> = plan.run_batch(&xs, &mut Vec::new()).concat();
                assert!(q.iter().zip(&batched).all(|(a, b)| a.to_bits() == b.to_bits()), "{name}: run_batch");
            }
        }
    }

    fn rel(a: &[f32], b: &[f32]) -> f64 {
        assert_eq!(a.len(), b.len());
        let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
        let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
        (num / den.max(1e-30)).sqrt()
    }
}
