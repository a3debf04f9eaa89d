//! Batch normalisation over `[n, c, h, w]` (per channel): train mode with batch statistics,
//! eval mode with running statistics, and the backward pass split into its per-channel sums
//! (which are also dγ and dβ) and the input gradient. A ReLU that follows the normalisation
//! can be fused in: the forward writes relu(bn(x)) directly, and the backward recomputes the
//! ReLU's mask from x (bn(x) > t), so the ReLU needs neither its own pass nor a saved tensor.
//!
//! Channel sums are taken per image (each plane's 16-lane f32 sum widened to f64) and added
//! in image order: the result does not depend on the thread count, and a producer that sums
//! its own output image by image (the convolution) gives bit-identical statistics.

use rayon::prelude::*;

/// Per-channel statistics saved by the train-mode forward for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct BnSaved {
    pub mean: Vec<f32>,
    pub inv_std: Vec<f32>,
}

/// Per-channel statistics of a batch in f64: Σx, and m2 = Σ(x − mean)², the squared
/// deviations about the mean of what was summed (not Σx²: E[x²] − E[x]² cancels
/// catastrophically when the mean is large next to the spread). Each plane is summed in two
/// passes while it is in cache (its sum, then its deviations about its own mean), and planes
/// combine with Chan's update, in a fixed order.
#[derive(Clone, Debug, PartialEq)]
pub struct ChannelSums {
    pub sum: Vec<f64>,
    pub m2: Vec<f64>,
    /// Values per channel behind `sum` and `m2`.
    pub count: f64,
}

/// Per-channel pairs of plain sums (the backward's Σ dz and Σ dz·(x − mean)).
#[derive(Clone, Debug, PartialEq)]
struct PairSums {
    a: Vec<f64>,
    b: Vec<f64>,
}

/// A ReLU fused after the normalisation: `y = bn(x)` passes where `scale·x + shift > threshold`
/// (the normalisation's own affine map); its gradient there is `dy + extra` (`extra`: the L1
/// activation penalty's λ/n, 0 for a plain ReLU).
#[derive(Clone, Debug)]
pub struct ReluMask {
    pub scale: Vec<f32>,
    pub shift: Vec<f32>,
    pub threshold: f32,
    pub extra: f32,
}

const LANES: usize = 16;

/// (Σ v, Σ (v − mean)²) of a plane, mean = Σ v / len, in two passes of 16 independent
/// partial sums: one f32 accumulator is a serial chain the compiler must keep in order (one
/// add per 4 cycles); 16 lanes vectorise.
#[inline(always)]
fn sum_and_deviations(p: &[f32]) -> (f32, f32) {
    let mut a = [0.0f32; LANES];
    let chunks = p.chunks_exact(LANES);
    let rest = chunks.remainder();
    for ch in chunks {
        for i in 0..LANES {
            a[i] += ch[i];
        }
    }
    let mut sa = lane_sum(&a);
    for &v in rest {
        sa += v;
    }
    let mean = sa / p.len().max(1) as f32;
    let mut b = [0.0f32; LANES];
    for ch in p.chunks_exact(LANES) {
        for i in 0..LANES {
            let d = ch[i] - mean;
            b[i] += d * d;
        }
    }
    let mut sb = lane_sum(&b);
    for &v in rest {
        sb += (v - mean) * (v - mean);
    }
    (sa, sb)
}

/// Σ of 16 lanes as a tree (vector halves added), not a serial chain.
#[inline(always)]
fn lane_sum(a: &[f32; LANES]) -> f32 {
    let mut h = *a;
    let mut w = LANES / 2;
    while w > 0 {
        for i in 0..w {
            h[i] += h[i + w];
        }
        w /= 2;
    }
    h[0]
}

/// The ReLU mask's gradient: `dy + extra` where `a > t`, else 0 (a select, not a branch).
#[inline(always)]
fn masked(a: f32, t: f32, dy: f32, extra: f32) -> f32 {
    let pass = dy + extra;
    if a > t {
        pass
    } else {
        0.0
    }
}

