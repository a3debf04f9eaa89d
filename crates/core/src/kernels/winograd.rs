//! Winograd F(2x2, 3x3) convolution for 3x3, stride-1, pad-1 layers (the bulk of VGG and
//! ResNet): each 2x2 output tile takes 16 multiplies per channel pair instead of 36, i.e.
//! 2.25x fewer than the direct kernel. Used for the forward pass and for the stride-1 input
//! gradient (a forward with flipped, transposed weights).
//!
//! Y = Aᵀ[(G g Gᵀ) ⊙ (Bᵀ d B)]A per tile (Lavin & Gray 2016). Per group of images:
//! 1. input transform, 16 tiles per vector: `V[ξ][c][t]` straight from the image, the pad-1
//!    border masked off (the 4x4 patch columns of 16 tiles come from two loads and an
//!    even/odd permute);
//! 2. per block of 48 tiles and per ξ, a product over channels,
//!    `M[ξ][k][t] = Σ_c U[ξ][c][k]·V[ξ][c][t]`, in register blocks of 8 output channels x 48
//!    tiles (8 broadcasts + 3 loads per 24 FMAs), the block's slice of V staying in L1 across
//!    all output channels;
//! 3. output transform of the block (all ξ, all channels), 2x2 outputs per tile interleaved
//!    back into rows with masked stores.
//!
//! Rounding differs from the direct kernel (the transforms add and subtract inputs); the
//! agreement test bounds it.

#[cfg(target_arch = "x86_64")]
use super::simd::{even_odd, interleave, lanes, lanes32};
use crate::geometry::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Output channels per register block.
const KB: usize = 8;
/// Tile vectors per register block (16 tiles each).
const NV: usize = 3;
/// Floats of `V` one image group should take (512 KiB: it stays in L2 while every block of
/// tiles reads from it).
const V_BUDGET_FLOATS: usize = 1 << 17;

/// Whether the Winograd kernel handles geometry `g`: 3x3, stride 1, pad 1, output channels
/// in 8s and at least 16 input channels (fewer make the transforms cost more than they save).
/// Odd sides get a partial last tile; large images go in bands of tile rows.
pub fn fits(g: &ConvGeometry) -> bool {
    g.k_h == 3
        && g.k_w == 3
        && g.stride == 1
        && g.pad == 1
        && g.c_out.is_multiple_of(KB)
        && g.c_in >= 16
        && super::sgemm512::available()
}

/// The tiles one pass covers: tile rows `th0..th1` of each image of its group.
#[derive(Clone, Copy, Debug)]
struct Band {
    th0: usize,
    th1: usize,
    /// Tiles per row.
    tw_n: usize,
}

impl Band {
    fn tiles_per_image(&self) -> usize {
        (self.th1 - self.th0) * self.tw_n
    }
}

/// Tile rows and columns of an image: 2x2 output tiles, the last one partial on odd sides.
fn tiles(g: &ConvGeometry) -> (usize, usize) {
    (g.h.div_ceil(2), g.w.div_ceil(2))
}

/// Images per group: enough tiles to fill the register blocks, V within budget (1 when one
/// image already exceeds it).
pub fn images_per_group(g: &ConvGeometry) -> usize {
    let (th, tw) = tiles(g);
    (V_BUDGET_FLOATS / (16 * g.c_in * th * tw)).clamp(1, g.n.max(1))
}

/// The bands of tile rows one image goes through: all rows at once if they fit the budget,
/// else as many rows per band as fit (at least one).
fn bands(g: &ConvGeometry) -> impl Iterator<Item = Band> {
    let (th_n, tw_n) = tiles(g);
    let rows = (V_BUDGET_FLOATS / (16 * g.c_in * tw_n)).clamp(1, th_n);
    (0..th_n).step_by(rows).map(move |th0| Band { th0, th1: (th0 + rows).min(th_n), tw_n })
}

