//! Exact counts of the multiply-adds with two non-zero operands in the three passes of a
//! convolution written as a matrix multiply (K x CRS x PQ per image; padding counts as a zero
//! operand), without redoing the convolution:
//!
//! - forward `Y = W · col(X)`: Σ_crs nnz(W[:, crs]) · nnz(col[crs, :])
//! - backward `dcol = Wᵀ · dY`: Σ_k nnz(W[k, :]) · nnz(dY[k, :])
//! - weight gradient `dW = dY · col(X)ᵀ`: Σ_pq nnz(dY[:, pq]) · nnz(col[:, pq])
//!
//! The col counts come from per-row prefix sums and integral images of the input's non-zero
//! mask, so the cost is about that of one im2col, a fraction of the convolution itself.
//! A linear layer is the 1x1 convolution of a 1x1 image.

use crate::geometry::ConvGeometry;
use rayon::prelude::*;

/// Non-zero multiply-adds of the three passes, and the dense count of each.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PassCounts {
    pub dense: u64,
    pub forward: u64,
    pub backward: u64,
    pub weight_grad: u64,
}

/// Non-zero multiply-adds of a pass, with the non-zero counts of its two operands found on
/// the way (so the probe needs no separate pass to count zeros).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Nonzeros {
    pub macs: u64,
    pub a: u64,
    pub b: u64,
}

/// nnz(col[crs, :]) summed over the batch, for every row crs = (c, r, s), and the number of
/// non-zero values of x (the last entry).
pub fn col_row_nonzeros(x: &[f32], g: &ConvGeometry) -> Vec<u64> {
    let (h, w, ho) = (g.h, g.w, g.h_out());
    let per_image: Vec<Vec<u64>> = x
        .par_chunks(g.c_in * h * w)
        .map(|xn| {
            let mut rows = vec![0u64; g.crs() + 1];
            // per input row: prefix counts of non-zeros, reused by every tap and output row
            let mut prefix = vec![0u32; h * (w + 1)];
            for c in 0..g.c_in {
                let plane = &xn[c * h * w..(c + 1) * h * w];
                for ih in 0..h {
                    let pr = &mut prefix[ih * (w + 1)..(ih + 1) * (w + 1)];
                    for (i, &v) in plane[ih * w..(ih + 1) * w].iter().enumerate() {
                        pr[i + 1] = pr[i] + (v != 0.0) as u32;
                    }
                    rows[g.crs()] += pr[w] as u64;
                }
                for r in 0..g.k_h {
                    for s in 0..g.k_w {
                        let (lo, hi) = g.valid_cols(s);
                        let mut count = 0u64;
                        if lo < hi {
                            for p in 0..ho {
                                let ih = (p * g.stride + r) as isize - g.pad as isize;
                                if ih < 0 || ih >= h as isize {
                                    continue;
                                }
                                let rp = &prefix[ih as usize * (w + 1)..(ih as usize + 1) * (w + 1)];
                                if g.stride == 1 {
                                    let a = lo + s - g.pad;
                                    count += (rp[a + (hi - lo)] - rp[a]) as u64;
                                } else {
                                    for q in lo..hi {
                                        let iw = q * g.stride + s - g.pad;
                                        count += (rp[iw + 1] - rp[iw]) as u64;
                                    }
                                }
                            }
                        }
                        rows[(c * g.k_h + r) * g.k_w + s] += count;
                    }
                }
            }
            rows
        })
        .collect();
    let mut total = vec![0u64; g.crs() + 1];
    for v in per_image {
        total.iter_mut().zip(v).for_each(|(t, c)| *t += c);
    }
    total
}

