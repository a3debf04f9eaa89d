//! Batch normalisation over `[n, c, h, w]` (per channel): train mode with batch statistics,
//! eval mode with running statistics, and the backward pass split into its per-channel sums
//! (which are also dγ and dβ) and the input gradient.

use rayon::prelude::*;

/// Per-channel statistics saved by the train-mode forward for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct BnSaved {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

const LANES: usize = 16;

/// (Σ v, Σ v²) of a plane in 16 independent partial sums: one f32 accumulator is a serial
/// chain the compiler must keep in order (one add per 4 cycles); 16 lanes vectorise.
fn sum_and_squares(p: &[f32]) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let chunks = p.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..LANES {
            a[i] += ch[i];
            b[i] += ch[i] * ch[i];
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for &v in rest {
        sa += v;
        sb += v * v;
    }
    (sa, sb)
}

/// (Σ d, Σ d·(x − mean)) of a plane, in 16 lanes like [`sum_and_squares`].
fn grad_sums(x: &[f32], d: &[f32], mean: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, dc) = (x.chunks_exact(LANES), d.chunks_exact(LANES));
    let (xr, dr) = (xc.remainder(), dc.remainder());
    for (xs, ds) in xc.zip(dc) {
        for i in 0..LANES {
            a[i] += ds[i];
            b[i] += ds[i] * (xs[i] - mean);
        }
    }
    let (mut sa, mut sb) = (a.iter().sum::<f32>(), b.iter().sum::<f32>());
    for (&xv, &dv) in xr.iter().zip(dr) {
        sa += dv;
        sb += dv * (xv - mean);
    }
    (sa, sb)
}

/// Gathers, for channel `ch`, the `n` planes of `hw` values of x.
fn planes(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> impl Iterator<Item = &[f32]> {
    (0..n).map(move |i| &x[(i * c + ch) * hw..(i * c + ch + 1) * hw])
}

/// Train-mode forward: normalises with the batch mean and (biased) variance, and updates the
/// running statistics as PyTorch does (momentum, unbiased variance).
/// x, y: [n, c, h, w]; gamma, beta, running_*: [c]
pub fn batch_norm_forward_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
) -> BnSaved {
    let m = (n * hw) as f64;
    let stats: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mut s, mut ss) = (0.0f64, 0.0f64);
            for p in planes(x, n, c, hw, ch) {
                // f32 partial sums per plane keep the loop vectorised; f64 across planes keeps precision.
                let (a, b) = sum_and_squares(p);
                s += a as f64;
                ss += b as f64;
            }
            let mean = s / m;
            let var = (ss / m - mean * mean).max(0.0);
            (mean as f32, var as f32)
        })
        .collect();
    let mut saved = BnSaved { mean: Vec::with_capacity(c), inv_std: Vec::with_capacity(c) };
    let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
    for (ch, &(mean, var)) in stats.iter().enumerate() {
        saved.mean.push(mean);
        saved.inv_std.push(1.0 / (var + eps).sqrt());
        running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean;
        running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * (var as f64 * unbias) as f32;
    }
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] * saved.inv_std[ch]).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - saved.mean[ch] * scale[ch]).collect();
    affine(x, &scale, &shift, c, hw, y);
    saved
}

/// Eval-mode forward with running statistics. x, y: [n, c, h, w]
pub fn batch_norm_forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    c: usize,
    hw: usize,
    eps: f32,
    y: &mut [f32],
) {
    let scale: Vec<f32> = (0..c).map(|ch| gamma[ch] / (running_var[ch] + eps).sqrt()).collect();
    let shift: Vec<f32> = (0..c).map(|ch| beta[ch] - running_mean[ch] * scale[ch]).collect();
    affine(x, &scale, &shift, c, hw, y);
}

/// Planes per parallel task: small planes are grouped so a task has ~16K values (one rayon
/// task per 32x32 plane cost more in scheduling than in arithmetic).
fn planes_per_task(hw: usize) -> usize {
    (16384 / hw.max(1)).max(1)
}

/// y = x * scale[ch] + shift[ch], per channel plane.
fn affine(x: &[f32], scale: &[f32], shift: &[f32], c: usize, hw: usize, y: &mut [f32]) {
    let per = planes_per_task(hw);
    y.par_chunks_mut(hw * per).zip(x.par_chunks(hw * per)).enumerate().for_each(|(t, (yc, xc))| {
        for (k, (yp, xp)) in yc.chunks_mut(hw).zip(xc.chunks(hw)).enumerate() {
            let ch = (t * per + k) % c;
            let (a, b) = (scale[ch], shift[ch]);
            yp.iter_mut().zip(xp).for_each(|(o, &v)| *o = v * a + b);
        }
    });
}