/// The transformed weights `U[ξ][c][k] = (G·w[k][c]·Gᵀ)[ξ]` of `w: [k, c, 3, 3]` (the
/// products read consecutive input channels from adjacent rows). Blocks of 32 input channels
/// in parallel: a task writes rows c0..c0+32 of every ξ plane, reading for each output
/// channel one contiguous run of w (channel by channel, the reads and writes of 512x512
/// layers each touched a new page).
pub fn transform_weights(w: &[f32], k: usize, c: usize) -> Vec<f32> {
    use rayon::prelude::*;
    /// The output's base pointer, shared by tasks that write disjoint rows.
    #[derive(Clone, Copy)]
    struct Rows(*mut f32);
    // SAFETY: each task writes only the rows of its own input channel (see below).
    unsafe impl Send for Rows {}
    unsafe impl Sync for Rows {}
    impl Rows {
        /// Element i (a method, so that closures capture the whole `Rows`, which is Send).
        fn at(self, i: usize) -> *mut f32 {
            self.0.wrapping_add(i)
        }
    }
    assert_eq!(w.len(), 9 * c * k);
    let mut u = vec![0.0f32; 16 * c * k];
    let rows = Rows(u.as_mut_ptr());
    (0..c).into_par_iter().step_by(32).for_each(|c0| {
        for (kk, cc) in (0..k).flat_map(|kk| (c0..(c0 + 32).min(c)).map(move |cc| (kk, cc))) {
            let g = &w[(kk * c + cc) * 9..][..9];
            // a = G·g (4x3), then u = a·Gᵀ (4x4)
            let mut a = [[0.0f32; 3]; 4];
            for j in 0..3 {
                let (g0, g1, g2) = (g[j], g[3 + j], g[6 + j]);
                a[0][j] = g0;
                a[1][j] = 0.5 * (g0 + g1 + g2);
                a[2][j] = 0.5 * (g0 - g1 + g2);
                a[3][j] = g2;
            }
            for (i, r) in a.iter().enumerate() {
                let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
                for (j, v) in row.into_iter().enumerate() {
                    // SAFETY: (ξ·c + cc)·k + kk < 16·c·k, and only this task writes rows
                    // c0..c0 + 32 of each ξ plane; u outlives the parallel loop.
                    unsafe { *rows.at(((i * 4 + j) * c + cc) * k + kk) = v };
                }
            }
        }
    });
    u
}

thread_local! {
    /// This thread's transformed input and block of products (or transformed output
    /// gradient), reused.
    static SCRATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = std::cell::RefCell::new(Default::default());
}

/// Forward of images `x: [n_g, c_in, h, w]` into `y: [n_g, c_out, h, w]` (overwritten, plus
/// bias) with transformed weights `u` (`transform_weights`); `g` gives the layer's shape.
pub fn forward_images(x: &[f32], u: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    assert!(fits(g));
    let (chw, khw) = (g.c_in * g.h * g.w, g.c_out * g.h * g.w);
    let n = x.len() / chw;
    assert!(x.len() == n * chw && y.len() == n * khw && u.len() == 16 * g.c_in * g.c_out);
    assert!(bias.is_none_or(|b| b.len() == g.c_out), "bias: expected {} values", g.c_out);
    for_each_band(g, n, |imgs, band, v, m| {
        let ys = &mut y[imgs.start * khw..imgs.end * khw];
        // SAFETY: fits() checked AVX-512; the group's slices have the sizes asserted above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            group(&x[imgs.start * chw..imgs.end * chw], u, bias, g, band, ys, v, m)
        }
    });
}

/// Calls `f(images, band, v, m)` for every band of tile rows of every group of the `n`
/// images, with this thread's two scratch buffers.
fn for_each_band(
    g: &ConvGeometry,
    n: usize,
    mut f: impl FnMut(std::ops::Range<usize>, Band, &mut Vec<f32>, &mut Vec<f32>),
) {
    let per = images_per_group(g);
    SCRATCH.with(|s| {
        let (v, m) = &mut *s.borrow_mut();
        for i0 in (0..n).step_by(per) {
            for band in bands(g) {
                f(i0..(i0 + per).min(n), band, v, m);
            }
        }
    });
}