/// (Σ dz, Σ dz·(x − mean)) of a plane, dz = dy, or dy through the fused ReLU's mask
/// (`mask`: scale, shift, threshold, extra of this channel).
#[inline(always)]
fn grad_sums(x: &[f32], d: &[f32], mean: f32, mask: Option<(f32, f32, f32, f32)>) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (xc, dc) = (x.chunks_exact(LANES), d.chunks_exact(LANES));
    let (xr, dr) = (xc.remainder(), dc.remainder());
    match mask {
        None => {
            for (xs, ds) in xc.zip(dc) {
                for i in 0..LANES {
                    a[i] += ds[i];
                    b[i] += ds[i] * (xs[i] - mean);
                }
            }
        }
        Some((sc, sh, t, e)) => {
            for (xs, ds) in xc.zip(dc) {
                for i in 0..LANES {
                    let dz = masked(xs[i] * sc + sh, t, ds[i], e);
                    a[i] += dz;
                    b[i] += dz * (xs[i] - mean);
                }
            }
        }
    }
    let (mut sa, mut sb) = (lane_sum(&a), lane_sum(&b));
    for (&xv, &dv) in xr.iter().zip(dr) {
        let dz = mask.map_or(dv, |(sc, sh, t, e)| masked(xv * sc + sh, t, dv, e));
        sa += dz;
        sb += dz * (xv - mean);
    }
    (sa, sb)
}

/// Writes image `x: [c, hw]`'s per-channel (Σ, Σ(x − plane mean)²) into `sum`, `m2`.
fn image_sums(x: &[f32], hw: usize, sum: &mut [f64], m2: &mut [f64]) {
    #[cfg(target_arch = "x86_64")]
    if super::sgemm512::available() {
        // SAFETY: the CPU has AVX-512F; x holds sum.len() planes of hw values.
        return unsafe { x86::image_sums(x, hw, sum, m2) };
    }
    for (ch, p) in x.chunks_exact(hw).enumerate() {
        let (a, b) = sum_and_deviations(p);
        sum[ch] = a as f64;
        m2[ch] = b as f64;
    }
}

impl ChannelSums {
    pub fn zeros(c: usize) -> Self {
        ChannelSums { sum: vec![0.0; c], m2: vec![0.0; c], count: 0.0 }
    }

    /// The statistics of one image `x: [c, hw]`.
    pub fn of_image(x: &[f32], c: usize, hw: usize) -> Self {
        let mut s = ChannelSums::zeros(c);
        image_sums(&x[..c * hw], hw, &mut s.sum, &mut s.m2);
        s.count = hw as f64;
        s
    }

    /// Adds `other`'s values (Chan et al.'s pairwise update of the squared deviations).
    pub fn merge(&mut self, other: &ChannelSums) {
        let (na, nb) = (self.count, other.count);
        if nb == 0.0 {
            return;
        }
        for ch in 0..self.sum.len() {
            if na > 0.0 {
                let delta = other.sum[ch] / nb - self.sum[ch] / na;
                self.m2[ch] += other.m2[ch] + delta * delta * na * nb / (na + nb);
            } else {
                self.m2[ch] = other.m2[ch];
            }
            self.sum[ch] += other.sum[ch];
        }
        self.count = na + nb;
    }

    /// The statistics of per-image parts, merged in the order given.
    pub fn total<'a>(parts: impl IntoIterator<Item = &'a ChannelSums>, c: usize) -> Self {
        let mut t = ChannelSums::zeros(c);
        for p in parts {
            t.merge(p);
        }
        t
    }
}

/// Per-channel sums of `x: [n, c, hw]`, images in parallel.
pub fn channel_sums(x: &[f32], n: usize, c: usize, hw: usize) -> ChannelSums {
    let parts: Vec<ChannelSums> =
        x[..n * c * hw].par_chunks(c * hw).map(|xn| ChannelSums::of_image(xn, c, hw)).collect();
    ChannelSums::total(&parts, c)
}

