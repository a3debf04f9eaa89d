//! The device boundary: every operation of a training step — layers, loss, optimizer,
//! ternarisation and its straight-through gradient, BN statistics — goes through a
//! `Backend`, over tensors that live on the backend's device. `CpuBackend` runs the CPU
//! kernels on host tensors; tern-cuda implements the same trait on CUDA buffers.
//!
//! Per-step scalars that change between steps (the learning rate) travel as one-element
//! tensors, and the scalars a step reports (loss, correct counts) come back in a small stats
//! tensor, so that a device can replay a captured step without the host in the loop; the
//! host reads those few values, never whole activations.

use crate::geometry::{ConvGeometry, PoolGeometry};
use crate::kernels::sparsity::{self, Nonzeros};
use crate::kernels::{self, norm, norm::ChannelSums};
use crate::quant::TernaryConfig;
use crate::tensor::{Device, Tensor};

/// The statistics of a train-mode BN forward that its backward needs: per-channel mean and
/// 1/σ, `[c]` each, on the backend's device.
#[derive(Clone, Debug)]
pub struct BnSaved {
    pub mean: Tensor,
    pub inv_std: Tensor,
}

/// A ReLU fused after a BN: its threshold, and `extra`, the L1 activation penalty's λ/n
/// added to the gradient where the ReLU passes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct FusedRelu {
    pub threshold: f32,
    pub extra: f32,
}

/// What [`Backend::softmax_cross_entropy`] writes into its `stats: [3]` tensor.
pub mod loss_stats {
    /// Mean cross-entropy over the batch (unweighted).
    pub const LOSS: usize = 0;
    /// Samples whose label has the largest logit (non-finite rows never count).
    pub const TOP1: usize = 1;
    /// Samples whose label is among the `k` largest logits.
    pub const TOPK: usize = 2;
    pub const LEN: usize = 3;
}