/// nnz(col[:, pq]) for every image and output position: `[n, pq]`, the number of non-zero
/// inputs in each receptive field. The channels are summed first (one pass over x), then a
/// single integral image of that per-pixel count answers every window in four lookups.
pub fn col_column_nonzeros(x: &[f32], g: &ConvGeometry) -> Vec<u32> {
    let (h, w, ho, wo) = (g.h, g.w, g.h_out(), g.w_out());
    let mut out = vec![0u32; g.n * ho * wo];
    out.par_chunks_mut(ho * wo).zip(x.par_chunks(g.c_in * h * w)).for_each(|(on, xn)| {
        let mut per_pixel = vec![0u32; h * w];
        for plane in xn.chunks(h * w) {
            for (c, &v) in per_pixel.iter_mut().zip(plane) {
                *c += (v != 0.0) as u32;
            }
        }
        let mut integral = vec![0u32; (h + 1) * (w + 1)];
        for i in 0..h {
            let mut run = 0u32;
            for j in 0..w {
                run += per_pixel[i * w + j];
                integral[(i + 1) * (w + 1) + j + 1] = integral[i * (w + 1) + j + 1] + run;
            }
        }
        let at = |i: usize, j: usize| integral[i * (w + 1) + j];
        for p in 0..ho {
            let top = (p * g.stride) as isize - g.pad as isize;
            let (i0, i1) = (top.max(0) as usize, ((top + g.k_h as isize).min(h as isize)).max(0) as usize);
            for q in 0..wo {
                let left = (q * g.stride) as isize - g.pad as isize;
                let (j0, j1) = (left.max(0) as usize, ((left + g.k_w as isize).min(w as isize)).max(0) as usize);
                if i0 < i1 && j0 < j1 {
                    on[p * wo + q] = at(i1, j1) + at(i0, j0) - at(i0, j1) - at(i1, j0);
                }
            }
        }
    });
    out
}

/// Counts for the three passes. w: the weights the passes use `[k, crs]`; x: `[n, c, h, w]`;
/// dy: `[n, k, pq]`, or None when only the forward pass ran (backward counts stay 0).
pub fn conv_pass_counts(x: &[f32], w: &[f32], dy: Option<&[f32]>, g: &ConvGeometry) -> PassCounts {
    let dense = (g.n * g.c_out * g.crs() * g.pq()) as u64;
    let forward = forward_nonzero(x, w, g).macs;
    let Some(dy) = dy else { return PassCounts { dense, forward, ..Default::default() } };
    PassCounts {
        dense,
        forward,
        backward: backward_nonzero(w, dy, g).macs,
        weight_grad: weight_grad_nonzero(x, dy, g).macs,
    }
}

/// Forward pass: pairs (W[k, crs], col[crs, pq]) with both non-zero; a = nnz(W), b = nnz(x).
pub fn forward_nonzero(x: &[f32], w: &[f32], g: &ConvGeometry) -> Nonzeros {
    let crs = g.crs();
    // per column crs of W, its non-zeros across k
    let mut w_col = vec![0u64; crs];
    for row in w.chunks(crs) {
        for (c, &v) in w_col.iter_mut().zip(row) {
            *c += (v != 0.0) as u64;
        }
    }
    let rows = col_row_nonzeros(x, g);
    Nonzeros { macs: w_col.iter().zip(&rows).map(|(a, b)| a * b).sum(), a: w_col.iter().sum(), b: rows[crs] }
}

/// Input-gradient pass: pairs (W[k, crs], dY[k, pq]) with both non-zero; a = nnz(W), b = nnz(dY).
pub fn backward_nonzero(w: &[f32], dy: &[f32], g: &ConvGeometry) -> Nonzeros {
    let (k, crs, pq) = (g.c_out, g.crs(), g.pq());
    let w_row: Vec<u64> = w.chunks(crs).map(|r| r.iter().filter(|&&v| v != 0.0).count() as u64).collect();
    let mut dy_row = vec![0u64; k];
    for dyn_ in dy.chunks(k * pq) {
        for (kk, row) in dyn_.chunks(pq).enumerate() {
            dy_row[kk] += row.iter().filter(|&&v| v != 0.0).count() as u64;
        }
    }
    Nonzeros {
        macs: w_row.iter().zip(&dy_row).map(|(a, b)| a * b).sum(),
        a: w_row.iter().sum(),
        b: dy_row.iter().sum(),
    }
}

/// Weight-gradient pass: pairs (dY[k, pq], col[crs, pq]) with both non-zero; a = nnz(dY),
/// b = nnz(x).
pub fn weight_grad_nonzero(x: &[f32], dy: &[f32], g: &ConvGeometry) -> Nonzeros {
    let (k, pq) = (g.c_out, g.pq());
    // per image and position, non-zeros of dY across k times those of col
    let cols = col_column_nonzeros(x, g);
    let (macs, a) = dy
        .par_chunks(k * pq)
        .zip(cols.par_chunks(pq))
        .map(|(dyn_, cn)| {
            let mut dy_col = vec![0u32; pq];
            for row in dyn_.chunks(pq) {
                for (c, &v) in dy_col.iter_mut().zip(row) {
                    *c += (v != 0.0) as u32;
                }
            }
            let macs = dy_col.iter().zip(cn).map(|(&a, &b)| a as u64 * b as u64).sum::<u64>();
            (macs, dy_col.iter().map(|&c| c as u64).sum::<u64>())
        })
        .reduce(|| (0, 0), |p, q| (p.0 + q.0, p.1 + q.1));
    let b = x.par_iter().filter(|&&v| v != 0.0).count() as u64;
    Nonzeros { macs, a, b }
}

