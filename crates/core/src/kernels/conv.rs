//! 2-D convolution: forward, input gradient and weight gradient: the direct AVX-512 kernels
//! (`conv_direct`) where output channels come in 16s, else im2col + GEMM.
//! Images are independent, so work is split over the batch across the rayon pool; with fewer
//! images than threads the GEMM itself runs in parallel instead.

use super::gemm::{sgemm, sgemm_im2col};
use super::norm::{self, ChannelSums};
use super::{conv_direct, winograd};
use crate::geometry::ConvGeometry;
use rayon::prelude::*;

/// Unfolds one image `x: [c_in, h, w]` into `col: [c_in*k_h*k_w, h_out*w_out]`.
pub fn im2col(x: &[f32], g: &ConvGeometry, col: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let pq = ho * wo;
    for c in 0..g.c_in {
        let xc = &x[c * g.h * g.w..(c + 1) * g.h * g.w];
        for r in 0..g.k_h {
            for s in 0..g.k_w {
                let row = (c * g.k_h + r) * g.k_w + s;
                let dst = &mut col[row * pq..(row + 1) * pq];
                let (q_lo, q_hi) = g.valid_cols(s);
                for p in 0..ho {
                    let out = &mut dst[p * wo..(p + 1) * wo];
                    let ih = (p * g.stride + r) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize || q_lo >= q_hi {
                        out.fill(0.0);
                        continue;
                    }
                    let src = &xc[ih as usize * g.w..(ih as usize + 1) * g.w];
                    out[..q_lo].fill(0.0);
                    out[q_hi..].fill(0.0);
                    let base = q_lo * g.stride + s - g.pad;
                    if g.stride == 1 {
                        out[q_lo..q_hi].copy_from_slice(&src[base..base + (q_hi - q_lo)]);
                    } else {
                        for (i, o) in out[q_lo..q_hi].iter_mut().enumerate() {
                            *o = src[base + i * g.stride];
                        }
                    }
                }
            }
        }
    }
}

/// Folds `col: [c_in*k_h*k_w, h_out*w_out]` back onto one image `dx: [c_in, h, w]`, adding.
pub fn col2im(col: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let pq = ho * wo;
    for c in 0..g.c_in {
        let xc = &mut dx[c * g.h * g.w..(c + 1) * g.h * g.w];
        for r in 0..g.k_h {
            for s in 0..g.k_w {
                let row = (c * g.k_h + r) * g.k_w + s;
                let src = &col[row * pq..(row + 1) * pq];
                let (q_lo, q_hi) = g.valid_cols(s);
                if q_lo >= q_hi {
                    continue;
                }
                for p in 0..ho {
                    let ih = (p * g.stride + r) as isize - g.pad as isize;
                    if ih < 0 || ih >= g.h as isize {
                        continue;
                    }
                    let dst = &mut xc[ih as usize * g.w..(ih as usize + 1) * g.w];
                    let base = q_lo * g.stride + s - g.pad;
                    let row_src = &src[p * wo + q_lo..p * wo + q_hi];
                    if g.stride == 1 {
                        for (d, v) in dst[base..base + row_src.len()].iter_mut().zip(row_src) {
                            *d += v;
                        }
                    } else {
                        for (i, v) in row_src.iter().enumerate() {
                            dst[base + i * g.stride] += v;
                        }
                    }
                }
            }
        }
    }
}

thread_local! {
    /// The im2col buffer of this thread, reused across images and calls (a fresh one per
    /// rayon task meant zero-filling megabytes per task).
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    /// The direct kernels' padded image and transposed output gradient, likewise.
    static PADDED: std::cell::RefCell<(conv_direct::PaddedImage, Vec<f32>)> = std::cell::RefCell::new(Default::default());
}