/// Every operation a training or evaluation step needs. Tensors are on [`Backend::device`];
/// shapes are those of the matching functions in [`kernels`]. Outputs are overwritten
/// entirely (layers hand them buffers from [`Backend::alloc`], which may hold stale values).
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn device(&self) -> Device;

    // ---- memory ----
    /// A tensor whose every element the caller will overwrite (its values are unspecified).
    fn alloc(&self, shape: &[usize]) -> Tensor;
    /// [`Backend::alloc`] for an activation or an activation's gradient (never a weight, its
    /// gradient or optimizer state): a backend may store these at a lower precision (the
    /// CUDA backend's bf16 mode does). Every operation accepts either storage as input.
    fn alloc_activation(&self, shape: &[usize]) -> Tensor {
        self.alloc(shape)
    }
    fn zeros(&self, shape: &[usize]) -> Tensor;
    /// `t` on this backend's device (a handle clone if it is already there).
    fn upload(&self, t: &Tensor) -> Tensor;
    /// Bytes packed four to a slot ([`Tensor::from_bytes`]) on this device; a device copies
    /// them straight from the slice (a streamed 224-px batch is 38 MB: no host repacking).
    fn upload_bytes(&self, bytes: &[u8]) -> Tensor {
        self.upload(&Tensor::from_bytes(bytes))
    }
    fn fill(&self, t: &mut Tensor, v: f32);
    /// Waits for queued work (a no-op on the CPU); for timing.
    fn synchronize(&self) {}
    /// Copies `src` (any device) into the existing tensor `dst` of the same length. On a
    /// device the storage itself is written, also when other handles share it (a recorded
    /// step reads its inputs from fixed buffers, which the layers' caches share); on the
    /// host, shared storage is copied first, as `data_mut` does.
    fn write(&self, dst: &mut Tensor, src: &Tensor) {
        dst.data_mut().copy_from_slice(&src.host_values());
    }
    /// Runs `step` (its device work) once, and returns it recorded for replay where the
    /// device can replay work without the host (CUDA graphs), else `None`. A recorded step
    /// reads and writes exactly the buffers it touched while recording: replays must keep
    /// feeding it through those (see [`Backend::write`]).
    fn capture(&self, step: &mut dyn FnMut()) -> Option<Box<dyn StepGraph>> {
        step();
        None
    }
    /// What the backend tuned by measurement in this process (cuDNN's algorithm per
    /// convolution shape and pass), to save with a run so that its resume rounds the same
    /// way; None where nothing is tuned (the CPU).
    fn tuning(&self) -> Option<serde_json::Value> {
        None
    }
    /// Reuses a saved [`Backend::tuning`]; returns false (and changes nothing) when it was
    /// made on another device, precision or algorithm policy, or is malformed.
    fn load_tuning(&self, _tuning: &serde_json::Value) -> bool {
        false
    }
    /// Device memory the backend holds, in use or cached for reuse (0 on the CPU).
    fn held_bytes(&self) -> usize {
        0
    }

    // ---- mmOps ----
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry, y: &mut Tensor);
    /// `conv2d_forward` that may also return its output's channel sums for a train-mode BN
    /// that follows (the CPU takes them per image while the output is in cache); `None`
    /// lets the BN compute its own statistics.
    fn conv2d_forward_sums(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &ConvGeometry,
        y: &mut Tensor,
    ) -> Option<ChannelSums> {
        self.conv2d_forward(x, w, bias, g, y);
        None
    }
    fn conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeometry, dx: &mut Tensor);
    fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeometry,
        dw: &mut Tensor,
        db: Option<&mut Tensor>,
    );
    /// y = x·wᵀ + bias; x: [n, d_in], w: [d_out, d_in], y: [n, d_out].
    fn linear_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor);
    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor);
    fn linear_backward_weight(&self, x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: Option<&mut Tensor>);

    // ---- batch normalisation over x: [n, c, ...] ----
    /// Train mode: batch statistics (from `sums` when the producer took them), running
    /// statistics updated in place, y = relu?(γ·x̂ + β).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_train(
        &self,
        x: &Tensor,
        sums: Option<ChannelSums>,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        eps: f32,
        momentum: f32,
        relu: Option<f32>,
        y: &mut Tensor,
    ) -> BnSaved;
    /// With the running statistics (eval, or fine-tuning with frozen statistics); returns them
    /// as the saved statistics.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        relu: Option<f32>,
        y: &mut Tensor,
    ) -> BnSaved;
    /// dβ = Σ dz and dγ = Σ dz·x̂ (dz: dy through the fused ReLU's mask, if any).
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_sums(
        &self,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        saved: &BnSaved,
        relu: Option<FusedRelu>,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    );
    /// The input gradient through batch statistics, from the sums of `batch_norm_backward_sums`.
    #[allow(clippy::too_many_arguments)]
    fn batch_norm_backward_input(
        &self,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        saved: &BnSaved,
        relu: Option<FusedRelu>,
        dgamma: &Tensor,
        dbeta: &Tensor,
        dx: &mut Tensor,
    );
    /// dx = dy·γ/σ (statistics held constant: frozen-statistics fine-tuning).
    fn batch_norm_frozen_backward_input(
        &self,
        dy: &Tensor,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dx: &mut Tensor,
    );

    // ---- point-wise ----
    fn relu_forward(&self, x: &Tensor, threshold: f32, y: &mut Tensor);
    /// dx = (dy + extra) where x > threshold, else 0.
    fn relu_backward(&self, x: &Tensor, dy: &Tensor, threshold: f32, extra: f32, dx: &mut Tensor);
    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor);
    /// y = relu(a + b), threshold ≥ 0 (the residual add and its ReLU in one pass).
    fn add_relu(&self, a: &Tensor, b: &Tensor, threshold: f32, y: &mut Tensor);

    // ---- pooling ----
    /// `argmax`: an index tensor (u32 bit patterns) of y's shape.
    fn max_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor, argmax: &mut Tensor);
    fn max_pool_backward(&self, dy: &Tensor, argmax: &Tensor, g: &PoolGeometry, dx: &mut Tensor);
    fn avg_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor);
    fn avg_pool_backward(&self, dy: &Tensor, g: &PoolGeometry, dx: &mut Tensor);
    /// x: [n, c, h, w] → y: [n, c].
    fn global_avg_pool_forward(&self, x: &Tensor, y: &mut Tensor);
    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor);
    /// `[n, c, h, w]` → `[n, c·h·w]` with the features in NCHW order (a device that stores
    /// images in another layout reorders them, so linear layers see the host's order).
    fn flatten(&self, x: &Tensor) -> Tensor {
        let flat = [x.dim(0), x.shape()[1..].iter().product()];
        x.clone().reshape(&flat)
    }
    /// The inverse of [`Backend::flatten`]: `dy: [n, c·h·w]` back to `shape`.
    fn unflatten(&self, dy: &Tensor, shape: &[usize]) -> Tensor {
        dy.clone().reshape(shape)
    }

    // ---- loss ----
    /// Softmax cross-entropy of `logits: [n, classes]` against `labels` (an index tensor
    /// `[n]`): writes [`loss_stats`] into `stats: [3]`, and, if given, `dlogits` = the
    /// gradient of the mean loss, where `skip_correct` (the paper's GradUpdate) gives the
    /// correctly classified samples zero error.
    #[allow(clippy::too_many_arguments)]
    fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        top_k: usize,
        skip_correct: bool,
        dlogits: Option<&mut Tensor>,
        stats: &mut Tensor,
    );

    // ---- data ----
    /// Renders a batch from a data set held on this device: `images` its pixels
    /// ([`Tensor::from_bytes`], images of `src_shape` back to back), `plan: [n, 4]` an index
    /// tensor of (image, oy, ox as i32 bits, flip) per sample, `norm: [2, c]` the per-channel
    /// mean and 1/std; `out: [n, c, h, w]` gets (v/255 − mean)·(1/std) at each placement,
    /// zero elsewhere (tern-data's `render_placed`, the same arithmetic). Like
    /// [`Backend::write`], a device writes `out`'s storage in place, shared or not.
    fn render_batch(&self, images: &Tensor, src_shape: [usize; 3], plan: &Tensor, norm: &Tensor, out: &mut Tensor) {
        let (n, [c, dh, dw]) = (out.dim(0), [out.dim(1), out.dim(2), out.dim(3)]);
        let [_, sh, sw] = src_shape;
        let (bytes, p, nv) = (images.as_bytes(), plan.as_u32(), norm.data());
        let per = c * dh * dw;
        let o = out.data_mut();
        for s in 0..n {
            let [idx, oy, ox, flip] = [p[4 * s], p[4 * s + 1], p[4 * s + 2], p[4 * s + 3]];
            let (oy, ox) = (oy as i32 as isize, ox as i32 as isize);
            let img = &bytes[idx as usize * c * sh * sw..(idx as usize + 1) * c * sh * sw];
            let dst = &mut o[s * per..(s + 1) * per];
            dst.fill(0.0);
            for ch in 0..c {
                let (m, inv) = (nv[ch], nv[c + ch]);
                for y in 0..dh {
                    let sy = y as isize - oy;
                    if sy < 0 || sy >= sh as isize {
                        continue;
                    }
                    for x in 0..dw {
                        let xx = if flip != 0 { dw - 1 - x } else { x };
                        let sx = xx as isize - ox;
                        if sx >= 0 && sx < sw as isize {
                            let v = img[(ch * sh + sy as usize) * sw + sx as usize];
                            dst[(ch * dh + y) * dw + x] = (v as f32 / 255.0 - m) * inv;
                        }
                    }
                }
            }
        }
    }

    // ---- ternary weights and the optimizer ----
    /// Writes the ternary weights of `w: [rows, ...]` (Eq. 1) into `q` and their zero
    /// fraction into `zero_fraction: [1]`.
    fn ternarize(&self, w: &Tensor, rows: usize, cfg: &TernaryConfig, q: &mut Tensor, zero_fraction: &mut Tensor);
    /// Straight-through gradient: zeroes `grad` where |w| > clip.
    fn straight_through(&self, w: &Tensor, grad: &mut Tensor, clip: f32);
    /// `x[i] *= mask[i]` (block-sparse ternary weights and their gradients; equal lengths).
    fn mask(&self, x: &mut Tensor, mask: &Tensor);
    /// SGD with momentum (PyTorch semantics): v = μ·v + (g + λ·w); w -= lr·(Nesterov ?
    /// g + λ·w + μ·v : v), with the rate read from `lr: [1]`. With a `guard` whose first
    /// value is not finite (the step's loss), nothing changes: a diverged step leaves the
    /// weights as they were, without the host looking.
    #[allow(clippy::too_many_arguments)]
    fn sgd_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        v: &mut Tensor,
        lr: &Tensor,
        guard: Option<&Tensor>,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    );

    // ---- the sparsity probe ----
    // Exact counts of the multiply-adds with two non-zero operands, as defined in
    // [`kernels::sparsity`] (a linear layer is the 1x1 convolution of a 1x1 image). Only a
    // few integers reach the host; these defaults read the operands on the host, which is
    // free for host tensors and what a device without its own counting kernels falls back to.
    /// Forward pass `Y = W · col(X)`: a = nnz(W), b = nnz(x).
    fn nonzero_forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeometry) -> Nonzeros {
        sparsity::forward_nonzero(&x.host_values(), &w.host_values(), g)
    }
    /// Input-gradient pass `dcol = Wᵀ · dY`: a = nnz(W), b = nnz(dy).
    fn nonzero_backward(&self, w: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Nonzeros {
        sparsity::backward_nonzero(&w.host_values(), &dy.host_values(), g)
    }
    /// Weight-gradient pass `dW = dY · col(X)ᵀ`: a = nnz(dy), b = nnz(x).
    fn nonzero_weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Nonzeros {
        sparsity::weight_grad_nonzero(&x.host_values(), &dy.host_values(), g)
    }
}

