//! Direct AVX-512 convolution for layers whose output channels come in multiples of 16:
//! one 16-lane vector holds 16 output channels, so every input value is broadcast once per
//! kernel tap and multiplied by a vector of weights, with no im2col and no packing of the
//! input. im2col + GEMM re-reads and re-packs every input value 9 times per 3x3 layer and
//! reuses each packed value only `c_out` times, which left 16–64-channel layers (ResNet-20,
//! VGG-small) at 30–40 GFLOP/s; this kernel keeps the FMA units busy instead.
//!
//! - forward: `y[k, oh, ow] = Σ x_pad[c, oh·st + r, ow·st + s] · w[k, c, r, s]`, a row of up to
//!   `OWB` output positions x 16 channels in registers;
//! - input gradient of a stride-1 layer: the same kernel on the output gradient with the
//!   weights flipped and transposed (a full correlation), so no col2im;
//! - weight gradient: 16 output channels per vector, the output gradient transposed to
//!   `[oh, ow, 16]` once per image, accumulators for 8 input channels x `k_w` taps.
//!
//! `conv.rs` dispatches here when the CPU has AVX-512 and the shapes fit ([`fits`]); the
//! im2col + GEMM path and the reference twin stay for everything else and for the tests.

#[cfg(target_arch = "x86_64")]
use super::simd::lanes;
use crate::geometry::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output positions held in registers per block (16 accumulators of 32 vector registers).
const OWB: usize = 16;
/// Input channels per weight-gradient register block (x up to 3 taps = 24 accumulators).
const CB: usize = 8;

/// Whether the direct kernels handle `c_out` output channels with `k_w` taps per row.
pub fn fits(c_out: usize, k_w: usize) -> bool {
    c_out.is_multiple_of(16) && k_w <= 3 && super::sgemm512::available()
}

/// A zero-padded copy of one image, `[c, h + 2p, w + 2p]`, reused image after image: the
/// borders are zeroed only when the shape changes, since each image overwrites exactly the
/// interior (per image, a memset of the whole buffer and a memmove call per row cost as much
/// as a thin layer's arithmetic).
#[derive(Default)]
pub struct PaddedImage {
    pub data: Vec<f32>,
    /// (c, h, w, p) of the current layout.
    shape: (usize, usize, usize, usize),
}

impl PaddedImage {
    /// Copies `x: [c, h, w]` into the interior, zeroing the borders if the shape changed.
    pub fn fill(&mut self, x: &[f32], c: usize, h: usize, w: usize, p: usize) -> &[f32] {
        let (hp, wp) = (h + 2 * p, w + 2 * p);
        assert!(x.len() >= c * h * w);
        if self.shape != (c, h, w, p) || self.data.len() != c * hp * wp {
            self.data.clear();
            self.data.resize(c * hp * wp, 0.0);
            self.shape = (c, h, w, p);
        }
        for ci in 0..c {
            for i in 0..h {
                let dst = &mut self.data[(ci * hp + i + p) * wp + p..][..w];
                let src = &x[(ci * h + i) * w..][..w];
                copy_row(src, dst);
            }
        }
        &self.data
    }
}

/// `dst.copy_from_slice(src)` for the short rows of a padded image, without a library call
/// per row.
fn copy_row(src: &[f32], dst: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if src.len() <= 64 && super::sgemm512::available() {
        // SAFETY: the CPU has AVX-512F; masked accesses stay inside both slices.
        unsafe { copy_row_avx512(src, dst) };
        return;
    }
    dst.copy_from_slice(src);
}

/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `src.len() <= 64` and
/// `dst.len() >= src.len()` (the masked loads and stores stay inside both).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn copy_row_avx512(src: &[f32], dst: &mut [f32]) {
    let n = src.len().min(dst.len());
    for j in (0..n).step_by(16) {
        let m = lanes((n - j).min(16));
        // SAFETY: lanes past n are masked off.
        unsafe { _mm512_mask_storeu_ps(dst.as_mut_ptr().add(j), m, _mm512_maskz_loadu_ps(m, src.as_ptr().add(j))) };
    }
}

