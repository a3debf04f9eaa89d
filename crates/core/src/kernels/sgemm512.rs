//! A packed single-precision GEMM with an AVX-512 micro-kernel (BLIS loop structure).
//! The `gemm` crate's stable build stops at AVX2/FMA; on CPUs with AVX-512 this kernel
//! doubles the vector width. `gemm::sgemm` dispatches here when the CPU has avx512f.

use crate::geometry::ConvGeometry;
#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

/// Micro-tile: MR rows of A (broadcast) times NR columns of B (three 16-lane vectors):
/// 24 accumulators. 8 rows divide every channel count of the models (16, 32, 64, ...), where
/// 12 rows wasted a third of the work on 16-channel layers; per k-step it issues 8
/// broadcasts + 3 loads for 24 FMAs (12x32: 12 + 2).
const MR: usize = 8;
const NR: usize = 48;
/// Cache blocking: a KC x NR panel of B stays in L1, an MC x KC block of A in L2.
const KC: usize = 192;
const MC: usize = MR * 30;
const NC: usize = NR * 43;

/// A strided read-only matrix: element (i, j) at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub rs: usize,
    pub cs: usize,
}

impl MatRef<'_> {
    #[inline(always)]
    fn at(&self, i: usize, j: usize) -> f32 {
        self.data[i * self.rs + j * self.cs]
    }
}

/// Where the B operand comes from: a strided matrix, or the im2col matrix of one image
/// (`[c_in·k_h·k_w, h_out·w_out]`) gathered straight from the image while packing, so the
/// unfolded matrix is never written out.
#[derive(Clone, Copy)]
pub enum BSource<'a> {
    Mat(MatRef<'a>),
    Im2col { x: &'a [f32], g: &'a ConvGeometry },
}

pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Packs A[i0.., p0..] (mc x kc) into MR-row panels, column by column, zero-padding rows.
/// Reads along whichever direction A is contiguous in.
fn pack_a(a: MatRef, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut Vec<f32>) {
    let need = mc.div_ceil(MR) * MR * kc;
    if out.len() < need {
        out.resize(need, 0.0);
    }
    for (panel, ir) in (0..mc).step_by(MR).enumerate() {
        let rows = MR.min(mc - ir);
        let dst = &mut out[panel * MR * kc..(panel + 1) * MR * kc];
        if rows < MR {
            dst.fill(0.0); // the padding rows of a ragged last panel
        }
        if a.cs == 1 {
            for i in 0..rows {
                let src = &a.data[(i0 + ir + i) * a.rs + p0..(i0 + ir + i) * a.rs + p0 + kc];
                for (p, &v) in src.iter().enumerate() {
                    dst[p * MR + i] = v;
                }
            }
        } else {
            for p in 0..kc {
                for i in 0..rows {
                    dst[p * MR + i] = a.at(i0 + ir + i, p0 + p);
                }
            }
        }
    }
}

/// Packs B[p0.., j0..] (kc x nc) into NR-column panels, row by row, zero-padding columns.
fn pack_b(b: BSource, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    match b {
        BSource::Mat(m) => pack_b_mat(m, p0, kc, j0, nc, out),
        BSource::Im2col { x, g } => pack_b_im2col(x, g, p0, kc, j0, nc, out),
    }
}

/// pack_b of the im2col matrix: row p = (c, r, s) tap, column j = output position (oh, ow);
/// each panel row is filled run by run along output rows, zeros where the tap reads padding.
fn pack_b_im2col(x: &[f32], g: &ConvGeometry, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    let need = nc.div_ceil(NR) * NR * kc;
    if out.len() < need {
        out.resize(need, 0.0);
    }
    let wo = g.w_out();
    let (kk, hw) = (g.k_h * g.k_w, g.h * g.w);
    for (panel, jr) in (0..nc).step_by(NR).enumerate() {
        let cols = NR.min(nc - jr);
        let dst = &mut out[panel * NR * kc..(panel + 1) * NR * kc];
        for p in 0..kc {
            let row = p0 + p;
            let (c, r, s) = (row / kk, row % kk / g.k_w, row % g.k_w);
            let (q_lo, q_hi) = g.valid_cols(s);
            let xc = &x[c * hw..(c + 1) * hw];
            let d = &mut dst[p * NR..(p + 1) * NR];
            d[cols..].fill(0.0);
            let mut j = j0 + jr;
            let end = j + cols;
            let mut at = 0;
            while j < end {
                let (oh, ow0) = (j / wo, j % wo);
                let run = (wo - ow0).min(end - j);
                let seg = &mut d[at..at + run];
                let ih = (oh * g.stride + r) as isize - g.pad as isize;
                if ih < 0 || ih >= g.h as isize {
                    seg.fill(0.0);
                } else {
                    let src = &xc[ih as usize * g.w..(ih as usize + 1) * g.w];
                    // valid output columns of this tap, clipped to the run
                    let lo = q_lo.clamp(ow0, ow0 + run);
                    let hi = q_hi.clamp(lo, ow0 + run);
                    seg[..lo - ow0].fill(0.0);
                    seg[hi - ow0..].fill(0.0);
                    if hi > lo {
                        let base = lo * g.stride + s - g.pad;
                        let valid = &mut seg[lo - ow0..hi - ow0];
                        if g.stride == 1 {
                            valid.copy_from_slice(&src[base..base + valid.len()]);
                        } else {
                            for (i, v) in valid.iter_mut().enumerate() {
                                *v = src[base + i * g.stride];
                            }
                        }
                    }
                }
                j += run;
                at += run;
            }
        }
    }
}