impl BnSaved {
    /// Batch mean and inverse standard deviation from channel sums over `count` values per
    /// channel; updates the running statistics as PyTorch does (momentum, unbiased variance).
    pub fn from_sums(
        sums: &ChannelSums,
        count: usize,
        eps: f32,
        momentum: f32,
        running_mean: &mut [f32],
        running_var: &mut [f32],
    ) -> Self {
        let m = count as f64;
        assert_eq!(sums.count, m, "statistics of {} values per channel, expected {m}", sums.count);
        let unbias = if m > 1.0 { m / (m - 1.0) } else { 1.0 };
        let c = sums.sum.len();
        let mut saved = BnSaved { mean: Vec::with_capacity(c), inv_std: Vec::with_capacity(c) };
        for ch in 0..c {
            let mean = sums.sum[ch] / m;
            let var = (sums.m2[ch] / m).max(0.0);
            saved.mean.push(mean as f32);
            saved.inv_std.push(1.0 / (var as f32 + eps).sqrt());
            running_mean[ch] = (1.0 - momentum) * running_mean[ch] + momentum * mean as f32;
            running_var[ch] = (1.0 - momentum) * running_var[ch] + momentum * (var * unbias) as f32;
        }
        saved
    }

    /// The affine map y = scale·x + shift these statistics give with γ and β.
    pub fn scale_shift(&self, gamma: &[f32], beta: &[f32]) -> (Vec<f32>, Vec<f32>) {
        let scale: Vec<f32> = gamma.iter().zip(&self.inv_std).map(|(g, i)| g * i).collect();
        let shift = beta.iter().zip(&self.mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
        (scale, shift)
    }
}

/// The eval-mode affine map from running statistics.
pub fn eval_scale_shift(
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    eps: f32,
) -> (Vec<f32>, Vec<f32>) {
    let scale: Vec<f32> = gamma.iter().zip(running_var).map(|(g, v)| g / (v + eps).sqrt()).collect();
    let shift = beta.iter().zip(running_mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
    (scale, shift)
}

/// Planes per parallel task: small planes are grouped so a task has ~16K values (one rayon
/// task per 32x32 plane cost more in scheduling than in arithmetic).
fn planes_per_task(hw: usize) -> usize {
    (16384 / hw.max(1)).max(1)
}

multiversion! {
    /// Planes `x` (channels from `ch0`, cycling through `c`) mapped to y = scale·x + shift,
    /// then through the ReLU if `relu` (its threshold) is given.
    fn apply_planes(x: &[f32], y: &mut [f32], hw: usize, ch0: usize, scale: &[f32], shift: &[f32], relu: Option<f32>) {
        let c = scale.len();
        for (k, (yp, xp)) in y.chunks_mut(hw).zip(x.chunks(hw)).enumerate() {
            let ch = (ch0 + k) % c;
            let (a, b) = (scale[ch], shift[ch]);
            match relu {
                None => yp.iter_mut().zip(xp).for_each(|(o, &v)| *o = v * a + b),
                Some(t) => yp.iter_mut().zip(xp).for_each(|(o, &v)| {
                    let z = v * a + b;
                    *o = if z > t { z } else { 0.0 };
                }),
            }
        }
    }
}

/// y = scale[ch]·x + shift[ch] per channel plane, then relu with threshold `relu` if given
/// (the train- and eval-mode forward once the statistics are known). x, y: [n, c, hw]
pub fn batch_norm_apply(x: &[f32], scale: &[f32], shift: &[f32], hw: usize, relu: Option<f32>, y: &mut [f32]) {
    let per = planes_per_task(hw);
    y.par_chunks_mut(hw * per).zip(x.par_chunks(hw * per)).enumerate().for_each(|(t, (yc, xc))| {
        apply_planes(xc, yc, hw, t * per, scale, shift, relu);
    });
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
    let sums = channel_sums(x, n, c, hw);
    let saved = BnSaved::from_sums(&sums, n * hw, eps, momentum, running_mean, running_var);
    let (scale, shift) = saved.scale_shift(gamma, beta);
    batch_norm_apply(x, &scale, &shift, hw, None, y);
    saved
}

/// Eval-mode forward with running statistics. x, y: [n, c, h, w]
pub fn batch_norm_forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    hw: usize,
    eps: f32,
    y: &mut [f32],
) {
    let (scale, shift) = eval_scale_shift(gamma, beta, running_mean, running_var, eps);
    batch_norm_apply(x, &scale, &shift, hw, None, y);
}

/// This channel's ReLU-mask parameters.
fn mask_of(mask: Option<&ReluMask>, ch: usize) -> Option<(f32, f32, f32, f32)> {
    mask.map(|m| (m.scale[ch], m.shift[ch], m.threshold, m.extra))
}

/// Adds image `x, dy: [c, hw]`'s (Σ dz, Σ dz·(x − mean)) to `sd`, `sdx`.
fn add_image_grad_sums(
    x: &[f32],
    dy: &[f32],
    hw: usize,
    saved: &BnSaved,
    mask: Option<&ReluMask>,
    sd: &mut [f64],
    sdx: &mut [f64],
) {
    for (ch, (xp, dp)) in x.chunks_exact(hw).zip(dy.chunks_exact(hw)).enumerate() {
        let (mean, m) = (saved.mean[ch], mask_of(mask, ch));
        #[cfg(target_arch = "x86_64")]
        let (a, b) = if super::sgemm512::available() {
            // SAFETY: the CPU has AVX-512F.
            unsafe { x86::grad_sums(xp, dp, mean, m) }
        } else {
            grad_sums(xp, dp, mean, m)
        };
        #[cfg(not(target_arch = "x86_64"))]
        let (a, b) = grad_sums(xp, dp, mean, m);
        sd[ch] += a as f64;
        sdx[ch] += b as f64;
    }
}

/// Per-channel sums Σ dz (= dβ) and Σ dz·x̂ (= dγ) of the train-mode backward; dz is dy, or
/// dy through the fused ReLU's mask. Images in parallel, added in image order.
pub fn batch_norm_backward_sums(
    x: &[f32],
    dy: &[f32],
    saved: &BnSaved,
    mask: Option<&ReluMask>,
    n: usize,
    c: usize,
    hw: usize,
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    let chw = c * hw;
    // per-image pairs of per-channel sums, added in image order: `a` holds Σ dz and `b`
    // Σ dz·(x − mean)
    let parts: Vec<PairSums> = x[..n * chw]
        .par_chunks(chw)
        .zip(dy[..n * chw].par_chunks(chw))
        .map(|(xn, dn)| {
            let mut s = PairSums { a: vec![0.0; c], b: vec![0.0; c] };
            add_image_grad_sums(xn, dn, hw, saved, mask, &mut s.a, &mut s.b);
            s
        })
        .collect();
    let (mut ta, mut tb) = (vec![0.0f64; c], vec![0.0f64; c]);
    for p in &parts {
        ta.iter_mut().zip(&p.a).for_each(|(t, v)| *t += v);
        tb.iter_mut().zip(&p.b).for_each(|(t, v)| *t += v);
    }
    for ch in 0..c {
        dbeta[ch] = ta[ch] as f32;
        dgamma[ch] = (tb[ch] * saved.inv_std[ch] as f64) as f32;
    }
}

multiversion! {
    /// The input gradient of planes `x, dy` (channels from `ch0`, cycling through `c`).
    fn input_grad_planes(x: &[f32], dy: &[f32], dx: &mut [f32], hw: usize, ch0: usize, m: f32, gamma: &[f32], saved: &BnSaved, mask: Option<&ReluMask>, dgamma: &[f32], dbeta: &[f32]) {
        let c = gamma.len();
        for (kk, (dxp, (xp, dp))) in dx.chunks_mut(hw).zip(x.chunks(hw).zip(dy.chunks(hw))).enumerate() {
            let ch = (ch0 + kk) % c;
            let (mean, inv) = (saved.mean[ch], saved.inv_std[ch]);
            let k = gamma[ch] * inv / m;
            let (db, dg) = (dbeta[ch], dgamma[ch]);
            match mask_of(mask, ch) {
                None => {
                    for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dp) {
                        let xhat = (xv - mean) * inv;
                        *o = k * (m * d - db - xhat * dg);
                    }
                }
                Some((sc, sh, t, e)) => {
                    for ((o, &xv), &d) in dxp.iter_mut().zip(xp).zip(dp) {
                        let dz = masked(xv * sc + sh, t, d, e);
                        let xhat = (xv - mean) * inv;
                        *o = k * (m * dz - db - xhat * dg);
                    }
                }
            }
        }
    }
}

