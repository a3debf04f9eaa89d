//! Max, average and global average pooling over `[n, c, h, w]`, forward and backward.

use crate::geometry::PoolGeometry;
use rayon::prelude::*;

/// Max pooling; `argmax` receives, per output, the flat index within its input plane.
/// Padding never wins (it counts as -inf, as in PyTorch). x: [n,c,h,w], y/argmax: [n,c,h_out,w_out]
pub fn max_pool_forward(x: &[f32], g: &PoolGeometry, y: &mut [f32], argmax: &mut [u32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    let per = planes_per_task(hw);
    let task = y.par_chunks_mut(ho * wo).zip(argmax.par_chunks_mut(ho * wo)).zip(x.par_chunks(hw)).with_min_len(per);
    if g.k == 2 && g.stride == 2 && g.pad == 0 {
        // the common 2x2/2 window, without bounds checks per tap
        task.for_each(|((yp, ap), xp)| {
            #[cfg(target_arch = "x86_64")]
            if super::sgemm512::available() {
                // SAFETY: the CPU has AVX-512F; the plane slices have the pooled sizes.
                return unsafe { x86::max_2x2_forward(xp, g.w, ho, wo, yp, ap) };
            }
            max_2x2_plane(xp, g.w, ho, wo, yp, ap);
        });
        return;
    }
    task.for_each(|((yp, ap), xp)| {
        for p in 0..ho {
            for q in 0..wo {
                let (mut best, mut arg) = (f32::NEG_INFINITY, 0u32);
                for r in 0..g.k {
                    let ih = (p * g.stride + r) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    for s in 0..g.k {
                        let iw = (q * g.stride + s) as isize - g.pad as isize;
                        if iw < 0 || iw >= g.w as isize {
                            continue;
                        }
                        let idx = ih as usize * g.w + iw as usize;
                        // `>` keeps the first maximum; NaN propagates like PyTorch.
                        if xp[idx] > best || xp[idx].is_nan() {
                            best = xp[idx];
                            arg = idx as u32;
                        }
                    }
                }
                yp[p * wo + q] = best;
                ap[p * wo + q] = arg;
            }
        }
    });
}

/// The portable 2x2/2 max pool of one plane (the AVX-512 copy is `x86::max_2x2_forward`).
fn max_2x2_plane(xp: &[f32], w: usize, ho: usize, wo: usize, yp: &mut [f32], ap: &mut [u32]) {
    for p in 0..ho {
        let base = 2 * p * w;
        let (r0, r1) = (&xp[base..base + 2 * wo], &xp[base + w..base + w + 2 * wo]);
        let (yr, ar) = (&mut yp[p * wo..(p + 1) * wo], &mut ap[p * wo..(p + 1) * wo]);
        for (q, ((y, a), (t, b))) in
            yr.iter_mut().zip(ar.iter_mut()).zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))).enumerate()
        {
            // the window's four values in scan order; selects, not branches (the winner is
            // data-dependent), `>` keeps the first maximum, NaN wins
            let (mut best, mut arg) = (t[0], 0u32);
            for (v, code) in [(t[1], 1u32), (b[0], 2), (b[1], 3)] {
                let take = v > best || v.is_nan();
                best = if take { v } else { best };
                arg = if take { code } else { arg };
            }
            let i0 = (base + 2 * q) as u32;
            *y = best;
            *a = i0 + (arg & 1) + (arg >> 1) * w as u32;
        }
    }
}

/// Planes per parallel task: ~16K values each (a task per small plane costs more in
/// scheduling than in work).
fn planes_per_task(hw: usize) -> usize {
    (16384 / hw.max(1)).max(1)
}