/// Forward through the direct kernel, images in parallel (`conv_direct::fits` holds); with
/// `sums`, also each image's output channel sums, taken while that output is in cache.
fn forward_direct(
    x: &[f32],
    w16: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    y: &mut [f32],
    sums: bool,
) -> Option<ChannelSums> {
    let chw = g.c_in * g.h * g.w;
    let per_image: Vec<Option<ChannelSums>> = y
        .par_chunks_mut(g.c_out * g.pq())
        .zip(x.par_chunks(chw))
        .map(|(yn, xn)| {
            PADDED.with(|b| {
                let xp = &mut b.borrow_mut().0;
                conv_direct::forward_image(xp.fill(xn, g.c_in, g.h, g.w, g.pad), w16, bias, g, yn);
            });
            sums.then(|| ChannelSums::of_image(yn, g.c_out, g.pq()))
        })
        .collect();
    sums.then(|| ChannelSums::total(per_image.iter().flatten(), g.c_out))
}

/// Forward through the Winograd kernel (`winograd::fits` holds), image groups in parallel;
/// with `sums`, also the output channel sums, image by image as in [`forward_direct`].
fn forward_winograd(
    x: &[f32],
    u: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    y: &mut [f32],
    sums: bool,
) -> Option<ChannelSums> {
    let per = winograd::images_per_group(g).min(g.n.div_ceil(rayon::current_num_threads())).max(1);
    let (chw, kpq) = (g.c_in * g.h * g.w, g.c_out * g.pq());
    let per_group: Vec<Vec<ChannelSums>> = y
        .par_chunks_mut(kpq * per)
        .zip(x.par_chunks(chw * per))
        .map(|(ys, xs)| {
            winograd::forward_images(xs, u, bias, g, ys);
            if sums {
                ys.chunks(kpq).map(|yn| ChannelSums::of_image(yn, g.c_out, g.pq())).collect()
            } else {
                Vec::new()
            }
        })
        .collect();
    sums.then(|| ChannelSums::total(per_group.iter().flatten(), g.c_out))
}

/// Splits the batch across threads only when there is at least one image per thread.
fn batch_parallel(g: &ConvGeometry) -> bool {
    g.n >= rayon::current_num_threads()
}

/// y = conv(x, w) + bias.
/// x: [n, c_in, h, w], w: [c_out, c_in, k_h, k_w], bias: [c_out], y: [n, c_out, h_out, w_out]
pub fn conv2d_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    forward(x, w, bias, g, y, false);
}

/// [`conv2d_forward`] that also returns the output's per-channel sums (as
/// [`norm::channel_sums`] would, bit for bit), each image's taken right after it is computed.
pub fn conv2d_forward_sums(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) -> ChannelSums {
    forward(x, w, bias, g, y, true).expect("sums requested")
}

fn forward(
    x: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    g: &ConvGeometry,
    y: &mut [f32],
    sums: bool,
) -> Option<ChannelSums> {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(w.len(), g.weight_len());
    assert_eq!(y.len(), g.out_len());
    // the fast paths read c_out bias values: a short slice is a programmer error, not a read
    // past its end
    assert!(bias.is_none_or(|b| b.len() == g.c_out), "bias: expected {} values", g.c_out);
    if winograd::fits(g) {
        return forward_winograd(x, &winograd::transform_weights(w, g.c_out, g.c_in), bias, g, y, sums);
    }
    if conv_direct::fits(g.c_out, g.k_w) && !g.is_pointwise() {
        return forward_direct(x, &conv_direct::pack_weights(w, g.c_out, g.crs()), bias, g, y, sums);
    }
    let (crs, pq, chw) = (g.crs(), g.pq(), g.c_in * g.h * g.w);
    let one = |xn: &[f32], yn: &mut [f32], col: &mut Vec<f32>, par: bool| {
        if g.is_pointwise() {
            sgemm(g.c_out, pq, crs, w, false, xn, false, yn, false, par);
        } else if !par {
            sgemm_im2col(g.c_out, w, xn, g, yn, false, col);
        } else {
            col.resize(crs * pq, 0.0);
            im2col(xn, g, col);
            sgemm(g.c_out, pq, crs, w, false, col, false, yn, false, par);
        }
        if let Some(b) = bias {
            for (k, row) in yn.chunks_mut(pq).enumerate() {
                row.iter_mut().for_each(|v| *v += b[k]);
            }
        }
    };
    if batch_parallel(g) {
        let per_image: Vec<Option<ChannelSums>> = y
            .par_chunks_mut(g.c_out * pq)
            .zip(x.par_chunks(chw))
            .map(|(yn, xn)| {
                COL.with(|col| one(xn, yn, &mut col.borrow_mut(), false));
                sums.then(|| ChannelSums::of_image(yn, g.c_out, pq))
            })
            .collect();
        return sums.then(|| ChannelSums::total(per_image.iter().flatten(), g.c_out));
    }
    let mut col = Vec::new();
    for (yn, xn) in y.chunks_mut(g.c_out * pq).zip(x.chunks(chw)) {
        one(xn, yn, &mut col, true);
    }
    sums.then(|| norm::channel_sums(y, g.n, g.c_out, pq))
}

