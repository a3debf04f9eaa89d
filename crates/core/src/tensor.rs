//! `Tensor`: a contiguous, row-major (NCHW for images) f32 array with its shape, stored on
//! its device: host memory, or a buffer that a device backend (tern-cuda) owns.
//! Storage is shared copy-on-write, so layers keep their inputs for the backward pass by
//! cloning the handle, not the data.
//!
//! Host code reads values with [`Tensor::data`]; on a device tensor that is a programmer
//! error (a panic naming the device), so every copy to the host is an explicit
//! [`Tensor::to_host`]. Index tensors (labels, max-pool argmax) hold `u32` bit patterns in
//! the f32 slots ([`Tensor::from_u32`], [`Tensor::as_u32`]).

use crate::rng::Rng;
use std::any::Any;
use std::fmt;
use std::sync::{Arc, Mutex};

/// Where a tensor's values live.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum Device {
    Cpu,
    /// A CUDA device by ordinal.
    Cuda(usize),
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = crate::Error;
    /// `cpu`, `cuda` (device 0) or `cuda:N`.
    fn from_str(s: &str) -> crate::Result<Self> {
        let bad = || crate::Error::invalid("--device", format!("`{s}`: expected cpu, cuda or cuda:N"));
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(Device::Cuda).ok_or_else(bad),
        }
    }
}

/// A buffer of f32 values in a device's memory. Device backends implement it and downcast
/// through `as_any` to reach their own buffer type.
pub trait DeviceBuffer: Send + Sync + fmt::Debug {
    fn device(&self) -> Device;
    /// Number of f32 elements.
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// A host copy of the values (waits for the device).
    fn to_host(&self) -> Vec<f32>;
    /// A new buffer on the same device with the same values.
    fn duplicate(&self) -> Box<dyn DeviceBuffer>;
    fn as_any(&self) -> &dyn Any;
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

#[derive(Clone, Debug)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Arc<Storage>,
}

impl PartialEq for Tensor {
    /// Same shape and same values (device values are copied to the host to compare).
    fn eq(&self, other: &Tensor) -> bool {
        self.shape == other.shape && self.device() == other.device() && self.host_values() == other.host_values()
    }
}

/// A tensor's values. Large host buffers go back to a small pool when the last handle
/// drops, so that [`Tensor::for_overwrite`] can hand them out again without zeroing them
/// (zeroing fresh activation buffers cost ~8 % of a training step).
#[derive(Debug)]
enum Storage {
    Host(Vec<f32>),
    Device(Box<dyn DeviceBuffer>),
}

