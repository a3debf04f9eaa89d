//! Device memory: `CudaBuffer`, the tensor storage of the CUDA backend, and a caching pool.
//! A dropped buffer goes back to the pool (host bookkeeping only) and the next request of
//! the same length takes it: a training step allocates the same shapes every time, so after
//! the first step no allocation reaches the driver. All work runs on one stream, so a buffer
//! reused by a later kernel is ordered after every kernel that used it before.

use cudarc::driver::{result, sys};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tern_core::{Device, DeviceBuffer, Error, Result};

/// What every buffer of one backend shares: the stream its copies run on and the pool.
#[derive(Debug)]
pub struct Shared {
    pub ordinal: usize,
    pub ctx: Arc<cudarc::driver::CudaContext>,
    pub stream: Arc<cudarc::driver::CudaStream>,
    /// Free buffers by length in f32 elements.
    free: Mutex<HashMap<usize, Vec<sys::CUdeviceptr>>>,
    /// Bytes held from the driver (in use or free).
    held: Mutex<usize>,
}

impl Shared {
    pub fn new(ordinal: usize, ctx: Arc<cudarc::driver::CudaContext>, stream: Arc<cudarc::driver::CudaStream>) -> Self {
        Shared { ordinal, ctx, stream, free: Mutex::new(HashMap::new()), held: Mutex::new(0) }
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::device(self.device().to_string(), what.to_string())
    }

    /// A buffer of `len` f32 elements with unspecified values.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let reused = self.free.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&len).and_then(Vec::pop);
        let ptr = match reused {
            Some(p) => p,
            None => self.fresh(len)?,
        };
        Ok(CudaBuffer { ptr, len, shared: self.clone() })
    }

    fn fresh(&self, len: usize) -> Result<sys::CUdeviceptr> {
        let bytes = (len.max(1) * 4).next_multiple_of(256);
        self.ctx.bind_to_thread().map_err(|e| self.error(e))?;
        // SAFETY: a plain allocation in the bound context; freed only by `release_free`.
        let first = unsafe { result::malloc_sync(bytes) };
        let ptr = match first {
            Ok(p) => p,
            Err(_) => {
                // out of memory: give the cached buffers back to the driver and try once more
                self.release_free();
                // SAFETY: as above.
                unsafe { result::malloc_sync(bytes) }.map_err(|e| {
                    self.error(format!("allocating {bytes} bytes: {e} (device memory exhausted? try a smaller --batch)"))
                })?
            }
        };
        *self.held.lock().unwrap_or_else(|e| e.into_inner()) += bytes;
        Ok(ptr)
    }

    /// Returns every free cached buffer to the driver (after the stream has finished with them).
    pub fn release_free(&self) {
        let _ = self.stream.synchronize();
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        for (len, ptrs) in free.drain() {
            for p in ptrs {
                // SAFETY: `p` came from malloc_sync and no buffer refers to it any more.
                if unsafe { result::free_sync(p) }.is_ok() {
                    *held -= (len.max(1) * 4).next_multiple_of(256);
                }
            }
        }
    }

    /// Bytes held from the driver, in use or cached.
    pub fn held_bytes(&self) -> usize {
        *self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `len` f32 values in device memory (see the module doc for the pool).
#[derive(Debug)]
pub struct CudaBuffer {
    pub ptr: sys::CUdeviceptr,
    pub len: usize,
    pub shared: Arc<Shared>,
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        let mut free = self.shared.free.lock().unwrap_or_else(|e| e.into_inner());
        free.entry(self.len).or_default().push(self.ptr);
    }
}

impl DeviceBuffer for CudaBuffer {
    fn device(&self) -> Device {
        self.shared.device()
    }
    fn len(&self) -> usize {
        self.len
    }
    fn to_host(&self) -> Vec<f32> {
        let mut out = vec![0.0f32; self.len];
        let s = &self.shared;
        // SAFETY: `ptr` holds `len` f32 values; the stream orders the copy after every kernel
        // that wrote them, and the synchronize completes it before `out` is read.
        let r = unsafe { result::memcpy_dtoh_async(&mut out, self.ptr, s.stream.cu_stream()) }
            .and_then(|_| s.stream.synchronize());
        if let Err(e) = r {
            panic!("{}: copying a tensor to the host failed: {e}", s.device());
        }
        out
    }
    fn duplicate(&self) -> Box<dyn DeviceBuffer> {
        let s = &self.shared;
        let copy = s.alloc(self.len).unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: both buffers hold `len` f32 values on this stream's device.
        unsafe { result::memcpy_dtod_async(copy.ptr, self.ptr, self.len * 4, s.stream.cu_stream()) }
            .unwrap_or_else(|e| panic!("{}: device copy failed: {e}", s.device()));
        Box::new(copy)
    }
    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn std::any::Any {
        self
    }
}
