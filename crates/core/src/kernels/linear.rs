//! Fully connected layer: y = x · Wᵀ + b with W stored `[out, in]` (PyTorch's layout).

use super::gemm::sgemm;

/// x: [n, d_in], w: [d_out, d_in], bias: [d_out], y: [n, d_out]
pub fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize, y: &mut [f32]) {
    sgemm(n, d_out, d_in, x, false, w, true, y, false, true);
    if let Some(b) = bias {
        for row in y.chunks_mut(d_out) {
            row.iter_mut().zip(b).for_each(|(v, b)| *v += b);
        }
    }
}

/// dx = dy · W. dy: [n, d_out], w: [d_out, d_in], dx: [n, d_in] (overwritten)
pub fn linear_backward_input(dy: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize, dx: &mut [f32]) {
    sgemm(n, d_in, d_out, dy, false, w, false, dx, false, true);
}

/// dw = dyᵀ · x, db = Σ_n dy. x: [n, d_in], dy: [n, d_out], dw: [d_out, d_in], db: [d_out]
pub fn linear_backward_weight(
    x: &[f32],
    dy: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    sgemm(d_out, d_in, n, dy, true, x, false, dw, false, true);
    if let Some(db) = db {
        db.fill(0.0);
        for row in dy.chunks(d_out) {
            db.iter_mut().zip(row).for_each(|(d, v)| *d += v);
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
    fn agrees_with_reference() {
        let mut rng = Rng::new(5);
        for &(n, di, dout) in &[(1, 1, 1), (3, 17, 5), (13, 64, 10), (7, 5, 33)] {
            let x = rand_vec(n * di, &mut rng);
            let w = rand_vec(dout * di, &mut rng);
            let b = rand_vec(dout, &mut rng);
            let dy = rand_vec(n * dout, &mut rng);
            let (mut y, mut yr) = (vec![0.0; n * dout], vec![0.0; n * dout]);
            linear_forward(&x, &w, Some(&b), n, di, dout, &mut y);
            reference::linear_forward(&x, &w, Some(&b), n, di, dout, &mut yr);
            assert_close(&y, &yr, 1e-4, "linear forward");
            let (mut dx, mut dxr) = (vec![0.0; n * di], vec![0.0; n * di]);
            linear_backward_input(&dy, &w, n, di, dout, &mut dx);
            reference::linear_backward_input(&dy, &w, n, di, dout, &mut dxr);
            assert_close(&dx, &dxr, 1e-4, "linear dx");
            let (mut dw, mut dwr) = (vec![0.0; dout * di], vec![0.0; dout * di]);
            let (mut db, mut dbr) = (vec![0.0; dout], vec![0.0; dout]);
            linear_backward_weight(&x, &dy, n, di, dout, &mut dw, Some(&mut db));
            reference::linear_backward_weight(&x, &dy, n, di, dout, &mut dwr, Some(&mut dbr));
            assert_close(&dw, &dwr, 1e-4, "linear dw");
            assert_close(&db, &dbr, 1e-4, "linear db");
        }
    }
}
