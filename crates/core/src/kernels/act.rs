//! Thresholded ReLU (y = x if x > t else 0; the paper's ReluT raises t) and the residual add.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// y = x where x > threshold, else 0.
pub fn relu_forward(x: &[f32], threshold: f32, y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK)).for_each(|(yc, xc)| {
        yc.iter_mut().zip(xc).for_each(|(o, &v)| *o = if v > threshold { v } else { 0.0 });
    });
}

/// dx = dy + extra where x > threshold, else 0. `extra` is the gradient of an L1 penalty
/// on the (positive) outputs, λ/n; 0 for a plain ReLU.
pub fn relu_backward(x: &[f32], dy: &[f32], threshold: f32, extra: f32, dx: &mut [f32]) {
    dx.par_chunks_mut(CHUNK).zip(x.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK))).for_each(|(dc, (xc, gc))| {
        for ((o, &v), &g) in dc.iter_mut().zip(xc).zip(gc) {
            // computed unconditionally so that the choice is a select, not a branch: a branch
            // on ReLU's data-dependent mask was mispredicted half the time and not vectorised
            let pass = g + extra;
            *o = if v > threshold { pass } else { 0.0 };
        }
    });
}

multiversion! {
    /// One chunk of [`add_relu`].
    fn add_relu_chunk(a: &[f32], b: &[f32], threshold: f32, y: &mut [f32]) {
        for ((o, &u), &v) in y.iter_mut().zip(a).zip(b) {
            let z = u + v;
            *o = if z > threshold { z } else { 0.0 };
        }
    }
}

/// y = relu(a + b) with threshold `threshold` (the residual add and the ReLU after it, one
/// pass). With a threshold ≥ 0, y > threshold exactly where a + b > threshold, so y serves
/// as the ReLU's backward mask.
pub fn add_relu(a: &[f32], b: &[f32], threshold: f32, y: &mut [f32]) {
    y.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(yc, (ac, bc))| add_relu_chunk(ac, bc, threshold, yc));
}

/// y = a + b (the residual add; its backward hands dy to both inputs unchanged).
pub fn add(a: &[f32], b: &[f32], y: &mut [f32]) {
    y.par_chunks_mut(CHUNK).zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK))).for_each(|(yc, (ac, bc))| {
        for ((o, &u), &v) in yc.iter_mut().zip(ac).zip(bc) {
            *o = u + v;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::reference;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    #[test]
    fn relu_and_add_agree_with_reference() {
        let mut rng = Rng::new(2);
        for &n in &[1usize, 7, CHUNK + 3] {
            let x = rand_vec(n, &mut rng);
            let dy = rand_vec(n, &mut rng);
            for t in [0.0f32, 0.01, -0.2] {
                let (mut y, mut yr) = (vec![0.0; n], vec![0.0; n]);
                relu_forward(&x, t, &mut y);
                reference::relu_forward(&x, t, &mut yr);
                assert_close(&y, &yr, 0.0, "relu");
                relu_backward(&x, &dy, t, 0.25, &mut y);
                reference::relu_backward(&x, &dy, t, 0.25, &mut yr);
                assert_close(&y, &yr, 0.0, "relu backward");
            }
            let mut y = vec![0.0; n];
            add(&x, &dy, &mut y);
            let want: Vec<f32> = x.iter().zip(&dy).map(|(a, b)| a + b).collect();
            assert_close(&y, &want, 0.0, "add");
            for t in [0.0f32, 0.3] {
                let (mut fused, mut want_relu) = (vec![7.0; n], vec![0.0; n]);
                add_relu(&x, &dy, t, &mut fused);
                reference::relu_forward(&want, t, &mut want_relu);
                assert_close(&fused, &want_relu, 0.0, "add + relu");
            }
        }
    }
}