/// One band of tile rows of a group of images through the three steps.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); the slices have the sizes `forward_images`
/// asserts and `band` lies inside the image's tile rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn group(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    band: Band,
    y: &mut [f32],
    v: &mut Vec<f32>,
    m: &mut Vec<f32>,
) {
    let (c, k, h, w) = (g.c_in, g.c_out, g.h, g.w);
    let n = x.len() / (c * h * w);
    let t_total = n * band.tiles_per_image();
    // V rows padded to whole 16-tile vectors; lanes past t_total are never stored
    let ts = t_total.div_ceil(16) * 16;
    let xs = xi_stride(c, ts);
    let v = aligned(v, 16 * xs);
    let m = aligned(m, 16 * k * NV * 16);
    // SAFETY: every index below stays inside x, y, u, v or m by the sizes set
    // or asserted above; masked accesses cover the partial vectors.
    unsafe {
        for (i, xi) in x.chunks(c * h * w).enumerate() {
            input_transform(xi, c, h, w, band, v, ts, i * band.tiles_per_image());
        }
        // per block of tiles: each ξ's slice of V stays in L1 while every output-channel
        // block reads it; M of the block (all ξ, all channels) then goes through the output
        // transform
        let mut t0 = 0;
        while t0 < t_total {
            let nv = block_vectors((t_total - t0).div_ceil(16));
            for xi in 0..16 {
                for k0 in (0..k).step_by(KB) {
                    match nv {
                        1 => products::<1>(v, ts, u, c, k, xi, k0, t0, m),
                        2 => products::<2>(v, ts, u, c, k, xi, k0, t0, m),
                        _ => products::<3>(v, ts, u, c, k, xi, k0, t0, m),
                    }
                }
            }
            output_transform(m, nv, bias, g, band, t0, t_total, y);
            t0 += nv * 16;
        }
    }
}

/// Floats between two ξ planes of V: c·ts plus one cache line, so that the 16 planes of a
/// tile do not all map to one L1 set (c·ts·4 bytes is usually a multiple of 4 KiB).
fn xi_stride(c: usize, ts: usize) -> usize {
    c * ts + 16
}

/// Vectors for the next register block when `left` remain: up to NV, but 4 as 2 + 2 (a
/// block of one vector does 8 FMAs per 9 loads).
fn block_vectors(left: usize) -> usize {
    if left == 4 {
        2
    } else {
        left.min(NV)
    }
}

/// `len` floats of `buf` starting at a 64-byte boundary (grown as needed): whole-line
/// vector accesses instead of ones split across two cache lines.
fn aligned(buf: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if buf.len() < len + 16 {
        buf.resize(len + 16, 0.0);
    }
    let skip = buf.as_ptr().align_offset(64).min(15);
    &mut buf[skip..skip + len]
}

