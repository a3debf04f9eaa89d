//! The quantised convolution: u8 channels-last activations (one scale and zero point per
//! tensor) times s8 weights (ternary codes, or FP weights quantised per output channel),
//! exact s32 sums, then one fused epilogue per output: zero-point correction, the folded BN
//! (a multiplier and an offset per channel), an optional residual, the thresholded ReLU,
//! and the store as u8 (requantised) or f32.
//!
//! Two implementations compute the same bits: `reference` (plain loops, any CPU) and the
//! AVX-512 VNNI kernel (`vpdpbusd`: 64 u8×s8 multiply-adds per instruction), chosen at run
//! time. The epilogue's float operations happen in the same order in both (no fused
//! multiply-add), so their outputs are identical, not merely close.

use rayon::prelude::*;

/// Output channels per block: one 512-bit register of s32 sums.
pub const LANES: usize = 16;

/// Convolutions smaller than this (multiply-adds, padding included) run on the calling
/// thread alone (measured: vgg-small's 7 M-MAC layers ran 2x faster so).
const SERIAL_MACS: usize = 16 << 20;

/// A convolution's geometry (square kernel, equal stride and padding on both axes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvShape {
    pub c_in: usize,
    pub c_out: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvShape {
    pub fn out_hw(&self, h: usize, w: usize) -> (usize, usize) {
        ((h + 2 * self.pad - self.k) / self.stride + 1, (w + 2 * self.pad - self.k) / self.stride + 1)
    }
    /// Groups of four input channels (the reduction unit of one `vpdpbusd` lane).
    pub fn c4(&self) -> usize {
        self.c_in.div_ceil(4)
    }
    /// Blocks of [`LANES`] output channels.
    pub fn blocks(&self) -> usize {
        self.c_out.div_ceil(LANES)
    }
}

/// Weights laid out for the kernel: `[block][r][s][c4][16 lanes][4 inputs]` s8, zero where
/// a channel is padding; with each output channel's code sum for the zero-point correction.
#[derive(Clone, Debug)]
pub struct PackedConv {
    pub shape: ConvShape,
    pub packed: Vec<i8>,
    /// Σ of the codes of each output channel, `[blocks · 16]`.
    pub code_sums: Vec<i32>,
    /// The codes as given, `[c_out][c_in][k][k]` (the reference reads these).
    pub codes: Vec<i8>,
    /// Block sparsity: block b's non-zero weight units (16 output channels × 4 input
    /// channels at one tap) are `units[unit_starts[b]..unit_starts[b + 1]]`, each coded
    /// `tap << 16 | group`, with their 64 weight bytes at the same index of `unit_weights`.
    pub unit_starts: Vec<usize>,
    pub units: Vec<u32>,
    pub unit_weights: Vec<i8>,
}

impl PackedConv {
    pub fn new(shape: ConvShape, codes: Vec<i8>) -> PackedConv {
        let ConvShape { c_in, c_out, k, .. } = shape;
        assert_eq!(codes.len(), c_out * c_in * k * k, "codes of a {shape:?} convolution");
        let (c4, blocks) = (shape.c4(), shape.blocks());
        let mut packed = vec![0i8; blocks * k * k * c4 * LANES * 4];
        let mut code_sums = vec![0i32; blocks * LANES];
        for o in 0..c_out {
            let (b, lane) = (o / LANES, o % LANES);
            for c in 0..c_in {
                for r in 0..k {
                    for s in 0..k {
                        let v = codes[((o * c_in + c) * k + r) * k + s];
                        let at = ((((b * k + r) * k + s) * c4 + c / 4) * LANES + lane) * 4 + c % 4;
                        packed[at] = v;
                        code_sums[o] += v as i32;
                    }
                }
            }
        }
        let (mut unit_starts, mut units, mut unit_weights) = (vec![0], Vec::new(), Vec::new());
        let unit_bytes = LANES * 4;
        for b in 0..blocks {
            for tap in 0..k * k {
                for g in 0..c4 {
                    let at = ((b * k * k + tap) * c4 + g) * unit_bytes;
                    let unit = &packed[at..at + unit_bytes];
                    if unit.iter().any(|&v| v != 0) {
                        units.push(((tap as u32) << 16) | g as u32);
                        unit_weights.extend_from_slice(unit);
                    }
                }
            }
            unit_starts.push(units.len());
        }
        PackedConv { shape, packed, code_sums, codes, unit_starts, units, unit_weights }
    }

    /// Fraction of the weight units (16 output × 4 input channels at one tap) that are all
    /// zero: the work [`conv_units`] skips.
    pub fn zero_unit_fraction(&self) -> f64 {
        let s = self.shape;
        1.0 - self.units.len() as f64 / (s.blocks() * s.k * s.k * s.c4()).max(1) as f64
    }
}

/// Which kernel runs a convolution (all give the same bits; `Plan::tune` picks by time).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConvKernel {
    /// [`conv`]: every weight, register tiles of several channel blocks.
    Dense,
    /// [`conv_sparse`]: skips all-zero groups of 4 input channels, pixel by pixel.
    SkipZeroInputs,
    /// [`conv_units`]: skips all-zero weight units (block sparsity), one block at a time.
    SkipZeroWeightUnits,
}

impl ConvKernel {
    pub const ALL: [ConvKernel; 3] = [ConvKernel::Dense, ConvKernel::SkipZeroInputs, ConvKernel::SkipZeroWeightUnits];

    pub fn name(self) -> &'static str {
        match self {
            ConvKernel::Dense => "dense",
            ConvKernel::SkipZeroInputs => "skip-zero-inputs",
            ConvKernel::SkipZeroWeightUnits => "skip-zero-weight-units",
        }
    }

    /// Runs the convolution with this kernel.
    pub fn run<'a>(self, x: &U8Image<'a>, pc: &PackedConv, ep: &Epilogue, out: Output, scratch: &'a mut Vec<u8>) {
        match self {
            ConvKernel::Dense => conv(x, pc, ep, out, scratch),
            ConvKernel::SkipZeroInputs => conv_sparse(x, pc, ep, out, scratch),
            ConvKernel::SkipZeroWeightUnits => conv_units(x, pc, ep, out, scratch),
        }
    }
}

/// A u8 channels-last image: `[h][w][stride]`, channels beyond the tensor's own are ignored.
#[derive(Clone, Copy, Debug)]
pub struct U8Image<'a> {
    pub data: &'a [u8],
    pub h: usize,
    pub w: usize,
    pub stride: usize,
    pub zero: u8,
}