/// Per-channel sums Σ dy (= dβ) and Σ dy·x̂ (= dγ) of the train-mode backward.
pub fn batch_norm_backward_sums(
    x: &[f32],
    dy: &[f32],
    saved: &BnSaved,
    n: usize,
    c: usize,
    hw: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let sums: Vec<(f32, f32)> = (0..c)
        .into_par_iter()
        .map(|ch| {
            let (mean, inv) = (saved.mean[ch], saved.inv_std[ch]);
            let (mut sd, mut sdx) = (0.0f64, 0.0f64);
            for (xp, dp) in planes(x, n, c, hw, ch).zip(planes(dy, n, c, hw, ch)) {
                let (a, b) = grad_sums(xp, dp, mean);
                sd += a as f64;
                sdx += b as f64;
            }
            (sd as f32, (sdx * inv as f64) as f32)
        })
        .collect();
    for (ch, (sd, sdx)) in sums.into_iter().enumerate() {
        dbeta[ch] = sd;
        dgamma[ch] = sdx;
    }
}

/// Train-mode input gradient from the sums of [`batch_norm_backward_sums`]:
/// dx = γ·inv_std/M · (M·dy − dβ − x̂·dγ). x, dy, dx: [n, c, h, w]
pub fn batch_norm_backward_input(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    saved: &BnSaved,
    dgamma: &[f32],
    dbeta: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    dx: &mut [f32],
) {
    let m = (n * hw) as f32;
    let per = planes_per_task(hw);
    let chunk = hw * per;
    dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk))).enumerate().for_each(
        |(t, (dxc, (xc, dc)))| {
            for (kk, (dxp, (xp, dp))) in dxc.chunks_mut(hw).zip(xc.chunks(hw).zip(dc.chunks(hw))).enumerate() {
                let ch = (t * per + kk) % c;
                let (mean, inv) = (saved.mean[ch], saved.inv_std[ch]);
                let k = gamma[ch] * inv / m;
                let (db, dg) = (dbeta[ch], dgamma[ch]);
                for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dp) {
                    let xhat = (xv - mean) * inv;
                    *o = k * (m * d - db - xhat * dg);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    #[test]
    fn train_and_eval_agree_with_reference() {
        let mut rng = Rng::new(9);
        for &(n, c, hw) in &[(1, 1, 2), (3, 5, 7), (4, 3, 1), (2, 17, 25)] {
            let x: Vec<f32> = rand_vec(n * c * hw, &mut rng).iter().map(|v| v * 3.0 + 1.0).collect();
            let gamma = rand_vec(c, &mut rng);
            let beta = rand_vec(c, &mut rng);
            let dy = rand_vec(n * c * hw, &mut rng);
            let (mut rm, mut rv) = (vec![0.1; c], vec![2.0; c]);
            let (mut rm_r, mut rv_r) = (rm.clone(), rv.clone());
            let (mut y, mut y_r) = (vec![7.0; x.len()], vec![0.0; x.len()]);
            let saved = batch_norm_forward_train(&x, &gamma, &beta, n, c, hw, 1e-5, 0.1, &mut rm, &mut rv, &mut y);
            reference::batch_norm_forward_train(&x, &gamma, &beta, n, c, hw, 1e-5, 0.1, &mut rm_r, &mut rv_r, &mut y_r);
            assert_close(&y, &y_r, 1e-4, "bn train y");
            assert_close(&rm, &rm_r, 1e-5, "bn running mean");
            assert_close(&rv, &rv_r, 1e-4, "bn running var");

            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            batch_norm_backward_sums(&x, &dy, &saved, n, c, hw, &mut dg, &mut db);
            let mut dx = vec![7.0; x.len()];
            batch_norm_backward_input(&x, &dy, &gamma, &saved, &dg, &db, n, c, hw, &mut dx);
            let (mut dx_r, mut dg_r, mut db_r) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
            reference::batch_norm_backward_train(&x, &dy, &gamma, n, c, hw, 1e-5, &mut dx_r, &mut dg_r, &mut db_r);
            assert_close(&dg, &dg_r, 1e-3, "bn dgamma");
            assert_close(&db, &db_r, 1e-3, "bn dbeta");
            assert_close(&dx, &dx_r, 1e-3, "bn dx");

            batch_norm_forward_eval(&x, &gamma, &beta, &rm, &rv, c, hw, 1e-5, &mut y);
            reference::batch_norm_forward_eval(&x, &gamma, &beta, &rm, &rv, c, hw, 1e-5, &mut y_r);
            assert_close(&y, &y_r, 1e-4, "bn eval y");
        }
    }
}