/// Weights `[k, c, r, s]` regrouped as `[k/16][c][r][s][16]` (one vector per tap).
pub fn pack_weights(w: &[f32], k: usize, crs: usize) -> Vec<f32> {
    let mut out = vec![0.0; k * crs];
    for kk in 0..k {
        let (kb, l) = (kk / 16, kk % 16);
        for t in 0..crs {
            out[(kb * crs + t) * 16 + l] = w[kk * crs + t];
        }
    }
    out
}

/// Weights for the input gradient of a stride-1 conv as a forward conv:
/// `w'[c, k, R-1-r, S-1-s] = w[k, c, r, s]` (c becomes the output channel).
pub fn transpose_flip(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    let (rr, ss) = (g.k_h, g.k_w);
    let mut t = vec![0.0; w.len()];
    for k in 0..g.c_out {
        for c in 0..g.c_in {
            for r in 0..rr {
                for s in 0..ss {
                    t[((c * g.c_out + k) * rr + (rr - 1 - r)) * ss + (ss - 1 - s)] =
                        w[((k * g.c_in + c) * rr + r) * ss + s];
                }
            }
        }
    }
    t
}

/// [`transpose_flip`] packed for [`forward_image`].
pub fn pack_weights_transposed_flipped(w: &[f32], g: &ConvGeometry) -> Vec<f32> {
    pack_weights(&transpose_flip(w, g), g.c_in, g.c_out * g.k_h * g.k_w)
}

/// One image of the forward pass: `xp` is the zero-padded input `[c_in, h + 2·pad, w + 2·pad]`,
/// `w16` the packed weights, `y: [c_out, h_out, w_out]` (overwritten; bias added if given).
pub fn forward_image(xp: &[f32], w16: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    assert!(fits(g.c_out, g.k_w));
    assert!(bias.is_none_or(|b| b.len() == g.c_out), "bias: expected {} values", g.c_out);
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    assert!(xp.len() >= g.c_in * hp * wp && w16.len() >= g.weight_len() && y.len() >= g.c_out * g.pq());
    // SAFETY: AVX-512 is present (fits); the asserts bound every index the kernel reaches.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        forward_avx512(xp, w16, bias, g, y)
    }
}

/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); the slices have the sizes `forward_image`
/// asserts (padded input, packed weights, output of `g`'s shape).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_avx512(xp: &[f32], w16: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    // The kernel width as a compile-time constant (0: read at run time) unrolls the tap loop
    // of the common 3x3 and 1x1 layers.
    // SAFETY: same contract as this function.
    unsafe {
        match g.k_w {
            3 => forward_kw::<3>(xp, w16, bias, g, y),
            1 => forward_kw::<1>(xp, w16, bias, g, y),
            _ => forward_kw::<0>(xp, w16, bias, g, y),
        }
    }
}

/// Evaluates `$call` with the constant `$w` set to the block width `$n` (a run-time value,
/// one of the listed ones): a fixed width keeps the accumulators in registers.
macro_rules! by_width {
    ($n:expr, [$($v:literal),*], $w:ident => $call:expr) => {
        match $n {
            $($v => {
                const $w: usize = $v;
                $call
            })*
            n => unreachable!("block width {n}"),
        }
    };
}

