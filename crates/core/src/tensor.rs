//! `Tensor`: a contiguous, row-major (NCHW for images) f32 array with its shape.
//! Storage is shared copy-on-write, so layers keep their inputs for the backward pass by
//! cloning the handle, not the data.

use crate::rng::Rng;
use std::sync::{Arc, Mutex};

#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

/// A tensor's values. Large buffers go back to a small pool when the last handle drops, so
/// that [`Tensor::for_overwrite`] can hand them out again without zeroing them (zeroing
/// fresh activation buffers cost ~8 % of a training step).
#[derive(Clone, Debug, PartialEq)]
struct Storage(Vec<f32>);

impl Drop for Storage {
    fn drop(&mut self) {
        if self.0.len() >= POOL_MIN_LEN {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let held: usize = pool.iter().map(Vec::len).sum();
            if pool.len() < POOL_MAX_BUFFERS && held + self.0.len() <= POOL_MAX_FLOATS {
                pool.push(std::mem::take(&mut self.0));
            }
        }
    }
}

/// Buffers smaller than this are not worth pooling.
const POOL_MIN_LEN: usize = 1 << 14;
const POOL_MAX_BUFFERS: usize = 64;
/// 1 GiB of floats at most.
const POOL_MAX_FLOATS: usize = 1 << 28;
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

impl Tensor {
    pub fn zeros(shape: &[usize]) -> Self {
        Tensor::from_vec(shape, vec![0.0; shape.iter().product()])
    }

    /// A tensor whose every element the caller will overwrite: a pooled buffer of the same
    /// length if one is free (holding stale values of an earlier tensor), else zeros.
    pub fn for_overwrite(shape: &[usize]) -> Self {
        let n: usize = shape.iter().product();
        if n >= POOL_MIN_LEN {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(i) = pool.iter().rposition(|v| v.len() == n) {
                let v = pool.swap_remove(i);
                drop(pool);
                return Tensor::from_vec(shape, v);
            }
        }
        Tensor::zeros(shape)
    }

    pub fn full(shape: &[usize], v: f32) -> Self {
        Tensor::from_vec(shape, vec![v; shape.iter().product()])
    }

    /// Panics if `data.len()` is not the product of `shape` (a programmer error).
    pub fn from_vec(shape: &[usize], data: Vec<f32>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), data.len(), "shape {shape:?} does not match data length");
        Tensor { shape: shape.to_vec(), data: Arc::new(Storage(data)) }
    }

    /// Samples from N(0, std²).
    pub fn randn(shape: &[usize], std: f32, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        Tensor::from_vec(shape, (0..n).map(|_| rng.normal() * std).collect())
    }

    /// Samples uniformly from [lo, hi).
    pub fn uniform(shape: &[usize], lo: f32, hi: f32, rng: &mut Rng) -> Self {
        let n = shape.iter().product();
        Tensor::from_vec(shape, (0..n).map(|_| lo + (hi - lo) * rng.uniform()).collect())
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }
    pub fn dim(&self, i: usize) -> usize {
        self.shape[i]
    }
    pub fn len(&self) -> usize {
        self.data.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.data.0.is_empty()
    }
    pub fn data(&self) -> &[f32] {
        &self.data.0
    }
    /// Mutable access; copies the data first if another handle shares it.
    pub fn data_mut(&mut self) -> &mut [f32] {
        Arc::make_mut(&mut self.data).0.as_mut_slice()
    }
    pub fn into_data(self) -> Vec<f32> {
        match Arc::try_unwrap(self.data) {
            Ok(mut own) => std::mem::take(&mut own.0),
            Err(shared) => shared.0.clone(),
        }
    }
    /// Whether two tensors share storage (clones do until one is written).
    pub fn shares_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.data, &other.data)
    }

    /// Same data, new shape with the same number of elements.
    pub fn reshape(mut self, shape: &[usize]) -> Self {
        assert_eq!(shape.iter().product::<usize>(), self.len(), "reshape {:?} -> {shape:?}", self.shape);
        self.shape = shape.to_vec();
        self
    }

    pub fn fill(&mut self, v: f32) {
        self.data_mut().iter_mut().for_each(|x| *x = v);
    }

    pub fn is_finite(&self) -> bool {
        self.data().iter().all(|x| x.is_finite())
    }

    /// Largest absolute element-wise difference; shapes must match.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape);
        self.data().iter().zip(other.data()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// Fraction of elements that are exactly zero.
    pub fn zero_fraction(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.data().iter().filter(|&&x| x == 0.0).count() as f64 / self.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clones_share_until_written() {
        let a = Tensor::from_vec(&[2], vec![1.0, 2.0]);
        let mut b = a.clone();
        assert!(a.shares_storage(&b));
        b.data_mut()[0] = 5.0;
        assert!(!a.shares_storage(&b));
        assert_eq!((a.data(), b.data()), (&[1.0, 2.0][..], &[5.0, 2.0][..]));
        assert_eq!(b.reshape(&[1, 2]).into_data(), vec![5.0, 2.0]);
    }

    #[test]
    fn dropped_buffers_are_reused_for_overwrite() {
        let n = POOL_MIN_LEN + 12345; // a length no other test uses
        let t = Tensor::full(&[n], 3.0);
        drop(t);
        let u = Tensor::for_overwrite(&[1, n]);
        assert_eq!(u.shape(), &[1, n]);
        assert_eq!(u.len(), n);
        // small tensors are never pooled, and zeros() always zeroes
        assert_eq!(Tensor::zeros(&[n]).data().iter().filter(|&&v| v != 0.0).count(), 0);
    }
}
