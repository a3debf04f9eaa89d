//! Row-major single-precision matrix multiply: our AVX-512 kernel where the CPU has it,
//! else the `gemm` crate (AVX2/FMA on stable Rust).

use crate::geometry::ConvGeometry;
use std::sync::atomic::{AtomicU8, Ordering};

/// Which implementation `sgemm` uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmImpl {
    /// AVX-512 when available, else the gemm crate.
    Auto = 0,
    /// Always the gemm crate (the baseline of `tern bench`).
    GemmCrate = 1,
}

static IMPL: AtomicU8 = AtomicU8::new(GemmImpl::Auto as u8);

/// Chooses the implementation process-wide (set once by `tern bench --gemm` to time the
/// baseline, before any work; tests pass their choice to [`sgemm_with`] instead).
pub fn set_impl(i: GemmImpl) {
    IMPL.store(i as u8, Ordering::Relaxed);
}

fn current_impl() -> GemmImpl {
    if IMPL.load(Ordering::Relaxed) == GemmImpl::GemmCrate as u8 {
        GemmImpl::GemmCrate
    } else {
        GemmImpl::Auto
    }
}

/// C[m x n] (+)= op(A) · op(B), all row-major and contiguous.
/// A is `[m, k]`, or `[k, m]` when `trans_a`; B is `[k, n]`, or `[n, k]` when `trans_b`.
/// `accumulate` adds into C instead of overwriting it; `parallel` lets gemm use the rayon pool
/// (callers that already run one gemm per thread pass false).
pub fn sgemm(
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    sgemm_with(current_impl(), m, n, k, a, trans_a, b, trans_b, c, accumulate, parallel)
}

/// [`sgemm`] with the implementation chosen by the caller.
pub fn sgemm_with(
    imp: GemmImpl,
    m: usize,
    n: usize,
    k: usize,
    a: &[f32],
    trans_a: bool,
    b: &[f32],
    trans_b: bool,
    c: &mut [f32],
    accumulate: bool,
    parallel: bool,
) {
    assert!(a.len() >= m * k && b.len() >= k * n && c.len() >= m * n, "sgemm: slice too short");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    if imp == GemmImpl::Auto && super::sgemm512::available() {
        use super::sgemm512::{sgemm as sgemm512, BSource, MatRef};
        let am = if trans_a { MatRef { data: a, rs: 1, cs: m } } else { MatRef { data: a, rs: k, cs: 1 } };
        let bm = if trans_b { MatRef { data: b, rs: 1, cs: k } } else { MatRef { data: b, rs: n, cs: 1 } };
        if parallel && rayon::current_num_threads() > 1 && m * n * k >= 1 << 18 {
            // Split the rows of C across the pool; each part packs its own panels.
            use rayon::prelude::*;
            let rows = m.div_ceil(rayon::current_num_threads()).max(1);
            c[..m * n].par_chunks_mut(rows * n).enumerate().for_each(|(t, part)| {
                let r0 = t * rows;
                let mr = part.len() / n;
                let sub = MatRef { data: &a[r0 * am.rs..], ..am };
                sgemm512(mr, n, k, sub, BSource::Mat(bm), part, accumulate);
            });
        } else {
            sgemm512(m, n, k, am, BSource::Mat(bm), &mut c[..m * n], accumulate);
        }
        return;
    }
    let (a_rs, a_cs) = if trans_a { (1, m as isize) } else { (k as isize, 1) };
    let (b_rs, b_cs) = if trans_b { (1, k as isize) } else { (n as isize, 1) };
    let par = if parallel && rayon::current_num_threads() > 1 {
        gemm::Parallelism::Rayon(rayon::current_num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the asserts above guarantee every index the strides reach is in bounds,
    // and C does not alias A or B (distinct borrows).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.as_ptr(),
            a_cs,
            a_rs,
            b.as_ptr(),
            b_cs,
            b_rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// C[m x pq] (+)= A[m x crs] · im2col(x), single-threaded, for one image `x: [c_in, h, w]`:
/// with AVX-512 the im2col matrix is gathered while packing and never stored; otherwise it is
/// unfolded into `col` first.
pub fn sgemm_im2col(
    m: usize,
    a: &[f32],
    x: &[f32],
    g: &ConvGeometry,
    c: &mut [f32],
    accumulate: bool,
    col: &mut Vec<f32>,
) {
    let (k, n) = (g.crs(), g.pq());
    assert!(a.len() >= m * k && x.len() >= g.c_in * g.h * g.w && c.len() >= m * n);
    if IMPL.load(Ordering::Relaxed) == GemmImpl::Auto as u8 && super::sgemm512::available() && m > 0 && n > 0 && k > 0 {
        use super::sgemm512::{sgemm as sgemm512, BSource, MatRef};
        sgemm512(m, n, k, MatRef { data: a, rs: k, cs: 1 }, BSource::Im2col { x, g }, &mut c[..m * n], accumulate);
        return;
    }
    col.resize(k * n, 0.0);
    super::conv::im2col(x, g, col);
    sgemm(m, n, k, a, false, col, false, c, accumulate, false);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::testutil::*;
    use crate::rng::Rng;

    fn naive(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool) -> Vec<f32> {
        let mut c = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = 0.0f64;
                for p in 0..k {
                    let av = if ta { a[p * m + i] } else { a[i * k + p] };
                    let bv = if tb { b[j * k + p] } else { b[p * n + j] };
                    s += av as f64 * bv as f64;
                }
                c[i * n + j] = s as f32;
            }
        }
        c
    }

    #[test]
    fn large_blocked_and_parallel_paths_agree_with_the_gemm_crate() {
        // Crosses every cache block (KC, MC, NC) and ragged micro-tiles.
        let mut rng = Rng::new(4);
        let (m, n, k) = (250, 2100, 400);
        for (ta, tb) in [(false, false), (true, true)] {
            let a = rand_vec(m * k, &mut rng);
            let b = rand_vec(k * n, &mut rng);
            let mut fast = vec![0.5; m * n];
            let mut base = vec![0.5; m * n];
            sgemm_with(GemmImpl::Auto, m, n, k, &a, ta, &b, tb, &mut fast, true, true);
            sgemm_with(GemmImpl::GemmCrate, m, n, k, &a, ta, &b, tb, &mut base, true, false);
            assert_close(&fast, &base, 1e-3, "blocked sgemm");
        }
    }

    #[test]
    fn agrees_with_naive_for_all_transposes() {
        let mut rng = Rng::new(3);
        for &(m, n, k) in &[(1, 1, 1), (7, 13, 5), (33, 17, 65), (64, 100, 3)] {
            for ta in [false, true] {
                for tb in [false, true] {
                    let a = rand_vec(m * k, &mut rng);
                    let b = rand_vec(k * n, &mut rng);
                    let want = naive(m, n, k, &a, ta, &b, tb);
                    let mut c = vec![1.0; m * n];
                    sgemm(m, n, k, &a, ta, &b, tb, &mut c, false, true);
                    assert_close(&c, &want, 1e-4, "sgemm");
                    sgemm(m, n, k, &a, ta, &b, tb, &mut c, true, false);
                    let twice: Vec<f32> = want.iter().map(|x| 2.0 * x).collect();
                    assert_close(&c, &twice, 1e-4, "sgemm accumulate");
                }
            }
        }
    }
}