/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); as [`forward_avx512`], with `KW == g.k_w`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn forward_kw<const KW: usize>(xp: &[f32], w16: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    // Input channels per pass over the output blocks: the 16-channel weight slice of a pass
    // (c·taps vectors) stays in L1 across blocks; later passes add to the partial sums.
    let chunk = (L1_WEIGHT_FLOATS / (g.k_h * g.k_w * 16)).max(1);
    // narrow outputs (8 or 4 wide): 16 consecutive positions span 16/wo whole rows
    let narrow = wo < 16 && 16 % wo == 0 && ho % (16 / wo) == 0;
    // wide outputs with output channels in 32s: two 16-channel slices share every input
    // broadcast (12 positions x 2 slices = 24 accumulators: 14 loads per 24 FMAs instead of
    // 17 per 16)
    let paired = !narrow && g.c_out.is_multiple_of(32);
    let kstep = if paired { 2 } else { 1 };
    let passes = (0..g.c_out / 16).step_by(kstep).flat_map(|kb| (0..g.c_in).step_by(chunk).map(move |c0| (kb, c0)));
    // SAFETY: AVX-512 is present (the caller's contract) and every block (kb, oh, ow0) lies inside the
    // asserted slices, which is what `Block::run` and `run_rows` require.
    unsafe {
        for (kb, c0) in passes {
            let (c1, first) = ((c0 + chunk).min(g.c_in), c0 == 0);
            if narrow {
                for oh in (0..ho).step_by(16 / wo) {
                    let blk = Block { xp, w16, bias, g, kb, oh, ow0: 0, c0, c1, first };
                    by_width!(wo, [8, 4, 2, 1], W => blk.run_rows::<W, KW>(y));
                }
                continue;
            }
            let width = if paired { PAIR_OWB } else { OWB };
            for oh in 0..ho {
                let mut ow0 = 0;
                while ow0 < wo {
                    let nb = width.min(wo - ow0);
                    let blk = Block { xp, w16, bias, g, kb, oh, ow0, c0, c1, first };
                    if paired {
                        by_width!(nb, [12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], B => blk.run::<B, KW, 2>(y));
                    } else {
                        by_width!(nb, [16, 15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1], B => blk.run::<B, KW, 1>(y));
                    }
                    ow0 += nb;
                }
            }
        }
    }
}

/// One block of the forward pass: 16·S output channels from `16·kb`, input channels
/// `c0..c1`, output row `oh` from column `ow0` (or whole rows from `oh`, `run_rows`).
#[cfg(target_arch = "x86_64")]
struct Block<'a> {
    xp: &'a [f32],
    w16: &'a [f32],
    bias: Option<&'a [f32]>,
    g: &'a ConvGeometry,
    kb: usize,
    oh: usize,
    ow0: usize,
    c0: usize,
    c1: usize,
    /// The first pass over the input channels starts from the bias, later ones from y.
    first: bool,
}

/// Output positions per block when two channel slices are paired.
const PAIR_OWB: usize = 12;

/// Weight floats per pass that stay in L1 (24 KiB of the 48 KiB).
const L1_WEIGHT_FLOATS: usize = 6144;