/// dx[argmax] += dy (dx overwritten first).
pub fn max_pool_backward(dy: &[f32], argmax: &[u32], g: &PoolGeometry, dx: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    let per = planes_per_task(hw);
    // 2x2/2 windows tiling the plane exactly: each input position gets its window's gradient
    // or 0, written in one pass without zeroing first
    #[cfg(target_arch = "x86_64")]
    let tiled = g.k == 2 && g.stride == 2 && g.pad == 0 && g.h.is_multiple_of(2) && g.w.is_multiple_of(2);
    dx.par_chunks_mut(hw).zip(dy.par_chunks(ho * wo).zip(argmax.par_chunks(ho * wo))).with_min_len(per).for_each(
        |(dp, (gp, ap))| {
            #[cfg(target_arch = "x86_64")]
            if tiled && super::sgemm512::available() {
                // SAFETY: the CPU has AVX-512F; the planes have the pooled sizes.
                return unsafe { x86::max_2x2_backward(gp, ap, g.w, ho, wo, dp) };
            }
            dp.fill(0.0);
            for (&gv, &a) in gp.iter().zip(ap) {
                dp[a as usize] += gv;
            }
        },
    );
}

/// The 2x2/2 max pool in AVX-512: 16 windows per vector, the even and odd columns of two
/// rows split by permutes.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::kernels::simd::{even_odd, interleave, lanes, lanes32};
    use std::arch::x86_64::*;

    /// One plane `x: [h, w]` into `y, arg: [ho, wo]` (arg: flat index of the maximum).
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `x` holds at least `2·ho` rows of width
    /// `w ≥ 2·wo`, and `y`, `arg` hold `ho·wo` values.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max_2x2_forward(x: &[f32], w: usize, ho: usize, wo: usize, y: &mut [f32], arg: &mut [u32]) {
        // the even indices are also the first input column of each of 16 windows
        let ((even, odd), iota2) = (even_odd(), even_odd().0);
        assert!(ho == 0 || x.len() >= (2 * ho - 1) * w + 2 * wo);
        assert!(2 * wo <= w && y.len() >= ho * wo && arg.len() >= ho * wo);
        // SAFETY: reads of rows 2p, 2p + 1 masked to 2·wo ≤ w columns; writes
        // masked to the wo outputs of row p.
        unsafe {
            for p in 0..ho {
                let base = 2 * p * w;
                let (r0, r1) = (x.as_ptr().add(base), x.as_ptr().add(base + w));
                for q0 in (0..wo).step_by(16) {
                    let n = (wo - q0).min(16);
                    let (m_lo, m_hi) = lanes32(2 * n);
                    let split = |r: *const f32| {
                        let lo = _mm512_maskz_loadu_ps(m_lo, r.add(2 * q0));
                        let hi = _mm512_maskz_loadu_ps(m_hi, r.add(2 * q0 + 16));
                        (_mm512_permutex2var_ps(lo, even, hi), _mm512_permutex2var_ps(lo, odd, hi))
                    };
                    let ((t0, t1), (b0, b1)) = (split(r0), split(r1));
                    // scan order, `>` keeps the first maximum, NaN wins (as the scalar twin)
                    let (mut best, mut code) = (t0, _mm512_setzero_si512());
                    for (v, c) in [(t1, 1), (b0, 2), (b1, 3)] {
                        let take = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(v, best) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                        best = _mm512_mask_mov_ps(best, take, v);
                        code = _mm512_mask_mov_epi32(code, take, _mm512_set1_epi32(c));
                    }
                    let i0 = _mm512_add_epi32(_mm512_set1_epi32((base + 2 * q0) as i32), iota2);
                    let col = _mm512_and_si512(code, _mm512_set1_epi32(1));
                    let row = _mm512_mullo_epi32(_mm512_srli_epi32::<1>(code), _mm512_set1_epi32(w as i32));
                    let a = _mm512_add_epi32(i0, _mm512_add_epi32(col, row));
                    let m = lanes(n);
                    _mm512_mask_storeu_ps(y.as_mut_ptr().add(p * wo + q0), m, best);
                    _mm512_mask_storeu_epi32(arg.as_mut_ptr().add(p * wo + q0) as *mut i32, m, a);
                }
            }
        }
    }

    /// The gradient of one plane whose 2x2/2 windows tile it exactly (h, w even): every
    /// input position written, `dy` where it was its window's maximum, else 0.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `dy`, `arg` hold `ho·wo` values with
    /// `arg` indices inside the plane, and `dx` holds `2·ho` rows of width `w = 2·wo`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn max_2x2_backward(dy: &[f32], arg: &[u32], w: usize, ho: usize, wo: usize, dx: &mut [f32]) {
        let ((il_lo, il_hi), iota2) = (interleave(), even_odd().0);
        assert!(dx.len() >= 2 * ho * w && 2 * wo == w && dy.len() >= ho * wo && arg.len() >= ho * wo);
        // SAFETY: reads masked to the wo outputs of row p; writes masked to the
        // 2·wo = w columns of rows 2p, 2p + 1.
        unsafe {
            for p in 0..ho {
                let base = 2 * p * w;
                for q0 in (0..wo).step_by(16) {
                    let n = (wo - q0).min(16);
                    let m = lanes(n);
                    let d = _mm512_maskz_loadu_ps(m, dy.as_ptr().add(p * wo + q0));
                    let a = _mm512_maskz_loadu_epi32(m, arg.as_ptr().add(p * wo + q0) as *const i32);
                    let off = _mm512_sub_epi32(a, _mm512_add_epi32(_mm512_set1_epi32((base + 2 * q0) as i32), iota2));
                    let at =
                        |o: usize| _mm512_maskz_mov_ps(_mm512_cmpeq_epi32_mask(off, _mm512_set1_epi32(o as i32)), d);
                    let (m_lo, m_hi) = lanes32(2 * n);
                    for (r, (left, right)) in [(at(0), at(1)), (at(w), at(w + 1))].into_iter().enumerate() {
                        let out = dx.as_mut_ptr().add(base + r * w + 2 * q0);
                        _mm512_mask_storeu_ps(out, m_lo, _mm512_permutex2var_ps(left, il_lo, right));
                        _mm512_mask_storeu_ps(out.add(16), m_hi, _mm512_permutex2var_ps(left, il_hi, right));
                    }
                }
            }
        }
    }
}