/// A recorded training step (see [`Backend::capture`]).
pub trait StepGraph: Send {
    /// Queues the recorded work again.
    fn replay(&self);
}

/// The CPU backend: rayon-parallel kernels from [`kernels`] on host tensors.
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

fn host_saved(s: &BnSaved) -> norm::BnSaved {
    norm::BnSaved { mean: s.mean.data().to_vec(), inv_std: s.inv_std.data().to_vec() }
}

fn relu_mask(s: &norm::BnSaved, gamma: &Tensor, beta: &Tensor, relu: Option<FusedRelu>) -> Option<norm::ReluMask> {
    let r = relu?;
    let (scale, shift) = s.scale_shift(gamma.data(), beta.data());
    Some(norm::ReluMask { scale, shift, threshold: r.threshold, extra: r.extra })
}

/// (n, c, hw) of `[n, c, ...]`.
fn nchw(x: &Tensor) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2..].iter().product())
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn device(&self) -> Device {
        Device::Cpu
    }
    fn alloc(&self, shape: &[usize]) -> Tensor {
        Tensor::for_overwrite(shape)
    }
    fn zeros(&self, shape: &[usize]) -> Tensor {
        Tensor::zeros(shape)
    }
    fn upload(&self, t: &Tensor) -> Tensor {
        t.to_host()
    }
    fn fill(&self, t: &mut Tensor, v: f32) {
        t.fill(v)
    }
    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry, y: &mut Tensor) {
        kernels::conv::conv2d_forward(x.data(), w.data(), bias.map(|b| b.data()), g, y.data_mut())
    }
    fn conv2d_forward_sums(
        &self,
        x: &Tensor,
        w: &Tensor,
        bias: Option<&Tensor>,
        g: &ConvGeometry,
        y: &mut Tensor,
    ) -> Option<ChannelSums> {
        Some(kernels::conv::conv2d_forward_sums(x.data(), w.data(), bias.map(|b| b.data()), g, y.data_mut()))
    }
    fn conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeometry, dx: &mut Tensor) {
        kernels::conv::conv2d_backward_input(dy.data(), w.data(), g, dx.data_mut())
    }
    fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeometry,
        dw: &mut Tensor,
        db: Option<&mut Tensor>,
    ) {
        kernels::conv::conv2d_backward_weight(x.data(), dy.data(), g, dw.data_mut(), db.map(|d| d.data_mut()))
    }
    fn linear_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) {
        let (n, d_in, d_out) = (x.dim(0), x.dim(1), w.dim(0));
        kernels::linear::linear_forward(x.data(), w.data(), bias.map(|b| b.data()), n, d_in, d_out, y.data_mut())
    }
    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) {
        let (n, d_out, d_in) = (dy.dim(0), w.dim(0), w.dim(1));
        kernels::linear::linear_backward_input(dy.data(), w.data(), n, d_in, d_out, dx.data_mut())
    }
    fn linear_backward_weight(&self, x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: Option<&mut Tensor>) {
        let (n, d_in, d_out) = (x.dim(0), x.dim(1), dy.dim(1));
        let db = db.map(|d| d.data_mut());
        kernels::linear::linear_backward_weight(x.data(), dy.data(), n, d_in, d_out, dw.data_mut(), db)
    }
    fn batch_norm_train(
        &self,
        x: &Tensor,
        sums: Option<ChannelSums>,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &mut Tensor,
        running_var: &mut Tensor,
        eps: f32,
        momentum: f32,
        relu: Option<f32>,
        y: &mut Tensor,
    ) -> BnSaved {
        let (n, c, hw) = nchw(x);
        let sums = sums.unwrap_or_else(|| norm::channel_sums(x.data(), n, c, hw));
        let (rm, rv) = (running_mean.data_mut(), running_var.data_mut());
        let saved = norm::BnSaved::from_sums(&sums, n * hw, eps, momentum, rm, rv);
        let (scale, shift) = saved.scale_shift(gamma.data(), beta.data());
        norm::batch_norm_apply(x.data(), &scale, &shift, hw, relu, y.data_mut());
        BnSaved { mean: Tensor::from_vec(&[c], saved.mean), inv_std: Tensor::from_vec(&[c], saved.inv_std) }
    }
    fn batch_norm_eval(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        running_mean: &Tensor,
        running_var: &Tensor,
        eps: f32,
        relu: Option<f32>,
        y: &mut Tensor,
    ) -> BnSaved {
        let (_, c, hw) = nchw(x);
        let (rm, rv) = (running_mean.data(), running_var.data());
        let (scale, shift) = norm::eval_scale_shift(gamma.data(), beta.data(), rm, rv, eps);
        norm::batch_norm_apply(x.data(), &scale, &shift, hw, relu, y.data_mut());
        let inv_std = rv.iter().map(|v| 1.0 / (v + eps).sqrt()).collect();
        BnSaved { mean: running_mean.clone(), inv_std: Tensor::from_vec(&[c], inv_std) }
    }
    fn batch_norm_backward_sums(
        &self,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        saved: &BnSaved,
        relu: Option<FusedRelu>,
        dgamma: &mut Tensor,
        dbeta: &mut Tensor,
    ) {
        let (n, c, hw) = nchw(x);
        let s = host_saved(saved);
        let mask = relu_mask(&s, gamma, beta, relu);
        let (dg, db) = (dgamma.data_mut(), dbeta.data_mut());
        norm::batch_norm_backward_sums(x.data(), dy.data(), &s, mask.as_ref(), n, c, hw, dg, db)
    }
    fn batch_norm_backward_input(
        &self,
        x: &Tensor,
        dy: &Tensor,
        gamma: &Tensor,
        beta: &Tensor,
        saved: &BnSaved,
        relu: Option<FusedRelu>,
        dgamma: &Tensor,
        dbeta: &Tensor,
        dx: &mut Tensor,
    ) {
        let (n, _, hw) = nchw(x);
        let s = host_saved(saved);
        let mask = relu_mask(&s, gamma, beta, relu);
        let (g, dg, db) = (gamma.data(), dgamma.data(), dbeta.data());
        norm::batch_norm_backward_input(x.data(), dy.data(), g, &s, mask.as_ref(), dg, db, n, hw, dx.data_mut())
    }
    fn batch_norm_frozen_backward_input(
        &self,
        dy: &Tensor,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dx: &mut Tensor,
    ) {
        // dy·γ/σ is the eval-mode forward applied to dy with zero mean and zero shift
        let (_, c, hw) = nchw(dy);
        let zeros = vec![0.0; c];
        let (scale, shift) = norm::eval_scale_shift(gamma.data(), &zeros, &zeros, running_var.data(), eps);
        norm::batch_norm_apply(dy.data(), &scale, &shift, hw, None, dx.data_mut())
    }
    fn relu_forward(&self, x: &Tensor, threshold: f32, y: &mut Tensor) {
        kernels::act::relu_forward(x.data(), threshold, y.data_mut())
    }
    fn relu_backward(&self, x: &Tensor, dy: &Tensor, threshold: f32, extra: f32, dx: &mut Tensor) {
        kernels::act::relu_backward(x.data(), dy.data(), threshold, extra, dx.data_mut())
    }
    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) {
        kernels::act::add(a.data(), b.data(), y.data_mut())
    }
    fn add_relu(&self, a: &Tensor, b: &Tensor, threshold: f32, y: &mut Tensor) {
        kernels::act::add_relu(a.data(), b.data(), threshold, y.data_mut())
    }
    fn max_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor, argmax: &mut Tensor) {
        kernels::pool::max_pool_forward(x.data(), g, y.data_mut(), argmax.as_u32_mut())
    }
    fn max_pool_backward(&self, dy: &Tensor, argmax: &Tensor, g: &PoolGeometry, dx: &mut Tensor) {
        kernels::pool::max_pool_backward(dy.data(), argmax.as_u32(), g, dx.data_mut())
    }
    fn avg_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor) {
        kernels::pool::avg_pool_forward(x.data(), g, y.data_mut())
    }
    fn avg_pool_backward(&self, dy: &Tensor, g: &PoolGeometry, dx: &mut Tensor) {
        kernels::pool::avg_pool_backward(dy.data(), g, dx.data_mut())
    }
    fn global_avg_pool_forward(&self, x: &Tensor, y: &mut Tensor) {
        let (_, _, hw) = nchw(x);
        kernels::pool::global_avg_pool_forward(x.data(), hw, y.data_mut())
    }
    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor) {
        let (_, _, hw) = nchw(dx);
        kernels::pool::global_avg_pool_backward(dy.data(), hw, dx.data_mut())
    }
    fn softmax_cross_entropy(
        &self,
        logits: &Tensor,
        labels: &Tensor,
        top_k: usize,
        skip_correct: bool,
        dlogits: Option<&mut Tensor>,
        stats: &mut Tensor,
    ) {
        use kernels::loss::{softmax_cross_entropy, top_k_correct};
        let (classes, labels) = (logits.dim(1), labels.as_u32());
        let top1 = top_k_correct(logits.data(), labels, classes, 1);
        let k = top_k.clamp(1, classes);
        let topk = if k == 1 { top1.clone() } else { top_k_correct(logits.data(), labels, classes, k) };
        let mut scratch;
        let d = match dlogits {
            Some(d) => d.data_mut(),
            None => {
                scratch = vec![0.0; logits.len()];
                &mut scratch[..]
            }
        };
        let loss = softmax_cross_entropy(logits.data(), labels, classes, None, d);
        if skip_correct {
            // the reported loss stays the plain cross-entropy; the gradient drops right answers
            let w: Vec<f32> = top1.iter().map(|&c| if c { 0.0 } else { 1.0 }).collect();
            softmax_cross_entropy(logits.data(), labels, classes, Some(&w), d);
        }
        let count = |v: &[bool]| v.iter().filter(|&&c| c).count() as f32;
        stats.data_mut()[..loss_stats::LEN].copy_from_slice(&[loss, count(&top1), count(&topk)]);
    }
    fn ternarize(&self, w: &Tensor, rows: usize, cfg: &TernaryConfig, q: &mut Tensor, zero_fraction: &mut Tensor) {
        zero_fraction.data_mut()[0] = crate::quant::ternarize(w.data(), rows, cfg, q.data_mut()) as f32;
    }
    fn straight_through(&self, w: &Tensor, grad: &mut Tensor, clip: f32) {
        crate::quant::straight_through(w.data(), grad.data_mut(), Some(clip))
    }
    fn mask(&self, x: &mut Tensor, mask: &Tensor) {
        assert_eq!(x.len(), mask.len(), "mask of {} values for a tensor of {}", mask.len(), x.len());
        x.data_mut().iter_mut().zip(mask.data()).for_each(|(v, m)| *v *= m);
    }
    fn sgd_step(
        &self,
        w: &mut Tensor,
        g: &Tensor,
        v: &mut Tensor,
        lr: &Tensor,
        guard: Option<&Tensor>,
        momentum: f32,
        nesterov: bool,
        weight_decay: f32,
    ) {
        if guard.is_some_and(|g| !g.data()[0].is_finite()) {
            return;
        }
        let lr = lr.data()[0];
        let (w, g, v) = (w.data_mut(), g.data(), v.data_mut());
        for j in 0..w.len() {
            let grad = g[j] + weight_decay * w[j];
            v[j] = momentum * v[j] + grad;
            w[j] -= lr * if nesterov { grad + momentum * v[j] } else { v[j] };
        }
    }
}