#[cfg(target_arch = "x86_64")]
impl Block<'_> {
    /// The starting accumulators of channel slice `kb` for the B positions at `out` (channel
    /// 16·kb, stride pq between channels): the bias, or the partial sums an earlier pass left.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `out` points at channel 16·kb of the output
    /// with B readable positions in each of the 16 channel rows `pq` apart.
    #[target_feature(enable = "avx512f")]
    unsafe fn start<const B: usize>(&self, kb: usize, out: *const f32, pq: usize) -> [__m512; B] {
        // SAFETY: the caller's block lies inside y (16 channels x B positions at stride pq).
        unsafe {
            if self.first {
                let bv = self.bias.map_or(_mm512_setzero_ps(), |b| _mm512_loadu_ps(b.as_ptr().add(kb * 16)));
                return [bv; B];
            }
            let mut acc = [_mm512_setzero_ps(); B];
            acc.copy_from_slice(&load_transposed(out, pq, B)[..B]);
            acc
        }
    }

    /// Positions `ow0..ow0 + B` of row `oh`, S channel slices from kb (S ≤ 2 keeps the
    /// accumulators in registers).
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `self` was built over slices of the sizes
    /// `forward_image` asserts and the positions `ow0..ow0 + B` of row `oh` lie in the output.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const B: usize, const KW: usize, const S: usize>(&self, y: &mut [f32]) {
        let g = self.g;
        let kw = if KW == 0 { g.k_w } else { KW };
        let (hp, wp, st) = (g.h + 2 * g.pad, g.w + 2 * g.pad, g.stride);
        let (crs, pq, taps) = (g.crs(), g.pq(), g.k_h * g.k_w);
        // SAFETY: x reads stay in row (c, oh·st + r) of the padded image at columns
        // ≤ (ow0 + B - 1)·st + k_w - 1 < wp; weight reads inside slices kb..kb + S of w16
        // (the caller checks they exist); y accesses at channel·pq + oh·wo + ow0 + i < pq.
        unsafe {
            let xptr = self.xp.as_ptr();
            let wk = self.w16.as_ptr().add(self.kb * crs * 16);
            let out = y.as_mut_ptr().add(self.kb * 16 * pq + self.oh * g.w_out() + self.ow0);
            let mut acc = [[_mm512_setzero_ps(); B]; S];
            for (j, a) in acc.iter_mut().enumerate() {
                *a = self.start::<B>(self.kb + j, out.add(j * 16 * pq), pq);
            }
            for c in self.c0..self.c1 {
                for r in 0..g.k_h {
                    let row = xptr.add((c * hp + self.oh * st + r) * wp + self.ow0 * st);
                    let t = (c * taps + r * g.k_w) * 16;
                    for s in 0..kw {
                        let mut wv = [_mm512_setzero_ps(); S];
                        for (j, w) in wv.iter_mut().enumerate() {
                            *w = _mm512_loadu_ps(wk.add(j * crs * 16 + t + s * 16));
                        }
                        let rs = row.add(s);
                        for i in 0..B {
                            let xb = _mm512_set1_ps(*rs.add(i * st));
                            for j in 0..S {
                                acc[j][i] = _mm512_fmadd_ps(xb, wv[j], acc[j][i]);
                            }
                        }
                    }
                }
            }
            for (j, a) in acc.iter().enumerate() {
                store_block(a, out.add(j * 16 * pq), pq);
            }
        }
    }

    /// 16 output positions that are `16 / W` whole rows of width `W` (from row `oh`), one
    /// channel slice.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); as `run`, with 16 / W whole rows from `oh`
    /// inside the output.
    #[target_feature(enable = "avx512f")]
    unsafe fn run_rows<const W: usize, const KW: usize>(&self, y: &mut [f32]) {
        let g = self.g;
        let kw = if KW == 0 { g.k_w } else { KW };
        let (hp, wp, st) = (g.h + 2 * g.pad, g.w + 2 * g.pad, g.stride);
        let (crs, pq, taps) = (g.crs(), g.pq(), g.k_h * g.k_w);
        let rows = 16 / W;
        // SAFETY: as in `run`, for the rows oh..oh + 16/W (the caller checks they exist).
        unsafe {
            let xptr = self.xp.as_ptr();
            let wk = self.w16.as_ptr().add(self.kb * crs * 16);
            let out = y.as_mut_ptr().add(self.kb * 16 * pq + self.oh * W);
            let mut acc = self.start::<16>(self.kb, out, pq);
            for c in self.c0..self.c1 {
                for r in 0..g.k_h {
                    let row0 = xptr.add((c * hp + self.oh * st + r) * wp);
                    let wt = wk.add((c * taps + r * g.k_w) * 16);
                    for s in 0..kw {
                        let wv = _mm512_loadu_ps(wt.add(s * 16));
                        for rr in 0..rows {
                            let rs = row0.add(rr * st * wp + s);
                            for cc in 0..W {
                                let a = &mut acc[rr * W + cc];
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*rs.add(cc * st)), wv, *a);
                            }
                        }
                    }
                }
            }
            store_block(&acc, out, pq);
        }
    }
}