/// A residual added before the ReLU: u8 (value = scale · (q − zero)) or f32, channels-last
/// with the output's height and width.
#[derive(Clone, Copy, Debug)]
pub enum Residual<'a> {
    U8 { data: &'a [u8], stride: usize, scale: f32, zero: i32 },
    F32 { data: &'a [f32], stride: usize },
}

/// What happens to each output channel's sum: `v = (acc − zero_in · Σcodes) · mul + add`,
/// `+ residual`, then `v > relu ? v : 0` when a ReLU is fused.
#[derive(Clone, Copy, Debug)]
pub struct Epilogue<'a> {
    /// `[blocks · 16]` each (zero for padding channels).
    pub mul: &'a [f32],
    pub add: &'a [f32],
    pub relu: Option<f32>,
    pub residual: Option<Residual<'a>>,
}

/// Where the outputs go, channels-last with a channel stride of `blocks · 16`.
#[derive(Debug)]
pub enum Output<'a> {
    /// Requantised: q = clamp(round(v · inv_scale) + zero, 0, 255).
    U8 {
        data: &'a mut [u8],
        inv_scale: f32,
        zero: i32,
    },
    F32 {
        data: &'a mut [f32],
    },
}

/// The epilogue of one output value, before the store (shared by both implementations).
#[inline(always)]
fn finish(acc: i32, correction: i32, mul: f32, add: f32, residual: Option<f32>, relu: Option<f32>) -> f32 {
    let a = acc.wrapping_sub(correction) as f32;
    let mut v = a * mul + add;
    if let Some(r) = residual {
        v += r;
    }
    match relu {
        Some(t) if !(v > t) => 0.0,
        _ => v,
    }
}

#[inline(always)]
fn requantise(v: f32, inv_scale: f32, zero: i32) -> u8 {
    let f = (v * inv_scale).clamp(-256.0, 256.0);
    (f.round_ties_even() as i32 + zero).clamp(0, 255) as u8
}

fn residual_at(r: &Residual, pixel: usize, ch: usize) -> f32 {
    match *r {
        Residual::U8 { data, stride, scale, zero } => (data[pixel * stride + ch] as i32 - zero) as f32 * scale,
        Residual::F32 { data, stride } => data[pixel * stride + ch],
    }
}

/// Checks the sizes of a call (a wrong plan is a programmer error: panics with the sizes).
fn check(x: &U8Image, pc: &PackedConv, ep: &Epilogue, out: &Output) -> (usize, usize) {
    let s = pc.shape;
    assert!(x.stride >= s.c4() * 4 && x.data.len() >= x.h * x.w * x.stride, "input {x:?} for {s:?}");
    let (ho, wo) = s.out_hw(x.h, x.w);
    let ks = s.blocks() * LANES;
    assert!(ep.mul.len() >= ks && ep.add.len() >= ks);
    let n = match out {
        Output::U8 { data, .. } => data.len(),
        Output::F32 { data } => data.len(),
    };
    assert_eq!(n, ho * wo * ks, "output of {s:?} on {}x{}", x.h, x.w);
    (ho, wo)
}

/// The input with `pad` pixels of its zero point around it (the kernels never test bounds),
/// in `scratch` (reused between calls); the input itself when there is no padding.
pub fn pad_input<'a>(x: &U8Image<'a>, pad: usize, scratch: &'a mut Vec<u8>) -> &'a [u8] {
    if pad == 0 {
        return &x.data[..x.h * x.w * x.stride];
    }
    let (hp, wp) = (x.h + 2 * pad, x.w + 2 * pad);
    scratch.clear();
    scratch.resize(hp * wp * x.stride, x.zero);
    let row = x.w * x.stride;
    for i in 0..x.h {
        let dst = ((i + pad) * wp + pad) * x.stride;
        scratch[dst..dst + row].copy_from_slice(&x.data[i * row..(i + 1) * row]);
    }
    scratch
}

/// The definition: one output at a time, straight from the `[c_out][c_in][k][k]` codes.
pub fn reference(x: &U8Image, pc: &PackedConv, ep: &Epilogue, out: Output) {
    let (ho, wo) = check(x, pc, ep, &out);
    let s = pc.shape;
    let ks = s.blocks() * LANES;
    let mut scratch = Vec::new();
    let xp = pad_input(x, s.pad, &mut scratch);
    let wp = x.w + 2 * s.pad;
    let zero = x.zero as i32;
    let mut out = out;
    for p in 0..ho {
        for q in 0..wo {
            let pixel = p * wo + q;
            for o in 0..ks {
                let mut acc = 0i32;
                if o < s.c_out {
                    for c in 0..s.c_in {
                        for r in 0..s.k {
                            for t in 0..s.k {
                                let xv = xp[((p * s.stride + r) * wp + q * s.stride + t) * x.stride + c] as i32;
                                acc += xv * pc.codes[((o * s.c_in + c) * s.k + r) * s.k + t] as i32;
                            }
                        }
                    }
                }
                let res = ep.residual.as_ref().map(|r| residual_at(r, pixel, o));
                let v = finish(acc, zero * pc.code_sums[o], ep.mul[o], ep.add[o], res, ep.relu);
                match &mut out {
                    Output::U8 { data, inv_scale, zero } => data[pixel * ks + o] = requantise(v, *inv_scale, *zero),
                    Output::F32 { data } => data[pixel * ks + o] = v,
                }
            }
        }
    }
}

/// `out[i] = clamp(round_half_even(x[i] · inv) + zero, 0, 255)`: quantises one plane of the
/// network's input (AVX-512 where present; the same values either way).
pub fn quantise(x: &[f32], inv: f32, zero: i32, out: &mut [u8]) {
    assert_eq!(x.len(), out.len());
    #[cfg(target_arch = "x86_64")]
    if vnni_available() {
        // SAFETY: AVX-512 F/BW present (checked); equal lengths (asserted).
        unsafe { vnni::quantise(x, inv, zero, out) };
        return;
    }
    for (o, &v) in out.iter_mut().zip(x) {
        *o = requantise(v, inv, zero);
    }
}

/// Which implementation [`conv`] runs on this CPU.
pub fn kernel_name() -> &'static str {
    if vnni_available() {
        "avx512-vnni"
    } else {
        "portable"
    }
}

fn vnni_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::env::var_os("TERN_INFER_PORTABLE").is_none()
            && is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The convolution with the fastest kernel this CPU has, output rows split over the rayon
/// pool; `scratch` holds the padded input between calls. Same bits as [`reference`].
pub fn conv<'a>(x: &U8Image<'a>, pc: &PackedConv, ep: &Epilogue, out: Output, scratch: &'a mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if vnni_available() {
        let (ho, wo) = check(x, pc, ep, &out);
        let xp = pad_input(x, pc.shape.pad, scratch);
        // SAFETY: the CPU has AVX-512 F/BW/VNNI (checked above); `check` validated the sizes
        // the kernel's pointer arithmetic relies on, and the padded input covers every tap.
        unsafe { vnni::conv(xp, x.w + 2 * pc.shape.pad, x.stride, x.zero, pc, ep, out, ho, wo) };
        return;
    }
    let _ = scratch;
    portable(x, pc, ep, out)
}

