//! The kernel boundary: layers call a `Backend`, never a kernel directly, so that a GPU
//! backend can later implement the same operations. `CpuBackend` runs the CPU kernels.

use crate::geometry::{ConvGeometry, PoolGeometry};
use crate::kernels::{
    self,
    norm::{BnSaved, ChannelSums, ReluMask},
};

/// Every operation a layer needs. Shapes are those of the matching functions in [`kernels`].
/// Output slices are overwritten entirely, the pooling backward passes included (they zero
/// their input gradients before adding): layers hand them recycled buffers with stale values
/// (`Tensor::for_overwrite`).
pub trait Backend: Send + Sync {
    fn name(&self) -> &'static str;
    fn conv2d_forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]);
    fn conv2d_backward_input(&self, dy: &[f32], w: &[f32], g: &ConvGeometry, dx: &mut [f32]);
    fn conv2d_backward_weight(&self, x: &[f32], dy: &[f32], g: &ConvGeometry, dw: &mut [f32], db: Option<&mut [f32]>);
    fn linear_forward(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        d_in: usize,
        d_out: usize,
        y: &mut [f32],
    );
    fn linear_backward_input(&self, dy: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize, dx: &mut [f32]);
    fn linear_backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        n: usize,
        d_in: usize,
        d_out: usize,
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    );
    /// Per-channel Σx and Σx² of `x: [n, c, hw]` (the train-mode batch statistics).
    fn channel_sums(&self, x: &[f32], n: usize, c: usize, hw: usize) -> ChannelSums;
    /// `conv2d_forward` that also returns its output's [`Backend::channel_sums`] (taken per
    /// image while the image's output is still in cache, for a BN that follows).
    fn conv2d_forward_sums(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
        y: &mut [f32],
    ) -> ChannelSums {
        self.conv2d_forward(x, w, bias, g, y);
        self.channel_sums(y, g.n, g.c_out, g.pq())
    }
    /// y = scale[ch]·x + shift[ch] per channel, then a ReLU with threshold `relu` if given.
    fn batch_norm_apply(&self, x: &[f32], scale: &[f32], shift: &[f32], hw: usize, relu: Option<f32>, y: &mut [f32]);
    fn batch_norm_backward_sums(
        &self,
        x: &[f32],
        dy: &[f32],
        saved: &BnSaved,
        mask: Option<&ReluMask>,
        n: usize,
        c: usize,
        hw: usize,
        dgamma: &mut [f32],
        dbeta: &mut [f32],
    );
    fn batch_norm_backward_input(
        &self,
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
    );
    fn relu_forward(&self, x: &[f32], threshold: f32, y: &mut [f32]);
    fn relu_backward(&self, x: &[f32], dy: &[f32], threshold: f32, extra: f32, dx: &mut [f32]);
    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]);
    /// y = relu(a + b), threshold ≥ 0 (the residual add and its ReLU in one pass).
    fn add_relu(&self, a: &[f32], b: &[f32], threshold: f32, y: &mut [f32]);
    fn max_pool_forward(&self, x: &[f32], g: &PoolGeometry, y: &mut [f32], argmax: &mut [u32]);
    fn max_pool_backward(&self, dy: &[f32], argmax: &[u32], g: &PoolGeometry, dx: &mut [f32]);
    fn avg_pool_forward(&self, x: &[f32], g: &PoolGeometry, y: &mut [f32]);
    fn avg_pool_backward(&self, dy: &[f32], g: &PoolGeometry, dx: &mut [f32]);
    fn global_avg_pool_forward(&self, x: &[f32], hw: usize, y: &mut [f32]);
    fn global_avg_pool_backward(&self, dy: &[f32], hw: usize, dx: &mut [f32]);
    fn softmax_cross_entropy(
        &self,
        logits: &[f32],
        labels: &[u32],
        classes: usize,
        weights: Option<&[f32]>,
        dlogits: &mut [f32],
    ) -> f32;
}