impl Clone for Storage {
    fn clone(&self) -> Self {
        match self {
            Storage::Host(v) => Storage::Host(v.clone()),
            Storage::Device(b) => Storage::Device(b.duplicate()),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        let Storage::Host(v) = self else { return };
        if v.len() >= POOL_MIN_LEN {
            let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
            let held: usize = pool.iter().map(Vec::len).sum();
            if pool.len() < POOL_MAX_BUFFERS && held + v.len() <= POOL_MAX_FLOATS {
                pool.push(std::mem::take(v));
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
        Tensor { shape: shape.to_vec(), data: Arc::new(Storage::Host(data)) }
    }

    /// A tensor over a device buffer (for device backends).
    pub fn from_device(shape: &[usize], buf: Box<dyn DeviceBuffer>) -> Self {
        assert_eq!(shape.iter().product::<usize>(), buf.len(), "shape {shape:?} does not match buffer length");
        Tensor { shape: shape.to_vec(), data: Arc::new(Storage::Device(buf)) }
    }

    /// An index tensor: `u32` values stored as bit patterns in the f32 slots.
    pub fn from_u32(shape: &[usize], v: &[u32]) -> Self {
        Tensor::from_vec(shape, v.iter().map(|&i| f32::from_bits(i)).collect())
    }

    /// Bytes packed four to an f32 slot (a data set's pixels kept on a device); the last slot
    /// is padded with zeros.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        // one pass of whole little-endian words (it vectorises: a streamed 224-px batch is
        // ~38 MB, and a byte-at-a-time fold took ~40 ms of the training thread per batch)
        let mut v: Vec<f32> =
            bytes.chunks_exact(4).map(|c| f32::from_bits(u32::from_le_bytes([c[0], c[1], c[2], c[3]]))).collect();
        let tail = bytes.chunks_exact(4).remainder();
        if !tail.is_empty() {
            v.push(f32::from_bits(tail.iter().enumerate().fold(0u32, |a, (i, &b)| a | (b as u32) << (8 * i))));
        }
        let n = v.len();
        Tensor::from_vec(&[n], v)
    }

    /// The bytes of a [`Tensor::from_bytes`] tensor (with its padding); host only.
    pub fn as_bytes(&self) -> &[u8] {
        let d = self.data();
        // SAFETY: any f32 bit pattern is four valid bytes; the slice borrows `self` as `d` does,
        // and u8 has alignment 1.
        unsafe { std::slice::from_raw_parts(d.as_ptr().cast::<u8>(), d.len() * 4) }
    }

    /// An index tensor's values (see [`Tensor::from_u32`]); host only.
    pub fn as_u32(&self) -> &[u32] {
        let d = self.data();
        // SAFETY: f32 and u32 have the same size and alignment, and every bit pattern is a
        // valid u32; the slice borrows `self` as `d` does.
        unsafe { std::slice::from_raw_parts(d.as_ptr().cast::<u32>(), d.len()) }
    }

    /// Mutable access to an index tensor's values; host only.
    pub fn as_u32_mut(&mut self) -> &mut [u32] {
        let d = self.data_mut();
        // SAFETY: as in `as_u32`; the exclusive borrow of `self` covers the slice.
        unsafe { std::slice::from_raw_parts_mut(d.as_mut_ptr().cast::<u32>(), d.len()) }
    }

    pub fn device(&self) -> Device {
        match &*self.data {
            Storage::Host(_) => Device::Cpu,
            Storage::Device(b) => b.device(),
        }
    }

    pub fn is_host(&self) -> bool {
        matches!(&*self.data, Storage::Host(_))
    }

    /// The device buffer, if the tensor lives on a device.
    pub fn device_buffer(&self) -> Option<&dyn DeviceBuffer> {
        match &*self.data {
            Storage::Host(_) => None,
            Storage::Device(b) => Some(b.as_ref()),
        }
    }

    /// Mutable device buffer; copies it first if another handle shares it.
    pub fn device_buffer_mut(&mut self) -> Option<&mut dyn DeviceBuffer> {
        match Arc::make_mut(&mut self.data) {
            Storage::Host(_) => None,
            Storage::Device(b) => Some(b.as_mut()),
        }
    }

    /// The same tensor in host memory (a handle clone if it already is there).
    pub fn to_host(&self) -> Tensor {
        match &*self.data {
            Storage::Host(_) => self.clone(),
            Storage::Device(b) => Tensor::from_vec(&self.shape, b.to_host()),
        }
    }

    /// The values as a host vector, wherever they live.
    pub fn host_values(&self) -> std::borrow::Cow<'_, [f32]> {
        match &*self.data {
            Storage::Host(v) => std::borrow::Cow::Borrowed(v.as_slice()),
            Storage::Device(b) => std::borrow::Cow::Owned(b.to_host()),
        }
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
        match &*self.data {
            Storage::Host(v) => v.len(),
            Storage::Device(b) => b.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The host values. Panics on a device tensor: host code must copy it explicitly
    /// ([`Tensor::to_host`]), so that no transfer happens by accident.
    pub fn data(&self) -> &[f32] {
        match &*self.data {
            Storage::Host(v) => v,
            Storage::Device(b) => {
                panic!("a {:?} tensor on {} was read as host memory (missing to_host)", self.shape, b.device())
            }
        }
    }
    /// Mutable host values; copies the data first if another handle shares it. Panics on a
    /// device tensor, as [`Tensor::data`] does.
    pub fn data_mut(&mut self) -> &mut [f32] {
        let shape = &self.shape;
        match Arc::make_mut(&mut self.data) {
            Storage::Host(v) => v.as_mut_slice(),
            Storage::Device(b) => panic!("a {shape:?} tensor on {} was written as host memory", b.device()),
        }
    }
    /// The values as a host vector (copied from the device if need be).
    pub fn into_data(self) -> Vec<f32> {
        match Arc::try_unwrap(self.data) {
            Ok(mut own) => match &mut own {
                Storage::Host(v) => std::mem::take(v),
                Storage::Device(b) => b.to_host(),
            },
            Err(shared) => match &*shared {
                Storage::Host(v) => v.clone(),
                Storage::Device(b) => b.to_host(),
            },
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

    /// Whether every value is finite (device values are copied to the host).
    pub fn is_finite(&self) -> bool {
        self.host_values().iter().all(|x| x.is_finite())
    }

    /// Largest absolute element-wise difference; shapes must match.
    pub fn max_abs_diff(&self, other: &Tensor) -> f32 {
        assert_eq!(self.shape, other.shape);
        self.host_values().iter().zip(other.host_values().iter()).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max)
    }

    /// Fraction of elements that are exactly zero (device values are copied to the host).
    pub fn zero_fraction(&self) -> f64 {
        if self.is_empty() {
            return 0.0;
        }
        self.host_values().iter().filter(|&&x| x == 0.0).count() as f64 / self.len() as f64
    }
}

#[cfg(test)]
mod tests {
    /// `cargo test --release -p tern-core -- --ignored --nocapture packing`: one streamed
    /// 224-px batch of 256 images (38.5 MB) packed, against the byte-at-a-time fold before.
    #[test]
    #[ignore]
    fn speed_of_packing_a_streamed_batch() {
        let bytes: Vec<u8> = (0..256 * 3 * 224 * 224).map(|i| (i % 251) as u8).collect();
        let old = || -> Vec<u32> {
            bytes.chunks(4).map(|c| c.iter().enumerate().fold(0u32, |a, (i, &b)| a | (b as u32) << (8 * i))).collect()
        };
        let time = |f: &dyn Fn() -> usize| {
            (0..5)
                .map(|_| {
                    let t = std::time::Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64() * 1e3
                })
                .fold(f64::INFINITY, f64::min)
        };
        let before = time(&|| Tensor::from_u32(&[bytes.len() / 4], &old()).len());
        let after = time(&|| Tensor::from_bytes(&bytes).len());
        println!(
            "packing 38.5 MB: byte fold + from_u32 {before:.1} ms, from_bytes {after:.1} ms ({:.1}x)",
            before / after
        );
    }

    #[test]
    fn bytes_pack_four_to_a_slot_and_come_back() {
        for n in [0usize, 1, 4, 7, 1001] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 37 % 256) as u8).collect();
            let t = Tensor::from_bytes(&bytes);
            assert_eq!(t.len(), n.div_ceil(4));
            assert_eq!(&t.as_bytes()[..n], &bytes[..]);
            assert!(t.as_bytes()[n..].iter().all(|&b| b == 0), "padding is zero");
        }
    }

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

    #[test]
    fn index_tensors_and_device_names() {
        let t = Tensor::from_u32(&[3], &[0, 7, u32::MAX]);
        assert_eq!(t.as_u32(), &[0, 7, u32::MAX]);
        assert_eq!(t.device(), Device::Cpu);
        assert_eq!("cuda:2".parse::<Device>().unwrap(), Device::Cuda(2));
        assert_eq!("cuda".parse::<Device>().unwrap(), Device::Cuda(0));
        assert!("gpu".parse::<Device>().unwrap_err().to_string().contains("--device"));
        assert_eq!(Device::Cuda(1).to_string(), "cuda:1");
    }
}