/// Average pooling; padded positions count in the divisor (PyTorch's count_include_pad).
pub fn avg_pool_forward(x: &[f32], g: &PoolGeometry, y: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    let inv = 1.0 / (g.k * g.k) as f32;
    y.par_chunks_mut(ho * wo).zip(x.par_chunks(hw)).for_each(|(yp, xp)| {
        for p in 0..ho {
            for q in 0..wo {
                let mut s = 0.0;
                for r in 0..g.k {
                    let ih = (p * g.stride + r) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    for t in 0..g.k {
                        let iw = (q * g.stride + t) as isize - g.pad as isize;
                        if iw >= 0 && iw < g.w as isize {
                            s += xp[ih as usize * g.w + iw as usize];
                        }
                    }
                }
                yp[p * wo + q] = s * inv;
            }
        }
    });
}

pub fn avg_pool_backward(dy: &[f32], g: &PoolGeometry, dx: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    let inv = 1.0 / (g.k * g.k) as f32;
    dx.par_chunks_mut(hw).zip(dy.par_chunks(ho * wo)).for_each(|(dp, gp)| {
        dp.fill(0.0);
        for p in 0..ho {
            for q in 0..wo {
                let gv = gp[p * wo + q] * inv;
                for r in 0..g.k {
                    let ih = (p * g.stride + r) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    for t in 0..g.k {
                        let iw = (q * g.stride + t) as isize - g.pad as isize;
                        if iw >= 0 && iw < g.w as isize {
                            dp[ih as usize * g.w + iw as usize] += gv;
                        }
                    }
                }
            }
        }
    });
}

/// Mean over each plane. x: [n, c, h, w] -> y: [n, c]
pub fn global_avg_pool_forward(x: &[f32], hw: usize, y: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    y.iter_mut().zip(x.chunks(hw)).for_each(|(o, p)| *o = p.iter().sum::<f32>() * inv);
}