/// dx = conv_transpose(dy, w): the gradient with respect to the input.
/// dy: [n, c_out, h_out, w_out], w: [c_out, c_in, k_h, k_w], dx: [n, c_in, h, w] (overwritten)
pub fn conv2d_backward_input(dy: &[f32], w: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
    assert_eq!(dy.len(), g.out_len());
    assert_eq!(w.len(), g.weight_len());
    assert_eq!(dx.len(), g.in_len());
    // stride 1: the input gradient is a full correlation of dy with the flipped, transposed
    // weights, i.e. a forward convolution (no col2im)
    if g.stride == 1 && g.k_h == g.k_w && g.pad < g.k_h && conv_direct::fits(g.c_in, g.k_w) && !g.is_pointwise() {
        let gt = ConvGeometry {
            n: g.n,
            c_in: g.c_out,
            h: g.h_out(),
            w: g.w_out(),
            c_out: g.c_in,
            k_h: g.k_h,
            k_w: g.k_w,
            stride: 1,
            pad: g.k_h - 1 - g.pad,
        };
        if winograd::fits(&gt) {
            forward_winograd(
                dy,
                &winograd::transform_weights(&conv_direct::transpose_flip(w, g), gt.c_out, gt.c_in),
                None,
                &gt,
                dx,
                false,
            );
        } else {
            forward_direct(dy, &conv_direct::pack_weights_transposed_flipped(w, g), None, &gt, dx, false);
        }
        return;
    }
    let (crs, pq, chw) = (g.crs(), g.pq(), g.c_in * g.h * g.w);
    let one = |dyn_: &[f32], dxn: &mut [f32], col: &mut Vec<f32>, par: bool| {
        if g.is_pointwise() {
            sgemm(crs, pq, g.c_out, w, true, dyn_, false, dxn, false, par);
        } else {
            col.resize(crs * pq, 0.0);
            sgemm(crs, pq, g.c_out, w, true, dyn_, false, col, false, par);
            dxn.fill(0.0);
            col2im(col, g, dxn);
        }
    };
    if batch_parallel(g) {
        dx.par_chunks_mut(chw)
            .zip(dy.par_chunks(g.c_out * pq))
            .for_each(|(dxn, dyn_)| COL.with(|col| one(dyn_, dxn, &mut col.borrow_mut(), false)));
    } else {
        let mut col = Vec::new();
        for (dxn, dyn_) in dx.chunks_mut(chw).zip(dy.chunks(g.c_out * pq)) {
            one(dyn_, dxn, &mut col, true);
        }
    }
}

