//! Output-size arithmetic for convolutions and pooling, written once.

use crate::error::{Error, Result};

/// A 2-D convolution over `[n, c_in, h, w]` with `c_out` filters of `k_h x k_w`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ConvGeometry {
    pub n: usize,
    pub c_in: usize,
    pub h: usize,
    pub w: usize,
    pub c_out: usize,
    pub k_h: usize,
    pub k_w: usize,
    pub stride: usize,
    pub pad: usize,
}

impl ConvGeometry {
    /// Validates that the kernel fits the padded input and the stride is positive.
    pub fn new(
        n: usize,
        c_in: usize,
        h: usize,
        w: usize,
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<Self> {
        let g = ConvGeometry { n, c_in, h, w, c_out, k_h: k, k_w: k, stride, pad };
        if stride == 0 {
            return Err(Error::invalid("stride", "must be at least 1"));
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            return Err(Error::invalid(
                "input size",
                format!("{h}x{w} with padding {pad} is smaller than the {k}x{k} kernel"),
            ));
        }
        Ok(g)
    }

    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k_h) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k_w) / self.stride + 1
    }
    /// Reduction length of one output: C·R·S.
    pub fn crs(&self) -> usize {
        self.c_in * self.k_h * self.k_w
    }
    /// Output positions per image: P·Q.
    pub fn pq(&self) -> usize {
        self.h_out() * self.w_out()
    }
    pub fn in_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    pub fn out_len(&self) -> usize {
        self.n * self.c_out * self.pq()
    }
    pub fn weight_len(&self) -> usize {
        self.c_out * self.crs()
    }
    /// Multiply-adds of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.n * self.c_out * self.crs() * self.pq()) as u64
    }
    /// Output columns [lo, hi) whose kernel tap `s` reads inside the input row (the rest read
    /// padding).
    pub fn valid_cols(&self, s: usize) -> (usize, usize) {
        let wo = self.w_out();
        let lo = self.pad.saturating_sub(s).div_ceil(self.stride).min(wo);
        let hi = if self.w + self.pad > s { ((self.w + self.pad - s - 1) / self.stride + 1).min(wo) } else { 0 };
        (lo, hi.max(lo))
    }

    /// True when the convolution is a plain matrix multiply over channels (1x1, stride 1, no pad).
    pub fn is_pointwise(&self) -> bool {
        self.k_h == 1 && self.k_w == 1 && self.stride == 1 && self.pad == 0
    }
}

/// A square pooling window over `[n, c, h, w]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PoolGeometry {
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub k: usize,
    pub stride: usize,
    pub pad: usize,
}

impl PoolGeometry {
    pub fn new(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        if stride == 0 || k == 0 {
            return Err(Error::invalid("pool", "kernel and stride must be at least 1"));
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            return Err(Error::invalid("input size", format!("{h}x{w} is smaller than the {k}x{k} pooling window")));
        }
        if pad * 2 > k {
            return Err(Error::invalid("pool padding", format!("{pad} is more than half the window {k}")));
        }
        Ok(PoolGeometry { n, c, h, w, k, stride, pad })
    }
    pub fn h_out(&self) -> usize {
        (self.h + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn w_out(&self) -> usize {
        (self.w + 2 * self.pad - self.k) / self.stride + 1
    }
    pub fn out_len(&self) -> usize {
        self.n * self.c * self.h_out() * self.w_out()
    }
}