/// 32 floats from `p` (`avail` of them readable; the rest read as zero).
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `p .. p + min(avail, 32)` is readable.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn load32(p: *const f32, avail: usize) -> (__m512, __m512) {
    // SAFETY: the caller guarantees `avail` floats at p; the loads are masked to them.
    unsafe {
        if avail >= 32 {
            (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
        } else {
            let (m_lo, m_hi) = lanes32(avail);
            (_mm512_maskz_loadu_ps(m_lo, p), _mm512_maskz_loadu_ps(m_hi, p.add(16)))
        }
    }
}

/// Bᵀ·d·B of the 4x4 patches of 16 tiles from `tw0` in tile row `th` of one unpadded plane
/// `[h, w]`: vector ξ = 4i + j holds element (i, j) of each tile's transform. The pad-1 border
/// is implicit: rows outside the plane are zero vectors and columns outside it are masked
/// off in the loads (no padded copy of the image).
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `plane` points at `h·w` readable values and
/// tile row `th`, tiles `tw0..tw0 + 16`, are tiles of that plane (partial ones masked).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn patch_transform(plane: *const f32, h: usize, w: usize, th: usize, tw0: usize) -> [__m512; 16] {
    let (even, odd) = even_odd();
    // columns 2·tw0 − 1 + L of the window; lanes whose column is outside 0..w are masked off
    let c0 = 2 * tw0 as isize - 1;
    let window = |off: isize| {
        let (first, last) = ((-(c0 + off)).max(0), (w as isize - (c0 + off)).clamp(0, 32));
        let m = if last > first { ((1u64 << last) - (1u64 << first)) as u32 } else { 0 };
        (m as __mmask16, (m >> 16) as __mmask16)
    };
    let (m0, m2) = (window(0), window(2));
    // SAFETY: every lane loaded lies inside its row of the plane (the masks); masked-off
    // lanes do not access memory.
    unsafe {
        // d[r][j]: patch row r, column j of 16 tiles
        let mut d = [[_mm512_setzero_ps(); 4]; 4];
        for (r, dr) in d.iter_mut().enumerate() {
            let ih = (2 * th + r) as isize - 1;
            if ih < 0 || ih >= h as isize {
                continue;
            }
            let row = plane.wrapping_add(ih as usize * w).wrapping_offset(c0);
            for (k, (off, (lo_m, hi_m))) in [(0usize, m0), (2, m2)].into_iter().enumerate() {
                let lo = _mm512_maskz_loadu_ps(lo_m, row.wrapping_add(off));
                let hi = _mm512_maskz_loadu_ps(hi_m, row.wrapping_add(off + 16));
                dr[2 * k] = _mm512_permutex2var_ps(lo, even, hi);
                dr[2 * k + 1] = _mm512_permutex2var_ps(lo, odd, hi);
            }
        }
        // t = Bᵀ·d (rows), then Bᵀ·d·B (columns)
        let mut t = [[_mm512_setzero_ps(); 4]; 4];
        for j in 0..4 {
            t[0][j] = _mm512_sub_ps(d[0][j], d[2][j]);
            t[1][j] = _mm512_add_ps(d[1][j], d[2][j]);
            t[2][j] = _mm512_sub_ps(d[2][j], d[1][j]);
            t[3][j] = _mm512_sub_ps(d[1][j], d[3][j]);
        }
        let mut out = [_mm512_setzero_ps(); 16];
        for (i, ti) in t.iter().enumerate() {
            out[4 * i] = _mm512_sub_ps(ti[0], ti[2]);
            out[4 * i + 1] = _mm512_add_ps(ti[1], ti[2]);
            out[4 * i + 2] = _mm512_sub_ps(ti[2], ti[1]);
            out[4 * i + 3] = _mm512_sub_ps(ti[1], ti[3]);
        }
        out
    }
}

/// Transforms the band's tile rows of one image `x: [c, h, w]` into `V[ξ][ch][t0 + tile]`.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `x` holds `c·h·w` values, `band` lies in the
/// image, and `v` has room for 16 ξ planes of `c` rows of `ts` tiles from `t0`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn input_transform(x: &[f32], c: usize, h: usize, w: usize, band: Band, v: &mut [f32], ts: usize, t0: usize) {
    let tw_n = band.tw_n;
    let xs = xi_stride(c, ts);
    // SAFETY: the plane lies inside x; stores to n lanes at
    // t < t0 + tiles of this image ≤ ts.
    unsafe {
        for ch in 0..c {
            let plane = x.as_ptr().add(ch * h * w);
            for th in band.th0..band.th1 {
                for tw0 in (0..tw_n).step_by(16) {
                    let vs = patch_transform(plane, h, w, th, tw0);
                    let vt = v.as_mut_ptr().add(ch * ts + t0 + (th - band.th0) * tw_n + tw0);
                    let mask = lanes(tw_n - tw0);
                    for (xi, vv) in vs.iter().enumerate() {
                        _mm512_mask_storeu_ps(vt.add(xi * xs), mask, *vv);
                    }
                }
            }
        }
    }
}

/// `M[ξ][k][tile]` of one ξ for output channels k0..k0+8 and tiles t0..t0+16·N, into `m`.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `u` and `v` hold the transformed weights and
/// tiles for channels k0..k0+8 and tiles t0..t0+16·N, and `m` has room for their products.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn products<const N: usize>(
    v: &[f32],
    ts: usize,
    u: &[f32],
    c: usize,
    k: usize,
    xi: usize,
    k0: usize,
    t0: usize,
    m: &mut [f32],
) {
    // SAFETY: V reads at t0 + 16·N ≤ ts; U reads at k0 + 8 ≤ k; m holds
    // 16·k·NV·16 floats.
    unsafe {
        let vp = v.as_ptr().add(xi * xi_stride(c, ts) + t0);
        let up = u.as_ptr().add(xi * c * k + k0);
        let mut acc = [[_mm512_setzero_ps(); N]; KB];
        for ch in 0..c {
            let mut vv = [_mm512_setzero_ps(); N];
            for (j, a) in vv.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(vp.add(ch * ts + 16 * j));
            }
            let uc = up.add(ch * k);
            for (kk, row) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*uc.add(kk));
                for j in 0..N {
                    row[j] = _mm512_fmadd_ps(b, vv[j], row[j]);
                }
            }
        }
        for (kk, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                _mm512_storeu_ps(m.as_mut_ptr().add(((xi * k + k0 + kk) * NV + j) * 16), *a);
            }
        }
    }
}