/// The CPU backend: rayon-parallel kernels from [`kernels`].
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuBackend;

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "cpu"
    }
    fn conv2d_forward(&self, x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
        kernels::conv::conv2d_forward(x, w, bias, g, y)
    }
    fn conv2d_backward_input(&self, dy: &[f32], w: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
        kernels::conv::conv2d_backward_input(dy, w, g, dx)
    }
    fn conv2d_backward_weight(&self, x: &[f32], dy: &[f32], g: &ConvGeometry, dw: &mut [f32], db: Option<&mut [f32]>) {
        kernels::conv::conv2d_backward_weight(x, dy, g, dw, db)
    }
    fn linear_forward(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        n: usize,
        d_in: usize,
        d_out: usize,
        y: &mut [f32],
    ) {
        kernels::linear::linear_forward(x, w, bias, n, d_in, d_out, y)
    }
    fn linear_backward_input(&self, dy: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize, dx: &mut [f32]) {
        kernels::linear::linear_backward_input(dy, w, n, d_in, d_out, dx)
    }
    fn linear_backward_weight(
        &self,
        x: &[f32],
        dy: &[f32],
        n: usize,
        d_in: usize,
        d_out: usize,
        dw: &mut [f32],
        db: Option<&mut [f32]>,
    ) {
        kernels::linear::linear_backward_weight(x, dy, n, d_in, d_out, dw, db)
    }
    fn channel_sums(&self, x: &[f32], n: usize, c: usize, hw: usize) -> ChannelSums {
        kernels::norm::channel_sums(x, n, c, hw)
    }
    fn conv2d_forward_sums(
        &self,
        x: &[f32],
        w: &[f32],
        bias: Option<&[f32]>,
        g: &ConvGeometry,
        y: &mut [f32],
    ) -> ChannelSums {
        kernels::conv::conv2d_forward_sums(x, w, bias, g, y)
    }
    fn batch_norm_apply(&self, x: &[f32], scale: &[f32], shift: &[f32], hw: usize, relu: Option<f32>, y: &mut [f32]) {
        kernels::norm::batch_norm_apply(x, scale, shift, hw, relu, y)
    }
    fn batch_norm_backward_sums(
        &self,
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
        kernels::norm::batch_norm_backward_sums(x, dy, saved, mask, n, c, hw, dgamma, dbeta)
    }
    fn batch_norm_backward_input(
        &self,
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
        kernels::norm::batch_norm_backward_input(x, dy, gamma, saved, mask, dgamma, dbeta, n, hw, dx)
    }
    fn relu_forward(&self, x: &[f32], threshold: f32, y: &mut [f32]) {
        kernels::act::relu_forward(x, threshold, y)
    }
    fn relu_backward(&self, x: &[f32], dy: &[f32], threshold: f32, extra: f32, dx: &mut [f32]) {
        kernels::act::relu_backward(x, dy, threshold, extra, dx)
    }
    fn add_relu(&self, a: &[f32], b: &[f32], threshold: f32, y: &mut [f32]) {
        kernels::act::add_relu(a, b, threshold, y)
    }
    fn add(&self, a: &[f32], b: &[f32], y: &mut [f32]) {
        kernels::act::add(a, b, y)
    }
    fn max_pool_forward(&self, x: &[f32], g: &PoolGeometry, y: &mut [f32], argmax: &mut [u32]) {
        kernels::pool::max_pool_forward(x, g, y, argmax)
    }
    fn max_pool_backward(&self, dy: &[f32], argmax: &[u32], g: &PoolGeometry, dx: &mut [f32]) {
        kernels::pool::max_pool_backward(dy, argmax, g, dx)
    }
    fn avg_pool_forward(&self, x: &[f32], g: &PoolGeometry, y: &mut [f32]) {
        kernels::pool::avg_pool_forward(x, g, y)
    }
    fn avg_pool_backward(&self, dy: &[f32], g: &PoolGeometry, dx: &mut [f32]) {
        kernels::pool::avg_pool_backward(dy, g, dx)
    }
    fn global_avg_pool_forward(&self, x: &[f32], hw: usize, y: &mut [f32]) {
        kernels::pool::global_avg_pool_forward(x, hw, y)
    }
    fn global_avg_pool_backward(&self, dy: &[f32], hw: usize, dx: &mut [f32]) {
        kernels::pool::global_avg_pool_backward(dy, hw, dx)
    }
    fn softmax_cross_entropy(
        &self,
        logits: &[f32],
        labels: &[u32],
        classes: usize,
        weights: Option<&[f32]>,
        dlogits: &mut [f32],
    ) -> f32 {
        kernels::loss::softmax_cross_entropy(logits, labels, classes, weights, dlogits)
    }
}