/// Brute force over every (n, k, c, r, s, p, q): the definition the fast counts must meet.
pub fn conv_pass_counts_reference(x: &[f32], w: &[f32], dy: Option<&[f32]>, g: &ConvGeometry) -> PassCounts {
    let (ho, wo) = (g.h_out(), g.w_out());
    let mut c = PassCounts { dense: (g.n * g.c_out * g.crs() * g.pq()) as u64, ..Default::default() };
    for n in 0..g.n {
        for k in 0..g.c_out {
            for ci in 0..g.c_in {
                for r in 0..g.k_h {
                    for s in 0..g.k_w {
                        let wv = w[((k * g.c_in + ci) * g.k_h + r) * g.k_w + s];
                        for p in 0..ho {
                            for q in 0..wo {
                                let ih = (p * g.stride + r) as isize - g.pad as isize;
                                let iw = (q * g.stride + s) as isize - g.pad as isize;
                                let inside = ih >= 0 && iw >= 0 && ih < g.h as isize && iw < g.w as isize;
                                let xv = if inside {
                                    x[((n * g.c_in + ci) * g.h + ih as usize) * g.w + iw as usize]
                                } else {
                                    0.0
                                };
                                let gv = dy.map_or(0.0, |d| d[((n * g.c_out + k) * ho + p) * wo + q]);
                                c.forward += (wv != 0.0 && xv != 0.0) as u64;
                                c.backward += (wv != 0.0 && gv != 0.0) as u64;
                                c.weight_grad += (gv != 0.0 && xv != 0.0) as u64;
                            }
                        }
                    }
                }
            }
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::awkward_geometries;
    use crate::rng::Rng;

    /// Normal values with a planted fraction of exact zeros.
    fn sparse(n: usize, zero_frac: f32, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| if rng.uniform() < zero_frac { 0.0 } else { rng.normal() }).collect()
    }

    #[test]
    fn fast_counts_equal_brute_force() {
        let mut rng = Rng::new(21);
        for g in awkward_geometries() {
            for (zx, zw, zg) in [(0.5, 0.4, 0.6), (0.0, 0.0, 0.0), (1.0, 0.3, 0.2), (0.9, 1.0, 0.0)] {
                let x = sparse(g.in_len(), zx, &mut rng);
                let wt = sparse(g.weight_len(), zw, &mut rng);
                let dy = sparse(g.out_len(), zg, &mut rng);
                let fast = conv_pass_counts(&x, &wt, Some(&dy), &g);
                let slow = conv_pass_counts_reference(&x, &wt, Some(&dy), &g);
                assert_eq!(fast, slow, "{g:?} zeros x {zx} w {zw} dy {zg}");
                assert_eq!(conv_pass_counts(&x, &wt, None, &g).forward, slow.forward);
                // the operand counts found on the way
                let nnz = |v: &[f32]| v.iter().filter(|&&v| v != 0.0).count() as u64;
                let (f, b, w) =
                    (forward_nonzero(&x, &wt, &g), backward_nonzero(&wt, &dy, &g), weight_grad_nonzero(&x, &dy, &g));
                assert_eq!((f.a, f.b), (nnz(&wt), nnz(&x)));
                assert_eq!((b.a, b.b), (nnz(&wt), nnz(&dy)));
                assert_eq!((w.a, w.b), (nnz(&dy), nnz(&x)));
            }
        }
    }

    #[test]
    fn no_zeros_means_every_multiply_add_counts() {
        let g = ConvGeometry::new(2, 3, 5, 5, 4, 1, 1, 0).unwrap(); // no padding: nothing is skipped
        let ones = |n| vec![1.0f32; n];
        let c = conv_pass_counts(&ones(g.in_len()), &ones(g.weight_len()), Some(&ones(g.out_len())), &g);
        assert_eq!((c.forward, c.backward, c.weight_grad), (c.dense, c.dense, c.dense));
    }
}