/// pack_b of a strided matrix; reads along whichever direction B is contiguous in.
fn pack_b_mat(b: MatRef, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut Vec<f32>) {
    let need = nc.div_ceil(NR) * NR * kc;
    if out.len() < need {
        out.resize(need, 0.0);
    }
    for (panel, jr) in (0..nc).step_by(NR).enumerate() {
        let cols = NR.min(nc - jr);
        let dst = &mut out[panel * NR * kc..(panel + 1) * NR * kc];
        if cols < NR {
            dst.fill(0.0); // the padding columns of a ragged last panel
        }
        if b.cs == 1 {
            for p in 0..kc {
                let start = (p0 + p) * b.rs + j0 + jr;
                dst[p * NR..p * NR + cols].copy_from_slice(&b.data[start..start + cols]);
            }
        } else if b.rs == 1 {
            for j in 0..cols {
                let start = (j0 + jr + j) * b.cs + p0;
                for (p, &v) in b.data[start..start + kc].iter().enumerate() {
                    dst[p * NR + j] = v;
                }
            }
        } else {
            for p in 0..kc {
                for j in 0..cols {
                    dst[p * NR + j] = b.at(p0 + p, j0 + jr + j);
                }
            }
        }
    }
}

/// acc(MR x NR) = Σ_p a[p*MR + i] · b[p*NR + j]; then C[i, j] (+)= acc for the valid
/// `rows x cols` corner. C is row-major with leading dimension `ldc`.
///
/// # Safety
/// The CPU must support AVX-512F (`sgemm512::available()`); `a` holds `kc·MR` and `b` `kc·NR` packed
/// values; `c` is writable for `rows ≤ MR` rows of `cols ≤ NR` values, `ldc` apart.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn micro_kernel(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    add: bool,
) {
    // SAFETY: the packed panels hold kc*MR and kc*NR floats; C is valid for
    // rows x cols at stride ldc (the caller guarantees both).
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 3]; MR];
        for p in 0..kc {
            let b0 = _mm512_loadu_ps(b.add(p * NR));
            let b1 = _mm512_loadu_ps(b.add(p * NR + 16));
            let b2 = _mm512_loadu_ps(b.add(p * NR + 32));
            let ap = a.add(p * MR);
            for (i, row) in acc.iter_mut().enumerate() {
                let av = _mm512_set1_ps(*ap.add(i));
                row[0] = _mm512_fmadd_ps(av, b0, row[0]);
                row[1] = _mm512_fmadd_ps(av, b1, row[1]);
                row[2] = _mm512_fmadd_ps(av, b2, row[2]);
            }
        }
        if rows == MR && cols == NR {
            for (i, row) in acc.iter().enumerate() {
                let cp = c.add(i * ldc);
                for (v, &r) in row.iter().enumerate() {
                    let mut x = r;
                    if add {
                        x = _mm512_add_ps(x, _mm512_loadu_ps(cp.add(16 * v)));
                    }
                    _mm512_storeu_ps(cp.add(16 * v), x);
                }
            }
        } else {
            let mut tile = [0.0f32; MR * NR];
            for (i, row) in acc.iter().enumerate() {
                for (v, &r) in row.iter().enumerate() {
                    _mm512_storeu_ps(tile.as_mut_ptr().add(i * NR + 16 * v), r);
                }
            }
            for i in 0..rows {
                for j in 0..cols {
                    let cp = c.add(i * ldc + j);
                    *cp = if add { *cp + tile[i * NR + j] } else { tile[i * NR + j] };
                }
            }
        }
    }
}

/// C[m x n] (row-major, leading dimension n) (+)= A · B, single-threaded.
/// Panics if the CPU lacks AVX-512 (callers check [`available`]).
pub fn sgemm(m: usize, n: usize, k: usize, a: MatRef, b: BSource, c: &mut [f32], accumulate: bool) {
    assert!(available(), "sgemm512 called on a CPU without avx512f");
    assert!(c.len() >= m * n);
    if k == 0 {
        if !accumulate {
            c[..m * n].fill(0.0);
        }
        return;
    }
    PACK.with(|bufs| {
        let (pa, pb) = &mut *bufs.borrow_mut();
        blocked(m, n, k, a, b, c, accumulate, pa, pb);
    });
}

thread_local! {
    /// Packing buffers, reused across calls on the same thread.
    static PACK: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

fn blocked(
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    b: BSource,
    c: &mut [f32],
    accumulate: bool,
    pa: &mut Vec<f32>,
    pb: &mut Vec<f32>,
) {
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let add = accumulate || p0 > 0;
            pack_b(b, p0, kc, j0, nc, pb);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack_a(a, i0, mc, p0, kc, pa);
                for jr in (0..nc).step_by(NR) {
                    let cols = NR.min(nc - jr);
                    for ir in (0..mc).step_by(MR) {
                        let rows = MR.min(mc - ir);
                        let ap = pa[ir * kc..].as_ptr();
                        let bp = pb[jr * kc..].as_ptr();
                        let cp = c[(i0 + ir) * n + j0 + jr..].as_mut_ptr();
                        // SAFETY: panels are kc*MR / kc*NR long at these offsets (packing pads
                        // to whole panels); C has rows x cols valid from cp at stride n.
                        #[cfg(target_arch = "x86_64")]
                        unsafe {
                            micro_kernel(kc, ap, bp, cp, n, rows, cols, add)
                        };
                    }
                }
            }
        }
    }
}
