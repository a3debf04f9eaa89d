//! CPU kernels: free functions over slices plus a geometry struct. Every fast kernel has a
//! plain twin in [`reference`] and a test that they agree on random, awkward sizes.

/// Defines `fn $name` as a plain Rust loop compiled twice, for the baseline target and for
/// AVX-512, and picks the copy the CPU runs at call time. The pointwise kernels are written
/// so the compiler vectorises them; without this they would get 4-wide SSE2 only (the build
/// targets any x86-64). Rayon closures are separate functions, so call these from inside them.
macro_rules! multiversion {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$m])*
        #[allow(clippy::too_many_arguments)]
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            #[allow(clippy::too_many_arguments)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                /// The safe body compiled for AVX-512.
                ///
                /// # Safety
                /// The CPU must support AVX-512F.
                #[target_feature(enable = "avx512f")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if $crate::kernels::sgemm512::available() {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { wide($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub mod act;
pub mod conv;
pub mod conv_direct;
pub mod gemm;
pub mod linear;
pub mod loss;
pub mod norm;
pub mod pool;
pub mod reference;
pub mod sgemm512;
#[cfg(target_arch = "x86_64")]
pub(crate) mod simd;
pub mod sparsity;
pub mod winograd;

#[cfg(test)]
pub(crate) mod testutil {
    use crate::geometry::ConvGeometry;
    use crate::rng::Rng;

    /// Awkward convolution shapes shared by the kernel tests: odd channels, strides that do
    /// not divide the input, padding above 1, 1x1 kernels, stride above kernel size, and a
    /// 1x1 image (a linear layer).
    pub fn awkward_geometries() -> Vec<ConvGeometry> {
        [
            (3, 3, 7, 5, 4, 3, 1, 1),
            (1, 2, 9, 9, 3, 3, 2, 1),
            (4, 5, 6, 6, 7, 1, 1, 0),
            (3, 5, 6, 7, 7, 1, 2, 0),
            (2, 3, 8, 8, 5, 5, 1, 2),
            (5, 1, 11, 10, 2, 7, 2, 3),
            (2, 4, 4, 4, 6, 3, 3, 0),
            (4, 6, 1, 1, 5, 1, 1, 0),
        ]
        .iter()
        .map(|&(n, c, h, w, k, ks, st, p)| ConvGeometry::new(n, c, h, w, k, ks, st, p).unwrap())
        .collect()
    }

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