/// 2x2 outputs of tiles t0..t0+16·nv (those < t_total) of the band for every channel from
/// `m`, plus bias, into `y: [n_g, k, h, w]` (a partial last tile writes only its row or
/// column inside the image).
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `m` holds the band's products and `y` the
/// group's `[n_g, k, h, w]` outputs (partial tiles write only inside the image).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn output_transform(
    m: &[f32],
    nv: usize,
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    band: Band,
    t0: usize,
    t_total: usize,
    y: &mut [f32],
) {
    let (k, h, w) = (g.c_out, g.h, g.w);
    let (tw_n, tpi) = (band.tw_n, band.tiles_per_image());
    let (il_lo, il_hi) = interleave();
    // SAFETY: m reads inside its 16·k·NV·16 floats; y writes at rows < h of
    // tiles < t_total of this group, cols ≤ w - 2·tw floats each.
    unsafe {
        for kk in 0..k {
            let b = _mm512_set1_ps(bias.map_or(0.0, |b| b[kk]));
            for j in 0..nv {
                let mv = |xi: usize| _mm512_loadu_ps(m.as_ptr().add(((xi * k + kk) * NV + j) * 16));
                // s = Aᵀ·m (rows), then s·A (columns)
                let mut s = [[_mm512_setzero_ps(); 4]; 2];
                for c in 0..4 {
                    let (m0, m1, m2, m3) = (mv(c), mv(4 + c), mv(8 + c), mv(12 + c));
                    s[0][c] = _mm512_add_ps(_mm512_add_ps(m0, m1), m2);
                    s[1][c] = _mm512_sub_ps(_mm512_sub_ps(m1, m2), m3);
                }
                // rows[r]: output row r of the 16 tiles, 32 floats as two vectors
                let mut rows = [[_mm512_setzero_ps(); 2]; 2];
                for (r, sr) in s.iter().enumerate() {
                    let y0 = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(sr[0], sr[1]), sr[2]), b);
                    let y1 = _mm512_add_ps(_mm512_sub_ps(_mm512_sub_ps(sr[1], sr[2]), sr[3]), b);
                    rows[r] = [_mm512_permutex2var_ps(y0, il_lo, y1), _mm512_permutex2var_ps(y0, il_hi, y1)];
                }
                // the 16 tiles, split where they cross a tile row or end
                let first = t0 + 16 * j;
                let end = (first + 16).min(t_total);
                let (mut img, rest) = (first / tpi, first % tpi);
                let (mut th, mut tw) = (band.th0 + rest / tw_n, rest % tw_n);
                let mut t = first;
                while t < end {
                    let s_n = (tw_n - tw).min(end - t);
                    // floats f0..f1 of the 32 go to dst..; the part in vector `half` is a masked
                    // store whose lane L lands at dst + 16·half + L − f0 (on an odd width the
                    // row's last tile has one column)
                    let cols = (2 * (tw + s_n)).min(w) - 2 * tw;
                    let (f0, f1) = (2 * (t - first), 2 * (t - first) + cols);
                    for (r, row) in rows.iter().enumerate() {
                        if 2 * th + r >= h {
                            continue;
                        }
                        let dst = y.as_mut_ptr().add(((img * k + kk) * h + 2 * th + r) * w + 2 * tw);
                        for (half, vec) in row.iter().enumerate() {
                            let (lo, hi) = (f0.max(16 * half), f1.min(16 * half + 16));
                            if lo < hi {
                                let mask = lanes(hi - 16 * half) & !lanes(lo - 16 * half);
                                let base = dst.wrapping_offset(16 * half as isize - f0 as isize);
                                _mm512_mask_storeu_ps(base, mask, *vec);
                            }
                        }
                    }
                    t += s_n;
                    tw += s_n;
                    if tw == tw_n {
                        tw = 0;
                        th += 1;
                        if th == band.th1 {
                            th = band.th0;
                            img += 1;
                        }
                    }
                }
            }
        }
    }
}