/// Train-mode input gradient from the sums of [`batch_norm_backward_sums`] (same `mask`):
/// dx = γ·inv_std/M · (M·dz − dβ − x̂·dγ). x, dy, dx: [n, c, h, w]
pub fn batch_norm_backward_input(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    saved: &BnSaved,
    mask: Option<&ReluMask>,
    dgamma: &[f32],
    dbeta: &[f32],
    n: usize,
    hw: usize,
    dx: &mut [f32],
) {
    let m = (n * hw) as f32;
    let per = planes_per_task(hw);
    let chunk = hw * per;
    dx.par_chunks_mut(chunk).zip(x.par_chunks(chunk).zip(dy.par_chunks(chunk))).enumerate().for_each(
        |(t, (dxc, (xc, dc)))| input_grad_planes(xc, dc, dxc, hw, t * per, m, gamma, saved, mask, dgamma, dbeta),
    );
}

/// The two reductions in AVX-512 intrinsics: written as 16-lane arrays (above) the compiler
/// vectorises them 4 lanes at a time with scalar loads and inserts, 3–4x slower.
#[cfg(target_arch = "x86_64")]
mod x86 {
    use crate::kernels::simd::lanes;
    use std::arch::x86_64::*;

    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `x` holds `sum.len()` planes of `hw`
    /// values and `sumsq.len() == sum.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn image_sums(x: &[f32], hw: usize, sum: &mut [f64], m2: &mut [f64]) {
        for (ch, p) in x.chunks_exact(hw).enumerate() {
            let full = p.len() / 16 * 16;
            // SAFETY: loads stay inside p (the last one masked to its length).
            let a = unsafe {
                let mut a = _mm512_setzero_ps();
                for i in (0..full).step_by(16) {
                    a = _mm512_add_ps(a, _mm512_loadu_ps(p.as_ptr().add(i)));
                }
                if full < p.len() {
                    a = _mm512_add_ps(a, _mm512_maskz_loadu_ps(lanes(p.len() - full), p.as_ptr().add(full)));
                }
                _mm512_reduce_add_ps(a)
            };
            let mean = a / p.len().max(1) as f32;
            // SAFETY: as above; masked-off lanes load 0 and subtract to −mean, so they are
            // masked out of the sum as well.
            let b = unsafe {
                let (mut b, m) = (_mm512_setzero_ps(), _mm512_set1_ps(mean));
                for i in (0..full).step_by(16) {
                    let d = _mm512_sub_ps(_mm512_loadu_ps(p.as_ptr().add(i)), m);
                    b = _mm512_fmadd_ps(d, d, b);
                }
                if full < p.len() {
                    let k = lanes(p.len() - full);
                    let d = _mm512_maskz_sub_ps(k, _mm512_maskz_loadu_ps(k, p.as_ptr().add(full)), m);
                    b = _mm512_fmadd_ps(d, d, b);
                }
                _mm512_reduce_add_ps(b)
            };
            sum[ch] = a as f64;
            m2[ch] = b as f64;
        }
    }

    /// [`super::grad_sums`] of one plane.
    ///
    /// # Safety
    /// The CPU must support AVX-512F (`sgemm512::available()`); `d.len() >= x.len()`.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn grad_sums(x: &[f32], d: &[f32], mean: f32, mask: Option<(f32, f32, f32, f32)>) -> (f32, f32) {
        let n = x.len().min(d.len());
        // SAFETY: loads stay inside x and d (the last ones masked to their length).
        unsafe {
            let (mut a, mut b) = (_mm512_setzero_ps(), _mm512_setzero_ps());
            let mv = _mm512_set1_ps(mean);
            let (sc, sh, t, e) = mask.unwrap_or((0.0, 0.0, 0.0, 0.0));
            let (scv, shv, tv, ev) = (_mm512_set1_ps(sc), _mm512_set1_ps(sh), _mm512_set1_ps(t), _mm512_set1_ps(e));
            // `valid`: the lanes inside the plane (dz must be 0 past its end)
            let mut step = |xv: __m512, dv: __m512, valid: __mmask16| {
                let dz = match mask {
                    None => dv,
                    Some(_) => {
                        let z = _mm512_fmadd_ps(xv, scv, shv);
                        let pass = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(z, tv) & valid;
                        _mm512_maskz_add_ps(pass, dv, ev)
                    }
                };
                a = _mm512_add_ps(a, dz);
                b = _mm512_fmadd_ps(dz, _mm512_sub_ps(xv, mv), b);
            };
            let full = n / 16 * 16;
            for i in (0..full).step_by(16) {
                step(_mm512_loadu_ps(x.as_ptr().add(i)), _mm512_loadu_ps(d.as_ptr().add(i)), 0xFFFF);
            }
            if full < n {
                let m = lanes(n - full);
                let (xv, dv) =
                    (_mm512_maskz_loadu_ps(m, x.as_ptr().add(full)), _mm512_maskz_loadu_ps(m, d.as_ptr().add(full)));
                step(xv, dv, m);
            }
            (_mm512_reduce_add_ps(a), _mm512_reduce_add_ps(b))
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
    fn train_and_eval_agree_with_reference() {
        let mut rng = Rng::new(9);
        for &(n, c, hw) in &[(1, 1, 2), (3, 5, 7), (4, 3, 1), (2, 17, 25), (3, 4, 70)] {
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
            batch_norm_backward_sums(&x, &dy, &saved, None, n, c, hw, &mut dg, &mut db);
            let mut dx = vec![7.0; x.len()];
            batch_norm_backward_input(&x, &dy, &gamma, &saved, None, &dg, &db, n, hw, &mut dx);
            let (mut dx_r, mut dg_r, mut db_r) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
            reference::batch_norm_backward_train(&x, &dy, &gamma, n, c, hw, 1e-5, &mut dx_r, &mut dg_r, &mut db_r);
            assert_close(&dg, &dg_r, 1e-3, "bn dgamma");
            assert_close(&db, &db_r, 1e-3, "bn dbeta");
            assert_close(&dx, &dx_r, 1e-3, "bn dx");

            batch_norm_forward_eval(&x, &gamma, &beta, &rm, &rv, hw, 1e-5, &mut y);
            reference::batch_norm_forward_eval(&x, &gamma, &beta, &rm, &rv, c, hw, 1e-5, &mut y_r);
            assert_close(&y, &y_r, 1e-4, "bn eval y");
        }
    }

    /// BN with a fused ReLU equals the reference BN followed by the reference ReLU, forward
    /// and backward (thresholds 0 and above, with and without the L1 term).
    #[test]
    fn fused_relu_agrees_with_bn_then_relu() {
        let mut rng = Rng::new(10);
        for &(n, c, hw, t, l1) in &[(2, 3, 5, 0.0f32, 0.0f32), (3, 4, 33, 0.3, 0.5), (1, 2, 64, 0.01, 0.0)] {
            let x: Vec<f32> = rand_vec(n * c * hw, &mut rng).iter().map(|v| v * 2.0 - 0.5).collect();
            let gamma = rand_vec(c, &mut rng);
            let beta = rand_vec(c, &mut rng);
            let dy = rand_vec(n * c * hw, &mut rng);
            let (mut rm, mut rv) = (vec![0.0; c], vec![1.0; c]);
            let sums = channel_sums(&x, n, c, hw);
            let saved = BnSaved::from_sums(&sums, n * hw, 1e-5, 0.1, &mut rm, &mut rv);
            let (scale, shift) = saved.scale_shift(&gamma, &beta);
            let mut y = vec![7.0; x.len()];
            batch_norm_apply(&x, &scale, &shift, hw, Some(t), &mut y);
            // reference: BN, then ReLU
            let (mut rm_r, mut rv_r) = (vec![0.0; c], vec![1.0; c]);
            let (mut z_r, mut y_r) = (vec![0.0; x.len()], vec![0.0; x.len()]);
            reference::batch_norm_forward_train(&x, &gamma, &beta, n, c, hw, 1e-5, 0.1, &mut rm_r, &mut rv_r, &mut z_r);
            reference::relu_forward(&z_r, t, &mut y_r);
            assert_close(&y, &y_r, 1e-4, "bn+relu forward");

            let extra = l1 / n as f32;
            let mask = ReluMask { scale: scale.clone(), shift: shift.clone(), threshold: t, extra };
            let (mut dg, mut db) = (vec![0.0; c], vec![0.0; c]);
            batch_norm_backward_sums(&x, &dy, &saved, Some(&mask), n, c, hw, &mut dg, &mut db);
            let mut dx = vec![7.0; x.len()];
            batch_norm_backward_input(&x, &dy, &gamma, &saved, Some(&mask), &dg, &db, n, hw, &mut dx);
            let mut dz_r = vec![0.0; x.len()];
            reference::relu_backward(&z_r, &dy, t, extra, &mut dz_r);
            let (mut dx_r, mut dg_r, mut db_r) = (vec![0.0; x.len()], vec![0.0; c], vec![0.0; c]);
            reference::batch_norm_backward_train(&x, &dz_r, &gamma, n, c, hw, 1e-5, &mut dx_r, &mut dg_r, &mut db_r);
            assert_close(&dg, &dg_r, 1e-3, "bn+relu dgamma");
            assert_close(&db, &db_r, 1e-3, "bn+relu dbeta");
            assert_close(&dx, &dx_r, 1e-3, "bn+relu dx");
        }
    }

    /// The portable reductions (used without AVX-512) agree with the AVX-512 ones.
    #[test]
    fn portable_reductions_agree_with_avx512() {
        #[cfg(target_arch = "x86_64")]
        if crate::kernels::sgemm512::available() {
            let mut rng = Rng::new(12);
            for len in [1, 15, 16, 17, 64, 100] {
                let x = rand_vec(len, &mut rng);
                let d = rand_vec(len, &mut rng);
                let (mut s, mut q) = ([0.0f64], [0.0f64]);
                // SAFETY: the CPU has AVX-512F.
                unsafe { x86::image_sums(&x, len, &mut s, &mut q) };
                let (a, b) = sum_and_deviations(&x);
                assert!((s[0] - a as f64).abs() < 1e-4 && (q[0] - b as f64).abs() < 1e-4, "{len}");
                for mask in [None, Some((0.7, 0.4, 0.1, 0.3))] {
                    // SAFETY: the CPU has AVX-512F.
                    let (a, b) = unsafe { x86::grad_sums(&x, &d, 0.2, mask) };
                    let (c, e) = grad_sums(&x, &d, 0.2, mask);
                    assert!((a - c).abs() < 1e-4 && (b - e).abs() < 1e-4, "{len} {mask:?}: {a} {b} vs {c} {e}");
                }
            }
        }
    }

    #[test]
    fn channel_sums_are_per_image_sums_added_in_order() {
        let mut rng = Rng::new(11);
        let (n, c, hw) = (5, 3, 37);
        let x = rand_vec(n * c * hw, &mut rng);
        let parts: Vec<ChannelSums> = x.chunks(c * hw).map(|xn| ChannelSums::of_image(xn, c, hw)).collect();
        assert_eq!(channel_sums(&x, n, c, hw), ChannelSums::total(&parts, c));
        let s = channel_sums(&x, n, c, hw);
        for ch in 0..c {
            let v: Vec<f64> =
                (0..n).flat_map(|i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().map(|&v| v as f64)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            assert!((s.sum[ch] - v.iter().sum::<f64>()).abs() < 1e-4);
            assert!((s.m2[ch] - v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>()).abs() < 1e-3);
        }
    }

    #[test]
    fn variance_survives_a_large_mean() {
        // mean 1000, std 0.01: E[x²] − E[x]² in f32 partial sums loses every digit of it
        let mut rng = Rng::new(13);
        let (n, c, hw) = (4, 2, 1000);
        let x: Vec<f32> = (0..n * c * hw).map(|_| 1000.0 + 0.01 * rng.normal()).collect();
        let s = channel_sums(&x, n, c, hw);
        for ch in 0..c {
            let v: Vec<f64> =
                (0..n).flat_map(|i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().map(|&v| v as f64)).collect();
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            let var = v.iter().map(|a| (a - mean) * (a - mean)).sum::<f64>() / v.len() as f64;
            let got = s.m2[ch] / s.count;
            assert!((got - var).abs() < 0.02 * var, "channel {ch}: variance {got} vs {var}");
        }
    }
}