/// The same convolution skipping every (pixel, group of 4 input channels) whose bytes are
/// all zero — exact, because the input's zero point is 0 (post-ReLU values). It pays where
/// such units are common (trained nets with sparse activations; `tern infer --zeros`
/// counts them); `Plan::tune` measures it against [`conv`] per layer. Falls back to
/// [`conv`] without the VNNI kernel or with a non-zero zero point.
pub fn conv_sparse<'a>(x: &U8Image<'a>, pc: &PackedConv, ep: &Epilogue, out: Output, scratch: &'a mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if vnni_available() && x.zero == 0 {
        let (ho, wo) = check(x, pc, ep, &out);
        let xp = pad_input(x, pc.shape.pad, scratch);
        // SAFETY: as in `conv`.
        unsafe { vnni::conv_sparse(xp, x.w + 2 * pc.shape.pad, x.stride, pc, ep, out, ho, wo) };
        return;
    }
    conv(x, pc, ep, out, scratch)
}

/// The same convolution visiting only the non-zero weight units of each block of 16
/// output channels (block-sparse ternary weights, `tern train --block-sparsity`): a unit
/// that is all zero costs nothing. Exact for any zero point (a zero weight multiplies the
/// padding's zero point by nothing, as in the correction). Falls back to [`conv`] without
/// the VNNI kernel.
pub fn conv_units<'a>(x: &U8Image<'a>, pc: &PackedConv, ep: &Epilogue, out: Output, scratch: &'a mut Vec<u8>) {
    #[cfg(target_arch = "x86_64")]
    if vnni_available() {
        let (ho, wo) = check(x, pc, ep, &out);
        let xp = pad_input(x, pc.shape.pad, scratch);
        // SAFETY: as in `conv`.
        unsafe { vnni::conv_units(xp, x.w + 2 * pc.shape.pad, x.stride, x.zero, pc, ep, out, ho, wo) };
        return;
    }
    conv(x, pc, ep, out, scratch)
}

/// Rows in parallel with the reference's arithmetic (any CPU).
fn portable(x: &U8Image, pc: &PackedConv, ep: &Epilogue, out: Output) {
    let (ho, wo) = check(x, pc, ep, &out);
    let _ = ho;
    let s = pc.shape;
    let ks = s.blocks() * LANES;
    let mut scratch = Vec::new();
    let xp = pad_input(x, s.pad, &mut scratch);
    let wp = x.w + 2 * s.pad;
    let zero = x.zero as i32;
    let row = |p: usize, store: &mut dyn FnMut(usize, usize, f32)| {
        let mut acc = vec![0i32; ks];
        for q in 0..wo {
            acc.iter_mut().for_each(|a| *a = 0);
            for o in 0..s.c_out {
                let mut a = 0i32;
                let w = &pc.codes[o * s.c_in * s.k * s.k..(o + 1) * s.c_in * s.k * s.k];
                for c in 0..s.c_in {
                    for r in 0..s.k {
                        let base = ((p * s.stride + r) * wp + q * s.stride) * x.stride + c;
                        for t in 0..s.k {
                            a += xp[base + t * x.stride] as i32 * w[(c * s.k + r) * s.k + t] as i32;
                        }
                    }
                }
                acc[o] = a;
            }
            let pixel = p * wo + q;
            for o in 0..ks {
                let res = ep.residual.as_ref().map(|r| residual_at(r, pixel, o));
                store(q, o, finish(acc[o], zero * pc.code_sums[o], ep.mul[o], ep.add[o], res, ep.relu));
            }
        }
    };
    match out {
        Output::U8 { data, inv_scale, zero } => data.par_chunks_mut(wo * ks).enumerate().for_each(|(p, y)| {
            row(p, &mut |q, o, v| y[q * ks + o] = requantise(v, inv_scale, zero));
        }),
        Output::F32 { data } => data.par_chunks_mut(wo * ks).enumerate().for_each(|(p, y)| {
            row(p, &mut |q, o, v| y[q * ks + o] = v);
        }),
    }
}

#[cfg(target_arch = "x86_64")]
mod vnni {
    //! The AVX-512 VNNI kernel: a tile of CB blocks of 16 output channels × PX output pixels
    //! of one row keeps CB·PX s32 accumulators in registers; per (r, s, group of 4 input
    //! channels) it loads CB weight vectors and broadcasts each pixel's 4 input bytes.

    use super::*;
    use std::arch::x86_64::*;

    /// Output pixels per tile for CB channel blocks: CB·PX accumulators + CB weights + one
    /// broadcast stay within the 32 vector registers.
    const fn main_px(cb: usize) -> usize {
        match cb {
            1 => 24,
            2 => 12,
            3 => 8,
            _ => 6,
        }
    }

    impl Geometry {
        fn new(s: &ConvShape, wp: usize, cs: usize, group: usize) -> Geometry {
            let block_bytes = s.k * s.k * s.c4() * LANES * 4;
            Geometry { row_bytes: wp * cs, cs, stride: s.stride, k: s.k, c4: s.c4(), block_bytes, group }
        }
    }

    /// The output's pointers (one of them null) and its requantisation (inverse scale, zero).
    fn out_pointers(out: Output) -> (SendPtr<u8>, SendPtr<f32>, (f32, i32)) {
        match out {
            Output::U8 { data, inv_scale, zero } => {
                (SendPtr(data.as_mut_ptr()), SendPtr(std::ptr::null_mut()), (inv_scale, zero))
            }
            Output::F32 { data } => (SendPtr(std::ptr::null_mut()), SendPtr(data.as_mut_ptr()), (1.0, 0)),
        }
    }

    /// Runs `tasks` tasks on the rayon pool, or on this thread when the convolution's `macs`
    /// are too few for waking the others to pay.
    fn run_tasks(tasks: usize, macs: usize, task: impl Fn(usize) + Sync + Send) {
        if macs < SERIAL_MACS {
            (0..tasks).for_each(task);
        } else {
            (0..tasks).into_par_iter().for_each(task);
        }
    }