/// Whether [`weight_grad_images`] handles `g`: as [`fits`], with input channels in 16s (its
/// products run 16 input channels per vector).
pub fn fits_weight_grad(g: &ConvGeometry) -> bool {
    fits(g) && g.c_in.is_multiple_of(16)
}

/// Adds the weight-gradient contribution of images `x: [n_g, c, h, w]` and `dy: [n_g, k, h,
/// w]` to `du: [16][k][c]`, the gradient with respect to the transformed weights:
/// `dU[ξ][k][c] += Σ_t Z[ξ][k][t]·V[ξ][t][c]` with `Z = A·dY_t·Aᵀ` (the output transform's
/// adjoint) and `V = Bᵀ·d_t·B`. [`weights_from_du`] maps the sum back to `[k, c, 3, 3]`.
pub fn weight_grad_images(x: &[f32], dy: &[f32], g: &ConvGeometry, du: &mut [f32]) {
    assert!(fits_weight_grad(g));
    let (chw, khw) = (g.c_in * g.h * g.w, g.c_out * g.h * g.w);
    let n = x.len() / chw;
    assert!(x.len() == n * chw && dy.len() == n * khw && du.len() == 16 * g.c_in * g.c_out);
    for_each_band(g, n, |imgs, band, v, z| {
        let (xs, dys) = (&x[imgs.start * chw..imgs.end * chw], &dy[imgs.start * khw..imgs.end * khw]);
        // SAFETY: fits() checked AVX-512; the group's slices have the sizes asserted above.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            weight_grad_group(xs, dys, g, band, du, v, z)
        }
    });
}