/// dw = Σ_n dy_n · im2col(x_n)ᵀ and db = Σ dy: the weight and bias gradients (overwritten).
/// x: [n, c_in, h, w], dy: [n, c_out, h_out, w_out], dw: [c_out, c_in, k_h, k_w], db: [c_out]
pub fn conv2d_backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, dw: &mut [f32], db: Option<&mut [f32]>) {
    assert_eq!(x.len(), g.in_len());
    assert_eq!(dy.len(), g.out_len());
    assert_eq!(dw.len(), g.weight_len());
    let (crs, pq, chw) = (g.crs(), g.pq(), g.c_in * g.h * g.w);
    if winograd::fits_weight_grad(g) {
        let du = sum_over_image_groups(x, dy, g, 16 * g.c_in * g.c_out, |xs, dys, acc| {
            winograd::weight_grad_images(xs, dys, g, acc)
        });
        winograd::weights_from_du(&du, g.c_out, g.c_in, dw);
        bias_grad(dy, g, db);
        return;
    }
    if conv_direct::fits(g.c_out, g.k_w) && !g.is_pointwise() {
        let sum = sum_over_image_groups(x, dy, g, dw.len(), |xs, dys, acc| {
            PADDED.with(|b| {
                let (xp, dyt) = &mut *b.borrow_mut();
                for (xn, dyn_) in xs.chunks(chw).zip(dys.chunks(g.c_out * pq)) {
                    conv_direct::weight_grad_image(xp.fill(xn, g.c_in, g.h, g.w, g.pad), dyn_, g, acc, dyt);
                }
            })
        });
        conv_direct::unpack_weights(&sum, g.c_out, crs, dw);
        bias_grad(dy, g, db);
        return;
    }
    let one = |xn: &[f32], dyn_: &[f32], acc: &mut [f32], col: &mut Vec<f32>, first: bool, par: bool| {
        if g.is_pointwise() {
            sgemm(g.c_out, crs, pq, dyn_, false, xn, true, acc, !first, par);
        } else {
            col.resize(crs * pq, 0.0);
            im2col(xn, g, col);
            sgemm(g.c_out, crs, pq, dyn_, false, col, true, acc, !first, par);
        }
    };
    if g.n > 1 {
        let sum = sum_over_image_groups(x, dy, g, dw.len(), |xs, dys, acc| {
            COL.with(|col| {
                let col = &mut col.borrow_mut();
                for (i, (xn, dyn_)) in xs.chunks(chw).zip(dys.chunks(g.c_out * pq)).enumerate() {
                    one(xn, dyn_, acc, col, i == 0, false);
                }
            })
        });
        dw.copy_from_slice(&sum);
    } else {
        let mut col = Vec::new();
        for (i, (xn, dyn_)) in x.chunks(chw).zip(dy.chunks(g.c_out * pq)).enumerate() {
            one(xn, dyn_, dw, &mut col, i == 0, true);
        }
    }
    bias_grad(dy, g, db);
}

/// How many groups [`sum_over_image_groups`] splits a batch into: a constant, not the thread
/// count, so that the floating-point sum (and every weight trained with it) is the same on
/// any machine and with any `--threads`.
pub const WEIGHT_GRAD_GROUPS: usize = 8;