    /// Estimated cycles of one output row per (r, s, channel group) step with tasks of
    /// `group` blocks (3: tiles of 7 pixels): a tile of CB × PX issues CB·PX `vpdpbusd` and
    /// CB + PX loads, two of each per cycle. Chooses the tiling of each convolution.
    fn row_cycles(blocks: usize, wo: usize, group: usize) -> f64 {
        let mut total = 0.0;
        let mut b0 = 0;
        while b0 < blocks {
            let cb = (blocks - b0).min(group);
            let main = if group == 3 { 7 } else { main_px(cb) };
            let mut q = 0;
            while q < wo {
                let left = wo - q;
                let px = [main, 4, 2, 1].into_iter().find(|&p| left >= p).unwrap_or(1);
                total += f64::max((cb * px) as f64, (cb + px) as f64) / 2.0;
                q += px;
            }
            b0 += cb;
        }
        total
    }

    /// Pointers and sizes shared by every tile of a call.
    struct Geometry {
        /// Bytes from one padded input row to the next.
        row_bytes: usize,
        /// Channel stride of the input.
        cs: usize,
        stride: usize,
        k: usize,
        c4: usize,
        /// Bytes of one block's packed weights.
        block_bytes: usize,
        /// Channel blocks per task: 4 (tiles of 6 pixels), or 3 when the output width is a
        /// multiple of 7 (tiles of 7: ResNets' 112, 56, 28, 14 and 7 leave no remainder).
        group: usize,
    }