/// One band of tile rows of a group of images of [`weight_grad_images`].
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); the slices have the sizes
/// `weight_grad_images` asserts and `band` lies inside the image's tile rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn weight_grad_group(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    band: Band,
    du: &mut [f32],
    v: &mut Vec<f32>,
    z: &mut Vec<f32>,
) {
    let (c, k, h, w) = (g.c_in, g.c_out, g.h, g.w);
    let (tpi, tw_n) = (band.tiles_per_image(), band.tw_n);
    let n = x.len() / (c * h * w);
    let t_total = n * tpi;
    // V[ξ][t][c] (channels in lanes) and Z[ξ][k][t] (tiles in lanes), ξ planes a cache line
    // apart from a multiple of 4 KiB
    let (vx, zx) = (t_total * c + 16, k * t_total + 16);
    let v = aligned(v, 16 * vx);
    let z = aligned(z, 16 * zx + 16);
    // SAFETY: indices stay inside x, dy, v, z and du by the sizes above; masked
    // accesses cover partial vectors.
    unsafe {
        let mut block = [[_mm512_setzero_ps(); 16]; 16];
        for (i, (xi, dyi)) in x.chunks(c * h * w).zip(dy.chunks(k * h * w)).enumerate() {
            let plane0 = xi.as_ptr();
            for c0 in (0..c).step_by(16) {
                for th in band.th0..band.th1 {
                    for tw0 in (0..tw_n).step_by(16) {
                        let nt = (tw_n - tw0).min(16);
                        for (cc, b) in block.iter_mut().enumerate() {
                            *b = patch_transform(plane0.add((c0 + cc) * h * w), h, w, th, tw0);
                        }
                        let t = i * tpi + (th - band.th0) * tw_n + tw0;
                        for xi in 0..16 {
                            let rows: [__m512; 16] = std::array::from_fn(|cc| block[cc][xi]);
                            for (l, col) in super::conv_direct::transpose16(&rows).iter().take(nt).enumerate() {
                                _mm512_storeu_ps(v.as_mut_ptr().add(xi * vx + (t + l) * c + c0), *col);
                            }
                        }
                    }
                }
            }
            let (even, odd) = even_odd();
            for kk in 0..k {
                let plane = dyi.as_ptr().add(kk * h * w);
                for th in band.th0..band.th1 {
                    for tw0 in (0..tw_n).step_by(16) {
                        // e[a][b]: output row 2·th + a, column 2·tile + b of 16 tiles (zero
                        // past the image's last row or column)
                        let mut e = [[_mm512_setzero_ps(); 2]; 2];
                        for (a, ea) in e.iter_mut().enumerate() {
                            if 2 * th + a >= h {
                                continue;
                            }
                            let col = 2 * tw0;
                            let (lo, hi) = load32(plane.add((2 * th + a) * w + col), w - col);
                            ea[0] = _mm512_permutex2var_ps(lo, even, hi);
                            ea[1] = _mm512_permutex2var_ps(lo, odd, hi);
                        }
                        // Z = A·e·Aᵀ, A = [[1,0],[1,1],[1,-1],[0,-1]]
                        let r = [
                            e[0],
                            [_mm512_add_ps(e[0][0], e[1][0]), _mm512_add_ps(e[0][1], e[1][1])],
                            [_mm512_sub_ps(e[0][0], e[1][0]), _mm512_sub_ps(e[0][1], e[1][1])],
                            [_mm512_sub_ps(_mm512_setzero_ps(), e[1][0]), _mm512_sub_ps(_mm512_setzero_ps(), e[1][1])],
                        ];
                        let zt = z.as_mut_ptr().add(kk * t_total + i * tpi + (th - band.th0) * tw_n + tw0);
                        let mask = lanes(tw_n - tw0);
                        for (a, ra) in r.iter().enumerate() {
                            let cols = [
                                ra[0],
                                _mm512_add_ps(ra[0], ra[1]),
                                _mm512_sub_ps(ra[0], ra[1]),
                                _mm512_sub_ps(_mm512_setzero_ps(), ra[1]),
                            ];
                            for (b, zv) in cols.iter().enumerate() {
                                _mm512_mask_storeu_ps(zt.add((4 * a + b) * zx), mask, *zv);
                            }
                        }
                    }
                }
            }
        }
        for xi in 0..16 {
            for k0 in (0..k).step_by(KB) {
                let mut c0 = 0;
                while c0 < c {
                    let nv = block_vectors((c - c0) / 16);
                    match nv {
                        1 => du_block::<1>(z, zx, v, vx, du, c, k, t_total, xi, k0, c0),
                        2 => du_block::<2>(z, zx, v, vx, du, c, k, t_total, xi, k0, c0),
                        _ => du_block::<3>(z, zx, v, vx, du, c, k, t_total, xi, k0, c0),
                    }
                    c0 += 16 * nv;
                }
            }
        }
    }
}

/// `dU[ξ][k0..k0+8][c0..c0+16·N] += Σ_t Z[ξ][k][t]·V[ξ][t][c]`.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `z`, `v` hold tiles t of the band for channels
/// k0..k0+8 and c0..c0+16·N, and `du` has room for those rows of every ξ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn du_block<const N: usize>(
    z: &[f32],
    zx: usize,
    v: &[f32],
    vx: usize,
    du: &mut [f32],
    c: usize,
    k: usize,
    t_total: usize,
    xi: usize,
    k0: usize,
    c0: usize,
) {
    // SAFETY: z rows k0..k0+8 and v rows t < t_total at channels < c0 + 16·N ≤ c
    // of plane ξ; du at (ξ, k < k, c < c).
    unsafe {
        let zp = z.as_ptr().add(xi * zx + k0 * t_total);
        let vp = v.as_ptr().add(xi * vx + c0);
        let mut acc = [[_mm512_setzero_ps(); N]; KB];
        for t in 0..t_total {
            let mut vv = [_mm512_setzero_ps(); N];
            for (j, a) in vv.iter_mut().enumerate() {
                *a = _mm512_loadu_ps(vp.add(t * c + 16 * j));
            }
            for (kk, row) in acc.iter_mut().enumerate() {
                let b = _mm512_set1_ps(*zp.add(kk * t_total + t));
                for j in 0..N {
                    row[j] = _mm512_fmadd_ps(b, vv[j], row[j]);
                }
            }
        }
        for (kk, row) in acc.iter().enumerate() {
            for (j, a) in row.iter().enumerate() {
                let at = du.as_mut_ptr().add((xi * k + k0 + kk) * c + c0 + 16 * j);
                _mm512_storeu_ps(at, _mm512_add_ps(_mm512_loadu_ps(at), *a));
            }
        }
    }
}