/// 16 rows of `n ≤ 16` values at `src + l·stride` (l = 0..16), transposed: vector i holds
/// value i of every row (lanes past `n` read as zero).
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `src + l·stride .. + n` is readable for every
/// l in 0..16, and n ≤ 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load_transposed(src: *const f32, stride: usize, n: usize) -> [__m512; 16] {
    let mut rows = [_mm512_setzero_ps(); 16];
    for (l, r) in rows.iter_mut().enumerate() {
        // SAFETY: the caller guarantees n values at each of the 16 rows.
        *r = unsafe { _mm512_maskz_loadu_ps(lanes(n), src.add(l * stride)) };
    }
    transpose16(&rows)
}

/// Stores B positions x 16 channels (`acc[i]` = position i) as 16 channel rows of B values
/// at `out + l·pq`: a register transpose, then one (masked) contiguous store per channel;
/// 16 scatters of 16 lanes cost more than a 16-channel block's arithmetic.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `out + l·pq .. + B` is writable for every
/// l in 0..16, and B ≤ 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_block<const B: usize>(acc: &[__m512; B], out: *mut f32, pq: usize) {
    let mut rows = [_mm512_setzero_ps(); 16];
    rows[..B].copy_from_slice(acc);
    for (l, v) in transpose16(&rows).iter().enumerate() {
        // SAFETY: the caller's block lies inside y (16 channels x B positions at stride pq).
        unsafe { _mm512_mask_storeu_ps(out.add(l * pq), lanes(B), *v) };
    }
}