    /// Sums of a CB × PX tile whose first output pixel reads the padded input at `x`.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be present; `x` and `w` must cover every tap the geometry
    /// reaches for PX pixels and CB blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn sums<const CB: usize, const PX: usize>(x: *const u8, w: *const i8, g: &Geometry) -> [[__m512i; PX]; CB] {
        let mut acc = [[_mm512_setzero_si512(); PX]; CB];
        let pixel_step = g.stride * g.cs;
        for r in 0..g.k {
            for s in 0..g.k {
                // SAFETY (all pointer arithmetic below): inside the padded input and the
                // packed weights, as the caller guarantees.
                let xrow = unsafe { x.add(r * g.row_bytes + s * g.cs) };
                let mut wp = unsafe { w.add((r * g.k + s) * g.c4 * LANES * 4) };
                for grp in 0..g.c4 {
                    let mut wv = [_mm512_setzero_si512(); CB];
                    for (cb, v) in wv.iter_mut().enumerate() {
                        *v = unsafe { _mm512_loadu_si512(wp.add(cb * g.block_bytes) as *const _) };
                    }
                    for px in 0..PX {
                        let at = unsafe { xrow.add(px * pixel_step + grp * 4) } as *const i32;
                        let xv = _mm512_set1_epi32(unsafe { at.read_unaligned() });
                        for cb in 0..CB {
                            acc[cb][px] = _mm512_dpbusd_epi32(acc[cb][px], xv, wv[cb]);
                        }
                    }
                    wp = unsafe { wp.add(LANES * 4) };
                }
            }
        }
        acc
    }

    /// Per-call constants of the epilogue, as vectors where they are per channel.
    struct Finish<'a> {
        ep: &'a Epilogue<'a>,
        corrections: Vec<i32>,
        ks: usize,
        wo: usize,
    }

    impl<'a> Finish<'a> {
        /// The epilogue of `pc` on an input with zero point `zero`, `wo` outputs per row.
        fn new(ep: &'a Epilogue<'a>, pc: &PackedConv, zero: u8, wo: usize) -> Finish<'a> {
            let corrections = pc.code_sums.iter().map(|&c| c * zero as i32).collect();
            Finish { ep, corrections, ks: pc.shape.blocks() * LANES, wo }
        }
    }

    /// The epilogue and store of a tile (same operations, same order as `super::finish`);
    /// `y_u8` (or `y_f32` when it is null) points at output row `p`.
    ///
    /// # Safety
    /// AVX-512 F/BW must be present; the tile's outputs and residuals must be in bounds.
    #[target_feature(enable = "avx512f,avx512bw")]
    unsafe fn store<const CB: usize, const PX: usize>(
        acc: &[[__m512i; PX]; CB],
        f: &Finish,
        block0: usize,
        p: usize,
        q0: usize,
        y_u8: *mut u8,
        y_f32: *mut f32,
        quant: (f32, i32),
    ) {
        let ep = f.ep;
        // a ReLU at a threshold ≥ 0 leaves v ≥ 0; with inv > 0 and zero in 0..=255 the u8
        // store needs no lower clamps (checked per call: the same for every tile)
        let non_negative = ep.relu.is_some_and(|t| t >= 0.0) && quant.0 > 0.0 && (0..=255).contains(&quant.1);
        for cb in 0..CB {
            let ch = (block0 + cb) * LANES;
            // SAFETY: the per-channel arrays hold blocks·16 values (checked by `check`).
            let (mul, add, corr) = unsafe {
                (
                    _mm512_loadu_ps(ep.mul.as_ptr().add(ch)),
                    _mm512_loadu_ps(ep.add.as_ptr().add(ch)),
                    _mm512_loadu_si512(f.corrections.as_ptr().add(ch) as *const _),
                )
            };
            for px in 0..PX {
                let pixel = p * f.wo + q0 + px;
                let a = _mm512_cvtepi32_ps(_mm512_sub_epi32(acc[cb][px], corr));
                let mut v = _mm512_add_ps(_mm512_mul_ps(a, mul), add);
                match ep.residual {
                    Some(Residual::U8 { data, stride, scale, zero }) => {
                        // SAFETY: 16 bytes of the residual's pixel (its stride is a multiple of 16).
                        let b = unsafe { _mm_loadu_si128(data.as_ptr().add(pixel * stride + ch) as *const _) };
                        let i = _mm512_sub_epi32(_mm512_cvtepu8_epi32(b), _mm512_set1_epi32(zero));
                        v = _mm512_add_ps(v, _mm512_mul_ps(_mm512_cvtepi32_ps(i), _mm512_set1_ps(scale)));
                    }
                    Some(Residual::F32 { data, stride }) => {
                        // SAFETY: as above, 16 floats.
                        v = _mm512_add_ps(v, unsafe { _mm512_loadu_ps(data.as_ptr().add(pixel * stride + ch)) });
                    }
                    None => {}
                }
                if let Some(t) = ep.relu {
                    let keep = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, _mm512_set1_ps(t));
                    v = _mm512_maskz_mov_ps(keep, v);
                }
                // the output pointers are this row's
                let at = (q0 + px) * f.ks + ch;
                if y_u8.is_null() {
                    // SAFETY: 16 floats of this pixel's output.
                    unsafe { _mm512_storeu_ps(y_f32.add(at), v) };
                } else {
                    let (inv, zero) = quant;
                    let s = _mm512_mul_ps(v, _mm512_set1_ps(inv));
                    let q = if non_negative {
                        // v ≥ 0 after the ReLU and inv > 0: the lower clamps cannot bite, and
                        // the unsigned saturating narrowing is the upper one (same bits)
                        let s = _mm512_min_ps(s, _mm512_set1_ps(256.0));
                        _mm512_cvtusepi32_epi8(_mm512_add_epi32(_mm512_cvtps_epi32(s), _mm512_set1_epi32(zero)))
                    } else {
                        let s = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(-256.0)), _mm512_set1_ps(256.0));
                        let i = _mm512_add_epi32(_mm512_cvtps_epi32(s), _mm512_set1_epi32(zero));
                        let i = _mm512_min_epi32(_mm512_max_epi32(i, _mm512_setzero_si512()), _mm512_set1_epi32(255));
                        _mm512_cvtepi32_epi8(i)
                    };
                    // SAFETY: 16 bytes of this pixel's output.
                    unsafe { _mm_storeu_si128(y_u8.add(at) as *mut _, q) };
                }
            }
        }
    }

    /// One output row's channel blocks `first..blocks` (at most 4), every pixel tile.
    ///
    /// # Safety
    /// As for [`conv`]; `y_*` point at this row's outputs.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn row(
        xp: &[u8],
        pc: &PackedConv,
        g: &Geometry,
        f: &Finish,
        p: usize,
        first: usize,
        blocks: usize,
        y_u8: *mut u8,
        y_f32: *mut f32,
        quant: (f32, i32),
    ) {
        let x_row = p * g.stride * g.row_bytes;
        let mut b0 = first;
        let sevens = g.group == 3;
        while b0 < blocks {
            let cb = (blocks - b0).min(g.group);
            let w = pc.packed[b0 * g.block_bytes..].as_ptr();
            macro_rules! tiles {
                ($cb:literal, $main:expr) => {{
                    const MAIN: usize = $main;
                    let mut q = 0;
                    while q < f.wo {
                        let left = f.wo - q;
                        // SAFETY: pixel q's taps start at x_row + q·stride·cs, inside xp.
                        let x = unsafe { xp.as_ptr().add(x_row + q * g.stride * g.cs) };
                        macro_rules! tile {
                            ($px:expr) => {{
                                // SAFETY: forwarded from the caller.
                                unsafe {
                                    let acc = sums::<$cb, { $px }>(x, w, g);
                                    store::<$cb, { $px }>(&acc, f, b0, p, q, y_u8, y_f32, quant);
                                }
                                q += $px;
                            }};
                        }
                        if left >= MAIN {
                            tile!(MAIN)
                        } else if left >= 4 {
                            tile!(4)
                        } else if left >= 2 {
                            tile!(2)
                        } else {
                            tile!(1)
                        }
                    }
                }};
            }
            match (cb, sevens) {
                (3, true) => tiles!(3, 7),
                (2, true) => tiles!(2, 7),
                (1, true) => tiles!(1, 7),
                (4, _) => tiles!(4, main_px(4)),
                (3, _) => tiles!(3, main_px(3)),
                (2, _) => tiles!(2, main_px(2)),
                _ => tiles!(1, main_px(1)),
            }
            b0 += cb;
        }
    }

    /// The whole convolution, rows over the rayon pool.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be present; `xp` is the input padded by the shape's `pad`
    /// (`wp` pixels per row, channel stride `cs` ≥ 4·c4), and `out` holds ho·wo·blocks·16.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn conv(
        xp: &[u8],
        wp: usize,
        cs: usize,
        zero: u8,
        pc: &PackedConv,
        ep: &Epilogue,
        out: Output,
        ho: usize,
        wo: usize,
    ) {
        let s = pc.shape;
        let ks = s.blocks() * LANES;
        let sevens = wo.is_multiple_of(7) && row_cycles(s.blocks(), wo, 3) < row_cycles(s.blocks(), wo, 4);
        let g = Geometry::new(&s, wp, cs, if sevens { 3 } else { 4 });
        let f = Finish::new(ep, pc, zero, wo);
        // Tasks are (output row, group of up to 4 channel blocks): small late layers (7x7
        // outputs) have too few rows to share between threads by rows alone.
        let groups = s.blocks().div_ceil(g.group);
        let (y_u8, y_f32, quant) = out_pointers(out);
        let task = |t: usize| {
            let (p, grp) = (t / groups, t % groups);
            let (row_u8, row_f32) = (y_u8.offset(p * wo * ks), y_f32.offset(p * wo * ks));
            let (first, end) = (grp * g.group, (grp * g.group + g.group).min(s.blocks()));
            // SAFETY: forwarded from the caller; each task writes only its row's outputs of
            // its own channel blocks, so no two tasks touch the same bytes.
            unsafe { row(xp, pc, &g, &f, p, first, end, row_u8, row_f32, quant) }
        };
        run_tasks(ho * groups, ho * wo * ks * s.c4() * 4 * s.k * s.k, task);
    }

    /// Sums of PX output pixels of one channel block over its non-zero weight units only;
    /// `tap_bytes[t]` is tap t's offset in the padded input.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be present; `x` and the units' weights must cover every tap and
    /// group the units name, for PX pixels `pixel_step` bytes apart.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn unit_sums<const PX: usize>(
        x: *const u8,
        units: &[u32],
        weights: *const i8,
        tap_bytes: &[usize],
        pixel_step: usize,
    ) -> [[__m512i; PX]; 1] {
        let mut acc = [_mm512_setzero_si512(); PX];
        for (i, &u) in units.iter().enumerate() {
            // SAFETY (pointer arithmetic): inside the unit weights and the padded input.
            let wv = unsafe { _mm512_loadu_si512(weights.add(i * LANES * 4) as *const _) };
            let xu = unsafe { x.add(tap_bytes[(u >> 16) as usize] + (u & 0xffff) as usize * 4) };
            for (px, a) in acc.iter_mut().enumerate() {
                let xv = _mm512_set1_epi32(unsafe { (xu.add(px * pixel_step) as *const i32).read_unaligned() });
                *a = _mm512_dpbusd_epi32(*a, xv, wv);
            }
        }
        [acc]
    }

    /// The block-sparse convolution: tasks are (output row, channel block).
    ///
    /// # Safety
    /// As for [`conv`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn conv_units(
        xp: &[u8],
        wp: usize,
        cs: usize,
        zero: u8,
        pc: &PackedConv,
        ep: &Epilogue,
        out: Output,
        ho: usize,
        wo: usize,
    ) {
        let s = pc.shape;
        let ks = s.blocks() * LANES;
        let g = Geometry::new(&s, wp, cs, 1);
        let tap_bytes: Vec<usize> = (0..s.k * s.k).map(|t| (t / s.k) * g.row_bytes + (t % s.k) * cs).collect();
        let f = Finish::new(ep, pc, zero, wo);
        let (y_u8, y_f32, quant) = out_pointers(out);
        let pixel_step = s.stride * cs;
        let blocks = s.blocks();
        let task = |t: usize| {
            let (p, b) = (t / blocks, t % blocks);
            let (row_u8, row_f32) = (y_u8.offset(p * wo * ks), y_f32.offset(p * wo * ks));
            let (a, e) = (pc.unit_starts[b], pc.unit_starts[b + 1]);
            let (units, weights) = (&pc.units[a..e], pc.unit_weights[a * LANES * 4..].as_ptr());
            let x_row = p * s.stride * g.row_bytes;
            let mut q = 0;
            while q < wo {
                // SAFETY: pixel q's taps start here, inside xp (the caller's guarantee).
                let x = unsafe { xp.as_ptr().add(x_row + q * pixel_step) };
                macro_rules! tile {
                    ($px:literal) => {{
                        // SAFETY: forwarded from the caller; the task writes its own row and
                        // block only.
                        unsafe {
                            let acc = unit_sums::<$px>(x, units, weights, &tap_bytes, pixel_step);
                            store::<1, $px>(&acc, &f, b, p, q, row_u8, row_f32, quant);
                        }
                        q += $px;
                    }};
                }
                // at most 14 pixels: 14 sums + 14 broadcasts + the weights fit the 32
                // registers (with 24, LLVM hoists the broadcasts and spills the sums)
                match wo - q {
                    14.. => tile!(14),
                    12..=13 => tile!(12),
                    8..=11 => tile!(8),
                    7 => tile!(7),
                    4..=6 => tile!(4),
                    2..=3 => tile!(2),
                    _ => tile!(1),
                }
            }
        };
        run_tasks(ho * blocks, ho * wo * LANES * pc.units.len() * 4, task);
    }

    /// The non-zero groups of 4 bytes of every pixel of the padded input, as compressed rows:
    /// pixel i's groups are `groups[starts[i]..starts[i + 1]]`.
    struct NonZero {
        starts: Vec<u32>,
        groups: Vec<u16>,
    }

    fn nonzero_groups(xp: &[u8], pixels: usize, cs: usize, c4: usize) -> NonZero {
        let mut starts = Vec::with_capacity(pixels + 1);
        let mut groups = Vec::new();
        starts.push(0);
        for p in 0..pixels {
            let px = &xp[p * cs..p * cs + 4 * c4];
            for (g, b) in px.chunks_exact(4).enumerate() {
                if u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) != 0 {
                    groups.push(g as u16);
                }
            }
            starts.push(groups.len() as u32);
        }
        NonZero { starts, groups }
    }

    /// One output pixel's sums over CB blocks, visiting only non-zero input groups.
    ///
    /// # Safety
    /// AVX-512 F/BW/VNNI must be present; `xp`/`w` cover the pixel's taps and CB blocks.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    unsafe fn sparse_sums<const CB: usize>(
        xp: *const u8,
        w: *const i8,
        nz: &NonZero,
        g: &Geometry,
        first_pixel: usize,
        wp: usize,
    ) -> [[__m512i; 1]; CB] {
        let mut acc = [[_mm512_setzero_si512(); 1]; CB];
        for r in 0..g.k {
            for s in 0..g.k {
                let pix = first_pixel + r * wp + s;
                let (a, b) = (nz.starts[pix] as usize, nz.starts[pix + 1] as usize);
                let tap_w = (r * g.k + s) * g.c4;
                for &grp in &nz.groups[a..b] {
                    let grp = grp as usize;
                    // SAFETY: inside the padded input and the packed weights (caller).
                    let xv =
                        _mm512_set1_epi32(unsafe { (xp.add(pix * g.cs + grp * 4) as *const i32).read_unaligned() });
                    let wg = unsafe { w.add((tap_w + grp) * LANES * 4) };
                    for cb in 0..CB {
                        let wv = unsafe { _mm512_loadu_si512(wg.add(cb * g.block_bytes) as *const _) };
                        acc[cb][0] = _mm512_dpbusd_epi32(acc[cb][0], xv, wv);
                    }
                }
            }
        }
        acc
    }

    /// The zero-skipping convolution (input zero point 0).
    ///
    /// # Safety
    /// As for [`conv`].
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn conv_sparse(
        xp: &[u8],
        wp: usize,
        cs: usize,
        pc: &PackedConv,
        ep: &Epilogue,
        out: Output,
        ho: usize,
        wo: usize,
    ) {
        let s = pc.shape;
        let ks = s.blocks() * LANES;
        let g = Geometry::new(&s, wp, cs, 8);
        let hp = xp.len() / (wp * cs);
        let nz = nonzero_groups(xp, hp * wp, cs, s.c4());
        let f = Finish::new(ep, pc, 0, wo);
        let groups = s.blocks().div_ceil(g.group);
        let (y_u8, y_f32, quant) = out_pointers(out);
        let task = |t: usize| {
            let (p, grp) = (t / groups, t % groups);
            let (row_u8, row_f32) = (y_u8.offset(p * wo * ks), y_f32.offset(p * wo * ks));
            let (b0, end) = (grp * g.group, (grp * g.group + g.group).min(s.blocks()));
            let w = pc.packed[b0 * g.block_bytes..].as_ptr();
            for q in 0..wo {
                let first_pixel = p * s.stride * wp + q * s.stride;
                macro_rules! go {
                    ($cb:literal) => {
                        // SAFETY: forwarded from the caller; the task writes its own row and
                        // blocks only.
                        unsafe {
                            let acc = sparse_sums::<$cb>(xp.as_ptr(), w, &nz, &g, first_pixel, wp);
                            store::<$cb, 1>(&acc, &f, b0, p, q, row_u8, row_f32, quant);
                        }
                    };
                }
                match end - b0 {
                    8 => go!(8),
                    7 => go!(7),
                    6 => go!(6),
                    5 => go!(5),
                    4 => go!(4),
                    3 => go!(3),
                    2 => go!(2),
                    _ => go!(1),
                }
            }
        };
        run_tasks(ho * groups, ho * wo * ks * s.c4() * 4 * s.k * s.k, task);
    }

    /// [`super::quantise`] 16 values at a time (as `store`'s requantisation).
    ///
    /// # Safety
    /// AVX-512 F/BW must be present; `x` and `out` have the same length.
    #[target_feature(enable = "avx512f,avx512bw")]
    pub unsafe fn quantise(x: &[f32], inv: f32, zero: i32, out: &mut [u8]) {
        let n = x.len() / 16 * 16;
        let (vi, vz) = (_mm512_set1_ps(inv), _mm512_set1_epi32(zero));
        for i in (0..n).step_by(16) {
            // SAFETY: i + 16 ≤ n ≤ len of both.
            let v = unsafe { _mm512_loadu_ps(x.as_ptr().add(i)) };
            let s = _mm512_mul_ps(v, vi);
            let s = _mm512_min_ps(_mm512_max_ps(s, _mm512_set1_ps(-256.0)), _mm512_set1_ps(256.0));
            let q = _mm512_add_epi32(_mm512_cvtps_epi32(s), vz);
            let q = _mm512_min_epi32(_mm512_max_epi32(q, _mm512_setzero_si512()), _mm512_set1_epi32(255));
            // SAFETY: as above.
            unsafe { _mm_storeu_si128(out.as_mut_ptr().add(i) as *mut _, _mm512_cvtepi32_epi8(q)) };
        }
        for i in n..x.len() {
            out[i] = requantise(x[i], inv, zero);
        }
    }

    /// An output pointer shared by the tasks of one call (they write disjoint elements).
    #[derive(Clone, Copy)]
    struct SendPtr<T>(*mut T);
    // SAFETY: the tasks of `conv` write disjoint elements through it, and the call outlives them.
    unsafe impl<T> Send for SendPtr<T> {}
    // SAFETY: as above.
    unsafe impl<T> Sync for SendPtr<T> {}
    impl<T> SendPtr<T> {
        fn offset(self, n: usize) -> *mut T {
            if self.0.is_null() {
                self.0
            } else {
                self.0.wrapping_add(n)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::Rng;

    fn random_case(
        rng: &mut Rng,
        shape: ConvShape,
        h: usize,
        w: usize,
        ternary: bool,
    ) -> (Vec<u8>, usize, u8, PackedConv) {
        let stride = shape.c_in.div_ceil(4) * 4 + 4 * rng.below(2); // spare channels too
        let zero = if rng.uniform() < 0.5 { 0 } else { rng.below(256) as u8 };
        let mut x: Vec<u8> =
            (0..h * w * stride).map(|_| if rng.uniform() < 0.4 { zero } else { rng.below(256) as u8 }).collect();
        // whole zero groups of 4 channels, the units the zero-skipping kernel skips
        for unit in x.chunks_mut(4) {
            if rng.uniform() < 0.5 {
                unit.fill(zero);
            }
        }
        let n = shape.c_out * shape.c_in * shape.k * shape.k;
        let mut codes: Vec<i8> = (0..n)
            .map(|_| if ternary { rng.below(3) as i8 - 1 } else { (rng.below(255) as i32 - 127) as i8 })
            .collect();
        // whole zero weight units (16 outputs x 4 inputs at a tap), the block-sparse kernel's skip
        let taps = shape.k * shape.k;
        let units = shape.blocks() * shape.c4() * taps;
        let zeroed: Vec<bool> = (0..units).map(|_| rng.uniform() < 0.4).collect();
        for (i, v) in codes.iter_mut().enumerate() {
            let (o, c, t) = (i / (shape.c_in * taps), i / taps % shape.c_in, i % taps);
            if zeroed[(o / LANES * shape.c4() + c / 4) * taps + t] {
                *v = 0;
            }
        }
        (x, stride, zero, PackedConv::new(shape, codes))
    }

    #[test]
    fn every_kernel_gives_the_references_bits_on_awkward_shapes() {
        let mut rng = Rng::new(17);
        let shapes = [
            (ConvShape { c_in: 3, c_out: 16, k: 3, stride: 1, pad: 1 }, 9, 11),
            (ConvShape { c_in: 5, c_out: 20, k: 3, stride: 2, pad: 1 }, 13, 7),
            (ConvShape { c_in: 3, c_out: 64, k: 7, stride: 2, pad: 3 }, 23, 29),
            (ConvShape { c_in: 64, c_out: 70, k: 1, stride: 2, pad: 0 }, 8, 8),
            (ConvShape { c_in: 17, c_out: 33, k: 5, stride: 1, pad: 0 }, 9, 30),
            (ConvShape { c_in: 32, c_out: 128, k: 3, stride: 1, pad: 1 }, 5, 27),
            (ConvShape { c_in: 1, c_out: 1, k: 3, stride: 3, pad: 2 }, 4, 4),
        ];
        for (i, &(shape, h, w)) in shapes.iter().enumerate() {
            for ternary in [true, false] {
                let (x, stride, zero, pc) = random_case(&mut rng, shape, h, w, ternary);
                let img = U8Image { data: &x, h, w, stride, zero };
                let ks = shape.blocks() * LANES;
                let mut mul: Vec<f32> = (0..ks).map(|_| rng.uniform() * 0.02).collect();
                let add: Vec<f32> = (0..ks).map(|_| rng.normal()).collect();
                mul[ks - 1] = 0.0;
                let (ho, wo) = shape.out_hw(h, w);
                let res_u8: Vec<u8> = (0..ho * wo * ks).map(|_| rng.below(256) as u8).collect();
                let res_f32: Vec<f32> = (0..ho * wo * ks).map(|_| rng.normal()).collect();
                for case in 0..4 {
                    let residual = match case {
                        1 => Some(Residual::U8 { data: &res_u8, stride: ks, scale: 0.03, zero: 7 }),
                        2 => Some(Residual::F32 { data: &res_f32, stride: ks }),
                        _ => None,
                    };
                    let relu = (case != 3).then_some(if case == 2 { 0.05 } else { 0.0 });
                    let ep = Epilogue { mul: &mul, add: &add, relu, residual };
                    let what = format!("shape {i} {shape:?} ternary {ternary} case {case}");
                    let (mut a, mut b) = (vec![0u8; ho * wo * ks], vec![1u8; ho * wo * ks]);
                    reference(&img, &pc, &ep, Output::U8 { data: &mut a, inv_scale: 9.0, zero: 3 });
                    conv(&img, &pc, &ep, Output::U8 { data: &mut b, inv_scale: 9.0, zero: 3 }, &mut Vec::new());
                    assert_eq!(a, b, "u8 {what} ({})", kernel_name());
                    assert!(a.iter().any(|&v| v != 0 && v != 255), "a degenerate test: {what}");
                    portable(&img, &pc, &ep, Output::U8 { data: &mut b, inv_scale: 9.0, zero: 3 });
                    assert_eq!(a, b, "u8 portable {what}");
                    b.fill(1);
                    conv_sparse(&img, &pc, &ep, Output::U8 { data: &mut b, inv_scale: 9.0, zero: 3 }, &mut Vec::new());
                    assert_eq!(a, b, "u8 zero-skipping {what} (zero point {})", img.zero);
                    b.fill(1);
                    conv_units(&img, &pc, &ep, Output::U8 { data: &mut b, inv_scale: 9.0, zero: 3 }, &mut Vec::new());
                    assert_eq!(a, b, "u8 block-sparse {what} ({:.2} zero units)", pc.zero_unit_fraction());
                    let (mut a, mut b) = (vec![0f32; ho * wo * ks], vec![1f32; ho * wo * ks]);
                    reference(&img, &pc, &ep, Output::F32 { data: &mut a });
                    conv(&img, &pc, &ep, Output::F32 { data: &mut b }, &mut Vec::new());
                    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "f32 {what}");
                    b.fill(1.0);
                    conv_units(&img, &pc, &ep, Output::F32 { data: &mut b }, &mut Vec::new());
                    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "f32 block-sparse {what}");
                }
            }
        }
    }

    #[test]
    fn unit_lists_hold_exactly_the_non_zero_units() {
        let mut rng = Rng::new(4);
        let shape = ConvShape { c_in: 9, c_out: 20, k: 3, stride: 1, pad: 1 };
        let (_, _, _, pc) = random_case(&mut rng, shape, 4, 4, true);
        let taps = 9;
        let mut nonzero = 0;
        for b in 0..shape.blocks() {
            let listed = &pc.units[pc.unit_starts[b]..pc.unit_starts[b + 1]];
            for t in 0..taps {
                for g in 0..shape.c4() {
                    let any = (b * LANES..(b * LANES + LANES).min(shape.c_out)).any(|o| {
                        (g * 4..(g * 4 + 4).min(shape.c_in)).any(|c| pc.codes[(o * shape.c_in + c) * taps + t] != 0)
                    });
                    assert_eq!(listed.contains(&(((t as u32) << 16) | g as u32)), any, "block {b} tap {t} group {g}");
                    nonzero += any as usize;
                }
            }
        }
        assert!(nonzero > 0 && nonzero < shape.blocks() * taps * shape.c4(), "a degenerate case");
        assert_eq!(pc.unit_weights.len(), nonzero * LANES * 4);
        let expected = 1.0 - nonzero as f64 / (shape.blocks() * taps * shape.c4()) as f64;
        assert!((pc.zero_unit_fraction() - expected).abs() < 1e-12);
    }

    #[test]
    fn quantising_the_input_agrees_with_the_scalar_rule() {
        let mut rng = Rng::new(8);
        let x: Vec<f32> =
            (0..1001).map(|i| if i % 7 == 0 { (i as f32) * 0.5 - 3.0 } else { rng.normal() * 3.0 }).collect();
        let mut fast = vec![0u8; x.len()];
        quantise(&x, 9.5, 17, &mut fast);
        let slow: Vec<u8> = x.iter().map(|&v| requantise(v, 9.5, 17)).collect();
        assert_eq!(fast, slow);
    }

    #[test]
    fn the_sums_are_the_real_convolution_of_the_dequantised_values() {
        // one channel, a known answer: 3x3 all-ones codes over a ramp, zero point 10
        let shape = ConvShape { c_in: 1, c_out: 1, k: 3, stride: 1, pad: 1 };
        let x: Vec<u8> = (0..16).flat_map(|v| [10 + v as u8, 0, 0, 0]).collect();
        let pc = PackedConv::new(shape, vec![1; 9]);
        let (mul, add) = (vec![1.0; 16], vec![0.0; 16]);
        let ep = Epilogue { mul: &mul, add: &add, relu: None, residual: None };
        let mut y = vec![0f32; 16 * 16];
        conv(
            &U8Image { data: &x, h: 4, w: 4, stride: 4, zero: 10 },
            &pc,
            &ep,
            Output::F32 { data: &mut y },
            &mut Vec::new(),
        );
        // real values 0..15 on a 4x4 grid, zero padding: the centre output (1,1) sums 0,1,2,4,5,6,8,9,10
        assert_eq!(y[(4 + 1) * 16], 45.0);
        assert_eq!(y[0], 10.0); // 0 + 1 + 4 + 5
    }
}