/// dy: [n, c] -> dx: [n, c, h, w]
pub fn global_avg_pool_backward(dy: &[f32], hw: usize, dx: &mut [f32]) {
    let inv = 1.0 / hw as f32;
    dx.chunks_mut(hw).zip(dy).for_each(|(p, &g)| p.fill(g * inv));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    /// The AVX-512 2x2 max pool equals the portable one, ties, NaN and odd sizes included.
    #[test]
    fn max_2x2_copies_agree() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::sgemm512::available() {
            let mut rng = Rng::new(5);
            for &(h, w) in &[(4, 4), (6, 70), (7, 35), (2, 33)] {
                let (ho, wo) = (h / 2, w / 2);
                let mut x: Vec<f32> = rand_vec(h * w, &mut rng).iter().map(|v| (v * 2.0).round()).collect();
                x[3] = f32::NAN;
                let (mut y, mut a, mut y2, mut a2) =
                    (vec![0.0; ho * wo], vec![0; ho * wo], vec![0.0; ho * wo], vec![0; ho * wo]);
                max_2x2_plane(&x, w, ho, wo, &mut y, &mut a);
                // SAFETY: the CPU has AVX-512F.
                unsafe { x86::max_2x2_forward(&x, w, ho, wo, &mut y2, &mut a2) };
                assert_eq!(a, a2, "{h}x{w}");
                assert!(y.iter().zip(&y2).all(|(p, q)| p == q || (p.is_nan() && q.is_nan())), "{h}x{w}");
                assert!(y[1].is_nan());
            }
        }
    }

    #[test]
    fn pools_agree_with_reference() {
        let mut rng = Rng::new(4);
        for &(n, c, h, w, k, s, p) in &[
            (2, 3, 7, 5, 2, 2, 0),
            (1, 2, 9, 9, 3, 2, 1),
            (3, 1, 4, 6, 3, 1, 1),
            (2, 2, 5, 5, 5, 1, 0),
            (4, 70, 8, 8, 2, 2, 0),
            (2, 3, 6, 70, 2, 2, 0),
            (1, 2, 7, 35, 2, 2, 0),
        ] {
            let g = PoolGeometry::new(n, c, h, w, k, s, p).unwrap();
            let x = rand_vec(n * c * h * w, &mut rng);
            let dy = rand_vec(g.out_len(), &mut rng);
            let (mut y, mut yr) = (vec![0.0; g.out_len()], vec![0.0; g.out_len()]);
            let mut am = vec![0u32; g.out_len()];
            max_pool_forward(&x, &g, &mut y, &mut am);
            reference::max_pool_forward(&x, &g, &mut yr);
            assert_close(&y, &yr, 0.0, "max pool");
            let (mut dx, mut dxr) = (vec![1.0; x.len()], vec![0.0; x.len()]);
            max_pool_backward(&dy, &am, &g, &mut dx);
            reference::max_pool_backward(&x, &dy, &g, &mut dxr);
            assert_close(&dx, &dxr, 1e-6, "max pool backward");
            avg_pool_forward(&x, &g, &mut y);
            reference::avg_pool_forward(&x, &g, &mut yr);
            assert_close(&y, &yr, 1e-5, "avg pool");
            avg_pool_backward(&dy, &g, &mut dx);
            reference::avg_pool_backward(&dy, &g, &mut dxr);
            assert_close(&dx, &dxr, 1e-5, "avg pool backward");
            // global average pooling is average pooling with the whole plane as its window
            let gg = PoolGeometry::new(n, c, h, w, h.min(w), 1, 0).unwrap();
            if h == w {
                let (mut ya, mut yb) = (vec![0.0; n * c], vec![0.0; n * c]);
                global_avg_pool_forward(&x, h * w, &mut ya);
                reference::avg_pool_forward(&x, &gg, &mut yb);
                assert_close(&ya, &yb, 1e-5, "global avg pool");
            }
        }
    }
}