/// The 16x16 transpose of `r` (row i = vector i): returns column l as vector l.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
pub(crate) fn transpose16(r: &[__m512; 16]) -> [__m512; 16] {
    let mut t = [_mm512_setzero_ps(); 16];
    let mut s = [_mm512_setzero_ps(); 16];
    // within each 128-bit lane: 32-bit then 64-bit interleaves make 4x4 blocks;
    // s[4i + q], lane j = column 4j + q of rows 4i..4i+3
    for i in 0..8 {
        t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
    }
    for i in 0..4 {
        let pd = |v: __m512| _mm512_castps_pd(v);
        let (a, b, c, d) = (pd(t[4 * i]), pd(t[4 * i + 1]), pd(t[4 * i + 2]), pd(t[4 * i + 3]));
        s[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
        s[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
        s[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
        s[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
    }
    // across lanes: column 4j + q = [s[q] lane j, s[4+q] lane j, s[8+q] lane j, s[12+q] lane j]
    let mut out = [_mm512_setzero_ps(); 16];
    for q in 0..4 {
        let u0 = _mm512_shuffle_f32x4::<0x44>(s[q], s[4 + q]);
        let u1 = _mm512_shuffle_f32x4::<0xEE>(s[q], s[4 + q]);
        let u2 = _mm512_shuffle_f32x4::<0x44>(s[8 + q], s[12 + q]);
        let u3 = _mm512_shuffle_f32x4::<0xEE>(s[8 + q], s[12 + q]);
        out[q] = _mm512_shuffle_f32x4::<0x88>(u0, u2);
        out[4 + q] = _mm512_shuffle_f32x4::<0xDD>(u0, u2);
        out[8 + q] = _mm512_shuffle_f32x4::<0x88>(u1, u3);
        out[12 + q] = _mm512_shuffle_f32x4::<0xDD>(u1, u3);
    }
    out
}

/// Weight gradient of one image, accumulated: `dw16[k/16][c][r][s][16] += Σ dy · x_pad`.
/// `xp` is the padded input, `dy: [c_out, h_out, w_out]`, `dyt` scratch.
pub fn weight_grad_image(xp: &[f32], dy: &[f32], g: &ConvGeometry, dw16: &mut [f32], dyt: &mut Vec<f32>) {
    assert!(fits(g.c_out, g.k_w));
    let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
    assert!(xp.len() >= g.c_in * hp * wp && dy.len() >= g.c_out * g.pq() && dw16.len() >= g.weight_len());
    dyt.resize(g.pq() * 32, 0.0);
    // SAFETY: AVX-512 is present (fits); the asserts bound every index.
    #[cfg(target_arch = "x86_64")]
    unsafe {
        weight_grad_avx512(xp, dy, g, dw16, dyt)
    }
}

/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); the slices have the sizes `weight_grad_image`
/// asserts.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_avx512(xp: &[f32], dy: &[f32], g: &ConvGeometry, dw16: &mut [f32], dyt: &mut [f32]) {
    // output channels in 32s: two 16-channel slices share every input broadcast
    let slices = if g.c_out.is_multiple_of(32) { 2 } else { 1 };
    // SAFETY: AVX-512 is present (the caller's contract) and every block lies inside the asserted
    // slices, which is what `WgradBlock::run` requires.
    unsafe { by_width!(slices, [1, 2], S => weight_grad_slices::<S>(xp, dy, g, dw16, dyt)) }
}

/// The weight gradient, S channel slices at a time.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); as [`weight_grad_avx512`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn weight_grad_slices<const S: usize>(
    xp: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    dw16: &mut [f32],
    dyt: &mut [f32],
) {
    let pq = g.pq();
    // accumulators: S slices x CBN input channels x k_w taps ≤ 24 registers
    let cb_max = (24 / (S * g.k_w)).min(CB);
    // SAFETY: dyt holds S·pq vectors; dy reads stay inside slices kb..kb + S.
    unsafe {
        for kb in (0..g.c_out / 16).step_by(S) {
            // dy of the S slices, position-major: per position S vectors
            for j in 0..S {
                let dk = dy.as_ptr().add((kb + j) * 16 * pq);
                for p in (0..pq).step_by(16) {
                    let n = 16.min(pq - p);
                    for (i, v) in load_transposed(dk.add(p), pq, n).iter().take(n).enumerate() {
                        _mm512_storeu_ps(dyt.as_mut_ptr().add(((p + i) * S + j) * 16), *v);
                    }
                }
            }
            let mut c0 = 0;
            while c0 < g.c_in {
                let cb = cb_max.min(g.c_in - c0);
                let w = WgradBlock { xp, dyt, g, kb, c0 };
                by_width!(g.k_w, [1, 2, 3], KW => by_width!(cb, [1, 2, 3, 4, 5, 6, 7, 8], CBN => w.run::<CBN, KW, S>(dw16)));
                c0 += cb;
            }
        }
    }
}

/// Weight-gradient accumulators of input channels `c0..c0 + CBN`, all taps of one kernel row
/// at a time, output channels of slices `kb..kb + S`.
#[cfg(target_arch = "x86_64")]
struct WgradBlock<'a> {
    xp: &'a [f32],
    dyt: &'a [f32],
    g: &'a ConvGeometry,
    kb: usize,
    c0: usize,
}