/// Splits the batch into [`WEIGHT_GRAD_GROUPS`] groups of consecutive images, lets
/// `f(xs, dys, acc)` add each group's contribution into its own zeroed buffer of `len` (the
/// groups run in parallel), and returns the sum in group order.
fn sum_over_image_groups(
    x: &[f32],
    dy: &[f32],
    g: &ConvGeometry,
    len: usize,
    f: impl Fn(&[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let per = g.n.div_ceil(WEIGHT_GRAD_GROUPS).max(1);
    let (chw, kpq) = (g.c_in * g.h * g.w, g.c_out * g.pq());
    let partials: Vec<Vec<f32>> = x
        .par_chunks(chw * per)
        .zip(dy.par_chunks(kpq * per))
        .map(|(xs, dys)| {
            let mut acc = vec![0.0; len];
            f(xs, dys, &mut acc);
            acc
        })
        .collect();
    // summed in group order, so the result does not depend on how rayon scheduled the groups
    let mut sum = vec![0.0; len];
    for p in &partials {
        sum.iter_mut().zip(p).for_each(|(d, v)| *d += v);
    }
    sum
}

/// db = Σ dy over images and positions (overwritten).
fn bias_grad(dy: &[f32], g: &ConvGeometry, db: Option<&mut [f32]>) {
    if let Some(db) = db {
        let pq = g.pq();
        db.fill(0.0);
        for dyn_ in dy.chunks(g.c_out * pq) {
            for (k, row) in dyn_.chunks(pq).enumerate() {
                db[k] += row.iter().sum::<f32>();
            }
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
    #[should_panic(expected = "bias: expected 16 values")]
    fn a_short_bias_is_refused_not_read_past() {
        // 16 output channels take the AVX-512 paths where the CPU has them
        let g = ConvGeometry::new(1, 16, 6, 6, 16, 3, 1, 1).unwrap();
        let (x, w) = (vec![0.5; g.in_len()], vec![0.1; g.weight_len()]);
        let mut y = vec![0.0; g.out_len()];
        conv2d_forward(&x, &w, Some(&[1.0; 3]), &g, &mut y);
    }

    #[test]
    fn forward_and_backward_agree_with_reference() {
        let mut rng = Rng::new(11);
        // plus shapes the direct and Winograd kernels take (forward and input gradient)
        let mut geoms = awkward_geometries();
        geoms.push(ConvGeometry::new(3, 16, 8, 6, 16, 3, 1, 1).unwrap());
        geoms.push(ConvGeometry::new(2, 32, 4, 10, 48, 3, 1, 1).unwrap());
        geoms.push(ConvGeometry::new(2, 16, 7, 7, 32, 3, 1, 1).unwrap());
        for g in geoms {
            let x = rand_vec(g.in_len(), &mut rng);
            let w = rand_vec(g.weight_len(), &mut rng);
            let b = rand_vec(g.c_out, &mut rng);
            let dy = rand_vec(g.out_len(), &mut rng);

            let mut y = vec![7.0; g.out_len()]; // stale values must be overwritten
            let mut y_ref = vec![0.0; g.out_len()];
            conv2d_forward(&x, &w, Some(&b), &g, &mut y);
            reference::conv2d_forward(&x, &w, Some(&b), &g, &mut y_ref);
            assert_close(&y, &y_ref, 1e-4, &format!("conv forward {g:?}"));

            let mut dx = vec![7.0; g.in_len()];
            let mut dx_ref = vec![0.0; g.in_len()];
            conv2d_backward_input(&dy, &w, &g, &mut dx);
            reference::conv2d_backward_input(&dy, &w, &g, &mut dx_ref);
            assert_close(&dx, &dx_ref, 1e-4, &format!("conv dx {g:?}"));

            let mut dw = vec![7.0; g.weight_len()];
            let mut db = vec![7.0; g.c_out];
            let mut dw_ref = vec![0.0; g.weight_len()];
            let mut db_ref = vec![0.0; g.c_out];
            conv2d_backward_weight(&x, &dy, &g, &mut dw, Some(&mut db));
            reference::conv2d_backward_weight(&x, &dy, &g, &mut dw_ref, Some(&mut db_ref));
            assert_close(&dw, &dw_ref, 1e-3, &format!("conv dw {g:?}"));
            assert_close(&db, &db_ref, 1e-3, &format!("conv db {g:?}"));
        }
    }

    /// The fused channel sums equal a separate pass over the output, bit for bit, on the
    /// direct, the GEMM and the single-image path.
    #[test]
    fn forward_sums_equal_channel_sums_of_the_output() {
        let mut rng = Rng::new(13);
        let mut geoms = awkward_geometries();
        geoms.push(ConvGeometry::new(3, 5, 9, 7, 32, 3, 1, 1).unwrap());
        geoms.push(ConvGeometry::new(1, 4, 6, 6, 16, 3, 1, 1).unwrap());
        geoms.push(ConvGeometry::new(3, 16, 8, 6, 24, 3, 1, 1).unwrap());
        for g in geoms {
            let x = rand_vec(g.in_len(), &mut rng);
            let w = rand_vec(g.weight_len(), &mut rng);
            let (mut y, mut y2) = (vec![7.0; g.out_len()], vec![0.0; g.out_len()]);
            let sums = conv2d_forward_sums(&x, &w, None, &g, &mut y);
            conv2d_forward(&x, &w, None, &g, &mut y2);
            assert_eq!(y, y2, "{g:?}");
            assert_eq!(sums, norm::channel_sums(&y, g.n, g.c_out, g.pq()), "{g:?}");
        }
    }

    #[test]
    fn single_image_uses_parallel_gemm_path_and_agrees() {
        let mut rng = Rng::new(12);
        let g = ConvGeometry::new(1, 6, 9, 9, 5, 3, 1, 1).unwrap();
        let x = rand_vec(g.in_len(), &mut rng);
        let w = rand_vec(g.weight_len(), &mut rng);
        let mut y = vec![0.0; g.out_len()];
        let mut y_ref = vec![0.0; g.out_len()];
        conv2d_forward(&x, &w, None, &g, &mut y);
        reference::conv2d_forward(&x, &w, None, &g, &mut y_ref);
        assert_close(&y, &y_ref, 1e-4, "conv n=1");
    }
}
