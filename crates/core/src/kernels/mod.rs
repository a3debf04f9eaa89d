//! CPU kernels: free functions over slices plus a geometry struct. Every fast kernel has a
//! plain twin in [`reference`] and a test that they agree on random, awkward sizes.

pub mod act;
pub mod conv;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod reference;
pub mod sgemm512;
pub mod sparsity;

#[cfg(test)]
pub(crate) mod testutil {
    use crate::rng::Rng;

    pub fn rand_vec(n: usize, rng: &mut Rng) -> Vec<f32> {
        (0..n).map(|_| rng.normal()).collect()
    }

    /// Asserts element-wise agreement within an absolute+relative tolerance.
    pub fn assert_close(a: &[f32], b: &[f32], tol: f32, what: &str) {
        assert_eq!(a.len(), b.len(), "{what}: lengths differ");
        for (i, (x, y)) in a.iter().zip(b).enumerate() {
            let err = (x - y).abs();
            assert!(err <= tol * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y} (err {err})");
        }
    }
}