#[cfg(target_arch = "x86_64")]
impl WgradBlock<'_> {
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `self` was built over slices of the sizes
    /// `weight_grad_image` asserts, and `dw16` holds the packed weight gradient.
    #[target_feature(enable = "avx512f")]
    unsafe fn run<const CBN: usize, const KW: usize, const S: usize>(&self, dw16: &mut [f32]) {
        let g = self.g;
        let (hp, wp) = (g.h + 2 * g.pad, g.w + 2 * g.pad);
        let (ho, wo, st) = (g.h_out(), g.w_out(), g.stride);
        let (crs, taps) = (g.crs(), g.k_h * g.k_w);
        // SAFETY: x reads stay inside rows (c, oh·st + r) of the padded image at columns
        // ≤ (wo-1)·st + KW - 1 < wp; dyt holds S·ho·wo vectors; dw16 writes inside slices
        // kb..kb + S.
        unsafe {
            let xptr = self.xp.as_ptr();
            let dw = dw16.as_mut_ptr().add(self.kb * crs * 16);
            for r in 0..g.k_h {
                let mut acc = [[[_mm512_setzero_ps(); KW]; CBN]; S];
                for oh in 0..ho {
                    let dyrow = self.dyt.as_ptr().add(oh * wo * S * 16);
                    let xrow = xptr.add((self.c0 * hp + oh * st + r) * wp);
                    for ow in 0..wo {
                        let mut dv = [_mm512_setzero_ps(); S];
                        for (j, d) in dv.iter_mut().enumerate() {
                            *d = _mm512_loadu_ps(dyrow.add((ow * S + j) * 16));
                        }
                        let xo = xrow.add(ow * st);
                        for cc in 0..CBN {
                            let xc = xo.add(cc * hp * wp);
                            for s in 0..KW {
                                let xb = _mm512_set1_ps(*xc.add(s));
                                for j in 0..S {
                                    acc[j][cc][s] = _mm512_fmadd_ps(xb, dv[j], acc[j][cc][s]);
                                }
                            }
                        }
                    }
                }
                for (j, slice) in acc.iter().enumerate() {
                    for (cc, a) in slice.iter().enumerate() {
                        for (s, v) in a.iter().enumerate() {
                            let at = dw.add(j * crs * 16 + ((self.c0 + cc) * taps + r * g.k_w + s) * 16);
                            _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *v));
                        }
                    }
                }
            }
        }
    }
}