/// `dW[k][c] = Gᵀ·dU[·][k][c]·G` (3x3) of the summed `du: [16][k][c]`, into `dw: [k, c, 3, 3]`.
pub fn weights_from_du(du: &[f32], k: usize, c: usize, dw: &mut [f32]) {
    for kk in 0..k {
        for cc in 0..c {
            let d = |i: usize, j: usize| du[((i * 4 + j) * k + kk) * c + cc];
            // q = Gᵀ·dU (3x4), then q·G (3x3); Gᵀ rows: [1, ½, ½, 0], [0, ½, −½, 0], [0, ½, ½, 1]
            let mut q = [[0.0f32; 4]; 3];
            for j in 0..4 {
                let (d0, d1, d2, d3) = (d(0, j), d(1, j), d(2, j), d(3, j));
                q[0][j] = d0 + 0.5 * (d1 + d2);
                q[1][j] = 0.5 * (d1 - d2);
                q[2][j] = 0.5 * (d1 + d2) + d3;
            }
            let out = &mut dw[(kk * c + cc) * 9..][..9];
            for (a, qa) in q.iter().enumerate() {
                out[a * 3] = qa[0] + 0.5 * (qa[1] + qa[2]);
                out[a * 3 + 1] = 0.5 * (qa[1] - qa[2]);
                out[a * 3 + 2] = 0.5 * (qa[1] + qa[2]) + qa[3];
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    #[test]
    fn winograd_agrees_with_reference() {
        if !crate::kernels::sgemm512::available() {
            eprintln!("skipped: this CPU has no AVX-512 (the im2col + GEMM path is tested by conv.rs)");
            return;
        }
        let mut rng = Rng::new(31);
        // wide rows (16 tiles), half rows, quarter rows, rows of 1 and 20 tiles, groups of
        // several images, channels not in 16s
        for &(n, c, h, w, k) in &[
            (2, 16, 32, 32, 16),
            (3, 24, 16, 16, 8),
            (5, 16, 8, 8, 24),
            (2, 17, 2, 2, 8),
            (1, 16, 6, 40, 16),
            (3, 32, 10, 14, 32),
            // odd sides (a partial last tile), and images large enough to go in bands of
            // tile rows (even and odd)
            (2, 16, 7, 7, 16),
            (3, 16, 5, 9, 8),
            (1, 16, 50, 46, 8),
            (1, 16, 51, 45, 16),
        ] {
            let g = ConvGeometry::new(n, c, h, w, k, 3, 1, 1).unwrap();
            assert!(fits(&g), "{g:?}");
            if h > 40 {
                assert!(bands(&g).count() > 1, "{g:?} should go in bands");
            }
            let x = rand_vec(g.in_len(), &mut rng);
            let wt = rand_vec(g.weight_len(), &mut rng);
            let b = rand_vec(k, &mut rng);
            let u = transform_weights(&wt, k, c);
            let mut y = vec![7.0; g.out_len()];
            forward_images(&x, &u, Some(&b), &g, &mut y);
            let mut y_ref = vec![0.0; g.out_len()];
            reference::conv2d_forward(&x, &wt, Some(&b), &g, &mut y_ref);
            assert_close(&y, &y_ref, 1e-4, &format!("winograd {g:?}"));
            if fits_weight_grad(&g) {
                let dy = rand_vec(g.out_len(), &mut rng);
                let mut du = vec![0.0; 16 * c * k];
                // two calls (images split) add up
                let half = n / 2 * c * h * w;
                let halfy = n / 2 * k * h * w;
                weight_grad_images(&x[..half], &dy[..halfy], &g, &mut du);
                weight_grad_images(&x[half..], &dy[halfy..], &g, &mut du);
                let mut dw = vec![7.0; g.weight_len()];
                weights_from_du(&du, k, c, &mut dw);
                let mut dw_ref = vec![0.0; g.weight_len()];
                reference::conv2d_backward_weight(&x, &dy, &g, &mut dw_ref, None);
                assert_close(&dw, &dw_ref, 1e-3, &format!("winograd weight grad {g:?}"));
            }
        }
    }
}