#[cfg(test)]
mod speed {
    use super::*;

    /// `cargo test --release -p tern-infer -- --ignored --nocapture speed`: ResNet-18's 3x3
    /// layers, ms per call and GMAC/s of the dense kernel, then the block-sparse kernel at 0,
    /// 50 and 75 % zero weight units (its time against the dense one).
    #[test]
    #[ignore]
    fn speed_of_resnet18_layers() {
        // the best of 7 runs of 10 calls (the machine is shared)
        let time = |f: &mut dyn FnMut()| {
            f();
            (0..7)
                .map(|_| {
                    let t = std::time::Instant::now();
                    (0..10).for_each(|_| f());
                    t.elapsed().as_secs_f64() / 10.0
                })
                .fold(f64::INFINITY, f64::min)
        };
        for (c, hw) in [(64usize, 56usize), (128, 28), (256, 14), (512, 7), (64, 32), (128, 16)] {
            let shape = ConvShape { c_in: c, c_out: c, k: 3, stride: 1, pad: 1 };
            let x = vec![3u8; hw * hw * c];
            let (mul, add) = (vec![0.01; c], vec![0.0; c]);
            let ep = Epilogue { mul: &mul, add: &add, relu: Some(0.0), residual: None };
            let mut y = vec![0u8; hw * hw * c];
            let img = U8Image { data: &x, h: hw, w: hw, stride: c, zero: 0 };
            let mut scratch = Vec::new();
            let pc = PackedConv::new(shape, vec![1; c * c * 9]);
            let dense =
                time(&mut || conv(&img, &pc, &ep, Output::U8 { data: &mut y, inv_scale: 1.0, zero: 0 }, &mut scratch));
            let macs = (hw * hw * c * c * 9) as f64;
            print!("{c}x{hw}: dense {:.3} ms, {:.1} GMAC/s ({});", dense * 1e3, macs / dense / 1e9, kernel_name());
            for zero in [0.0, 0.5, 0.75] {
                let mask = tern_core::quant::unit_mask(
                    &(0..c * c * 9).map(|i| ((i * 7919) % 1000) as f32).collect::<Vec<_>>(),
                    c,
                    c,
                    9,
                    zero,
                );
                let pc = PackedConv::new(shape, mask.iter().map(|&m| m as i8).collect());
                let t = time(&mut || {
                    conv_units(&img, &pc, &ep, Output::U8 { data: &mut y, inv_scale: 1.0, zero: 0 }, &mut scratch)
                });
                print!(" {:.0} % zero units {:.3} ms ({:.2}x dense);", zero * 100.0, t * 1e3, dense / t);
            }
            println!();
        }
    }
}
