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
            for p in 0..ho {
                let base = 2 * p * g.w;
                let (r0, r1) = (&xp[base..base + 2 * wo], &xp[base + g.w..base + g.w + 2 * wo]);
                let (yr, ar) = (&mut yp[p * wo..(p + 1) * wo], &mut ap[p * wo..(p + 1) * wo]);
                for (q, ((y, a), (t, b))) in
                    yr.iter_mut().zip(ar.iter_mut()).zip(r0.chunks_exact(2).zip(r1.chunks_exact(2))).enumerate()
                {
                    // the window's four values in scan order; selects, not branches (the
                    // winner is data-dependent), `>` keeps the first maximum, NaN wins
                    let (mut best, mut arg) = (t[0], 0u32);
                    for (v, code) in [(t[1], 1u32), (b[0], 2), (b[1], 3)] {
                        let take = v > best || v.is_nan();
                        best = if take { v } else { best };
                        arg = if take { code } else { arg };
                    }
                    let i0 = (base + 2 * q) as u32;
                    *y = best;
                    *a = i0 + (arg & 1) + (arg >> 1) * g.w as u32;
                }
            }
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

/// Planes per parallel task: ~16K values each (a task per small plane costs more in
/// scheduling than in work).
fn planes_per_task(hw: usize) -> usize {
    (16384 / hw.max(1)).max(1)
}

/// dx[argmax] += dy (dx overwritten first).
pub fn max_pool_backward(dy: &[f32], argmax: &[u32], g: &PoolGeometry, dx: &mut [f32]) {
    let (howo, hw) = (g.h_out() * g.w_out(), g.h * g.w);
    let per = planes_per_task(hw);
    dx.par_chunks_mut(hw).zip(dy.par_chunks(howo).zip(argmax.par_chunks(howo))).with_min_len(per).for_each(
        |(dp, (gp, ap))| {
            dp.fill(0.0);
            for (&gv, &a) in gp.iter().zip(ap) {
                dp[a as usize] += gv;
            }
        },
    );
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

    #[test]
    fn pools_agree_with_reference() {
        let mut rng = Rng::new(4);
        for &(n, c, h, w, k, s, p) in &[
            (2, 3, 7, 5, 2, 2, 0),
            (1, 2, 9, 9, 3, 2, 1),
            (3, 1, 4, 6, 3, 1, 1),
            (2, 2, 5, 5, 5, 1, 0),
            (4, 70, 8, 8, 2, 2, 0),
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