/// `[k/16][crs][16]` back to `[k][crs]`.
pub fn unpack_weights(w16: &[f32], k: usize, crs: usize, out: &mut [f32]) {
    for kk in 0..k {
        let (kb, l) = (kk / 16, kk % 16);
        for t in 0..crs {
            out[kk * crs + t] = w16[(kb * crs + t) * 16 + l];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    fn geometries() -> Vec<ConvGeometry> {
        vec![
            ConvGeometry::new(2, 3, 9, 11, 16, 3, 1, 1).unwrap(),
            ConvGeometry::new(1, 5, 30, 30, 32, 3, 1, 1).unwrap(),
            ConvGeometry::new(2, 9, 13, 7, 16, 3, 2, 1).unwrap(),
            ConvGeometry::new(1, 17, 8, 8, 48, 1, 2, 0).unwrap(),
            ConvGeometry::new(1, 4, 6, 50, 16, 2, 1, 0).unwrap(),
            ConvGeometry::new(1, 16, 5, 5, 16, 3, 1, 2).unwrap(),
            ConvGeometry::new(2, 16, 8, 8, 32, 3, 1, 1).unwrap(),
            // more input channels than one L1 pass holds: partial sums through y
            ConvGeometry::new(1, 50, 8, 8, 16, 3, 1, 1).unwrap(),
            ConvGeometry::new(1, 45, 6, 20, 16, 3, 1, 1).unwrap(),
            ConvGeometry::new(1, 400, 4, 5, 16, 1, 1, 0).unwrap(),
            // 32 output channels: paired slices, also over several passes and with stride 2
            ConvGeometry::new(1, 50, 7, 14, 32, 3, 1, 1).unwrap(),
            ConvGeometry::new(1, 20, 11, 11, 64, 3, 2, 1).unwrap(),
            ConvGeometry::new(1, 7, 8, 8, 16, 3, 2, 1).unwrap(),
            ConvGeometry::new(1, 16, 4, 4, 16, 3, 1, 1).unwrap(),
        ]
    }

    #[test]
    fn padded_image_keeps_zero_borders_across_shapes() {
        let x: Vec<f32> = (1..=40).map(|v| v as f32).collect();
        let mut xp = PaddedImage::default();
        // another layout of the same length first: its interior must not leak into the borders
        xp.fill(&x, 1, 6, 3, 1); // [1, 8, 5] = 40 values
        xp.fill(&x, 2, 2, 3, 1); // [2, 4, 5]
        let want_plane0 = [0., 0., 0., 0., 0., 0., 1., 2., 3., 0., 0., 4., 5., 6., 0., 0., 0., 0., 0., 0.];
        assert_eq!(&xp.data[..20], &want_plane0);
        assert_eq!(xp.data[26..29], [7.0, 8.0, 9.0]);
        assert_eq!(xp.data[31..34], [10.0, 11.0, 12.0]);
        // rows longer than one vector, and than the fast path
        for w in [17, 70] {
            let x: Vec<f32> = (0..3 * w).map(|v| v as f32 + 1.0).collect();
            let d = xp.fill(&x, 1, 3, w, 2).to_vec();
            let wp = w + 4;
            for i in 0..7 {
                for j in 0..wp {
                    let inside = (2..5).contains(&i) && (2..w + 2).contains(&j);
                    let want = if inside { x[(i - 2) * w + j - 2] } else { 0.0 };
                    assert_eq!(d[i * wp + j], want, "w {w} ({i}, {j})");
                }
            }
        }
    }

    #[test]
    fn direct_kernels_agree_with_reference() {
        if !super::super::sgemm512::available() {
            eprintln!("skipped: this CPU has no AVX-512 (the im2col + GEMM path is tested by conv.rs)");
            return;
        }
        let mut rng = Rng::new(21);
        for g in geometries() {
            let x = rand_vec(g.in_len(), &mut rng);
            let w = rand_vec(g.weight_len(), &mut rng);
            let b = rand_vec(g.c_out, &mut rng);
            let dy = rand_vec(g.out_len(), &mut rng);
            let (chw, kpq) = (g.c_in * g.h * g.w, g.c_out * g.pq());
            // forward
            let w16 = pack_weights(&w, g.c_out, g.crs());
            let mut y = vec![7.0; g.out_len()]; // stale values must be overwritten
            let mut xp = PaddedImage::default();
            for (xn, yn) in x.chunks(chw).zip(y.chunks_mut(kpq)) {
                forward_image(xp.fill(xn, g.c_in, g.h, g.w, g.pad), &w16, Some(&b), &g, yn);
            }
            let mut y_ref = vec![0.0; g.out_len()];
            reference::conv2d_forward(&x, &w, Some(&b), &g, &mut y_ref);
            assert_close(&y, &y_ref, 1e-4, &format!("direct forward {g:?}"));
            // weight gradient
            let mut dw16 = vec![0.0; g.weight_len()];
            let mut dyt = Vec::new();
            for (xn, dyn_) in x.chunks(chw).zip(dy.chunks(kpq)) {
                weight_grad_image(xp.fill(xn, g.c_in, g.h, g.w, g.pad), dyn_, &g, &mut dw16, &mut dyt);
            }
            let mut dw = vec![0.0; g.weight_len()];
            unpack_weights(&dw16, g.c_out, g.crs(), &mut dw);
            let mut dw_ref = vec![0.0; g.weight_len()];
            reference::conv2d_backward_weight(&x, &dy, &g, &mut dw_ref, None);
            assert_close(&dw, &dw_ref, 1e-3, &format!("direct weight grad {g:?}"));
            // input gradient of stride-1 layers whose c_in is a multiple of 16
            if g.stride == 1 && g.c_in % 16 == 0 && g.pad < g.k_h {
                let gt =
                    ConvGeometry::new(g.n, g.c_out, g.h_out(), g.w_out(), g.c_in, g.k_h, 1, g.k_h - 1 - g.pad).unwrap();
                let wt = pack_weights_transposed_flipped(&w, &g);
                let mut dx = vec![7.0; g.in_len()];
                for (dyn_, dxn) in dy.chunks(kpq).zip(dx.chunks_mut(chw)) {
                    forward_image(xp.fill(dyn_, g.c_out, g.h_out(), g.w_out(), gt.pad), &wt, None, &gt, dxn);
                }
                let mut dx_ref = vec![0.0; g.in_len()];
                reference::conv2d_backward_input(&dy, &w, &g, &mut dx_ref);
                assert_close(&dx, &dx_ref, 1e-4, &format!("direct input grad {g:?}"));
            }
        }
    }
}
