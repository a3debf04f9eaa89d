//! Device memory: `CudaBuffer`, the tensor storage of the CUDA backend, and a caching pool.
//! A dropped buffer goes back to the pool (host bookkeeping only) and the next request of
//! the same length takes it: a training step allocates the same shapes every time, so after
//! the first step no allocation reaches the driver. All work runs on one stream, so a buffer
//! reused by a later kernel is ordered after every kernel that used it before.
//!
//! Recorded steps (CUDA graphs) bake buffer addresses in. While a graph lives, every buffer
//! it touched is reserved for it: dropped, it goes to a separate free list that only later
//! recordings draw from, never eager work, so a replay cannot overwrite a buffer that
//! someone else has been handed since.

use cudarc::driver::{result, sys};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use tern_core::{Device, DeviceBuffer, Error, Result};

#[derive(Debug, Default)]
struct Pool {
    /// Free buffers by length in f32 elements.
    free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    /// Free buffers that a live graph uses: for recordings only.
    graph_free: HashMap<usize, Vec<sys::CUdeviceptr>>,
    /// Buffers live graphs use, with the number of graphs using each.
    graph_owned: HashMap<sys::CUdeviceptr, usize>,
    /// Buffers the recording in progress touched.
    recording: HashSet<sys::CUdeviceptr>,
    /// Bytes held from the driver (in use or free).
    held: usize,
}

/// What every buffer of one backend shares: the stream its copies run on and the pool.
#[derive(Debug)]
pub struct Shared {
    pub ordinal: usize,
    pub ctx: Arc<cudarc::driver::CudaContext>,
    pub stream: Arc<cudarc::driver::CudaStream>,
    pool: Mutex<Pool>,
    recording: AtomicBool,
}

fn bytes_of(len: usize) -> usize {
    (len.max(1) * 4).next_multiple_of(256)
}

impl Shared {
    pub fn new(ordinal: usize, ctx: Arc<cudarc::driver::CudaContext>, stream: Arc<cudarc::driver::CudaStream>) -> Self {
        Shared { ordinal, ctx, stream, pool: Mutex::new(Pool::default()), recording: AtomicBool::new(false) }
    }

    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }

    fn error(&self, what: impl std::fmt::Display) -> Error {
        Error::device(self.device().to_string(), what.to_string())
    }

    fn pool(&self) -> std::sync::MutexGuard<'_, Pool> {
        self.pool.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A buffer of `len` f32 elements with unspecified values.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let recording = self.recording.load(Ordering::Relaxed);
        let reused = {
            let mut p = self.pool();
            let from_graph = if recording { p.graph_free.get_mut(&len).and_then(Vec::pop) } else { None };
            from_graph.or_else(|| p.free.get_mut(&len).and_then(Vec::pop))
        };
        let ptr = match reused {
            Some(p) => p,
            None => self.fresh(len)?,
        };
        let b = CudaBuffer { ptr, len, nhwc: None, bf16: false, shared: self.clone() };
        b.note_use();
        Ok(b)
    }

    /// A buffer of `len` bfloat16 elements (half as many f32 slots, rounded up).
    pub fn alloc_bf16(self: &Arc<Self>, len: usize) -> Result<CudaBuffer> {
        let mut b = self.alloc(len.div_ceil(2))?;
        b.len = len;
        b.bf16 = true;
        Ok(b)
    }

    fn fresh(&self, len: usize) -> Result<sys::CUdeviceptr> {
        let bytes = bytes_of(len);
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
                    self.error(format!(
                        "allocating {bytes} bytes: {e} (device memory exhausted? try a smaller --batch)"
                    ))
                })?
            }
        };
        self.pool().held += bytes;
        Ok(ptr)
    }

    /// Returns every free cached buffer to the driver (after the stream has finished with
    /// them); buffers reserved for graphs stay.
    pub fn release_free(&self) {
        let _ = self.stream.synchronize();
        let mut p = self.pool();
        let free = std::mem::take(&mut p.free);
        for (len, ptrs) in free {
            for ptr in ptrs {
                // SAFETY: `ptr` came from malloc_sync and no buffer refers to it any more.
                if unsafe { result::free_sync(ptr) }.is_ok() {
                    p.held -= bytes_of(len);
                }
            }
        }
    }

    /// Bytes held from the driver, in use or cached.
    pub fn held_bytes(&self) -> usize {
        self.pool().held
    }

    /// Whether a graph is being recorded.
    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Relaxed)
    }

    /// Starts noting every buffer that device work touches (a graph recording).
    pub fn begin_recording(&self) {
        self.pool().recording.clear();
        self.recording.store(true, Ordering::Relaxed);
    }

    /// Ends the recording; the buffers it touched are reserved until `release_graph`.
    pub fn end_recording(&self) -> Vec<sys::CUdeviceptr> {
        self.recording.store(false, Ordering::Relaxed);
        let mut p = self.pool();
        let touched: Vec<_> = p.recording.drain().collect();
        for &ptr in &touched {
            *p.graph_owned.entry(ptr).or_insert(0) += 1;
        }
        // buffers freed during the recording went to the general list: reserve them too
        let Pool { free, graph_free, .. } = &mut *p;
        move_free(free, graph_free, |ptr| touched.contains(ptr));
        touched
    }

    /// A graph died: its buffers are free for everyone again (once no other graph uses them).
    pub fn release_graph(&self, touched: &[sys::CUdeviceptr]) {
        let mut p = self.pool();
        let mut unowned = HashSet::new();
        for ptr in touched {
            if let Some(n) = p.graph_owned.get_mut(ptr) {
                *n -= 1;
                if *n == 0 {
                    p.graph_owned.remove(ptr);
                    unowned.insert(*ptr);
                }
            }
        }
        let Pool { free, graph_free, .. } = &mut *p;
        move_free(graph_free, free, |ptr| unowned.contains(ptr));
    }
}

/// `[n, hw, c]` values in `[n, c, hw]` order.
fn nhwc_to_nchw(v: &[f32], n: usize, c: usize, hw: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; v.len()];
    for img in 0..n {
        let (src, dst) = (&v[img * hw * c..(img + 1) * hw * c], &mut out[img * c * hw..(img + 1) * c * hw]);
        for pos in 0..hw {
            for ch in 0..c {
                dst[ch * hw + pos] = src[pos * c + ch];
            }
        }
    }
    out
}

type FreeList = HashMap<usize, Vec<sys::CUdeviceptr>>;

/// Moves the buffers `pick` selects from one free list to the other.
fn move_free(from: &mut FreeList, to: &mut FreeList, pick: impl Fn(&sys::CUdeviceptr) -> bool) {
    for (len, ptrs) in from.iter_mut() {
        let (moved, kept): (Vec<_>, Vec<_>) = ptrs.drain(..).partition(|p| pick(p));
        *ptrs = kept;
        to.entry(*len).or_default().extend(moved);
    }
}

/// `len` f32 (or bfloat16) values in device memory (see the module doc for the pool).
#[derive(Debug)]
pub struct CudaBuffer {
    pub ptr: sys::CUdeviceptr,
    /// Elements (of the storage type).
    pub len: usize,
    /// Set when the values of an `[n, c, h, w]` tensor are stored channels-last
    /// (`[n, h, w, c]`; a conv filter `[k, r, s, c]`): the dimensions, in NCHW order.
    /// Host copies are converted back, so a host only ever sees NCHW.
    pub nhwc: Option<[usize; 4]>,
    /// Set when the values are stored as bfloat16 (activations under `Precision::Bf16`);
    /// host copies widen them to f32.
    pub bf16: bool,
    pub shared: Arc<Shared>,
}

impl CudaBuffer {
    /// The f32-sized slots the buffer holds (the pool's unit).
    pub fn slots(&self) -> usize {
        if self.bf16 {
            self.len.div_ceil(2)
        } else {
            self.len
        }
    }

    /// Bytes of the values.
    pub fn bytes(&self) -> usize {
        self.len * if self.bf16 { 2 } else { 4 }
    }

    /// Gives the memory back to the driver instead of the pool (a large one-off scratch).
    pub fn release_to_driver(self) {
        let s = self.shared.clone();
        let (ptr, len) = (self.ptr, self.slots());
        std::mem::forget(self);
        let _ = s.stream.synchronize();
        // SAFETY: `ptr` came from malloc_sync, and this buffer was its only owner.
        if unsafe { result::free_sync(ptr) }.is_ok() {
            s.pool().held -= bytes_of(len);
        }
    }

    /// Records that device work uses this buffer (only while a graph is being recorded).
    pub fn note_use(&self) {
        if self.shared.recording.load(Ordering::Relaxed) {
            self.shared.pool().recording.insert(self.ptr);
        }
    }
}

impl Drop for CudaBuffer {
    fn drop(&mut self) {
        let mut p = self.shared.pool();
        let reserved = p.graph_owned.contains_key(&self.ptr) || p.recording.contains(&self.ptr);
        let list = if reserved && !p.recording.contains(&self.ptr) { &mut p.graph_free } else { &mut p.free };
        list.entry(self.slots()).or_default().push(self.ptr);
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
        let s = &self.shared;
        let fail = |e: cudarc::driver::DriverError| {
            panic!("{}: copying a tensor to the host failed: {e}", s.device());
        };
        let out = if self.bf16 {
            let mut raw = vec![0u16; self.len];
            // SAFETY: `ptr` holds `len` bf16 values; ordered and completed as below.
            unsafe { result::memcpy_dtoh_async(&mut raw, self.ptr, s.stream.cu_stream()) }
                .and_then(|_| s.stream.synchronize())
                .unwrap_or_else(&fail);
            raw.into_iter().map(|b| f32::from_bits((b as u32) << 16)).collect()
        } else {
            let mut out = vec![0.0f32; self.len];
            // SAFETY: `ptr` holds `len` f32 values; the stream orders the copy after every
            // kernel that wrote them, and the synchronize completes it before `out` is read.
            unsafe { result::memcpy_dtoh_async(&mut out, self.ptr, s.stream.cu_stream()) }
                .and_then(|_| s.stream.synchronize())
                .unwrap_or_else(fail);
            out
        };
        match self.nhwc {
            Some([n, c, h, w]) => nhwc_to_nchw(&out, n, c, h * w),
            None => out,
        }
    }
    fn duplicate(&self) -> Box<dyn DeviceBuffer> {
        let s = &self.shared;
        let mut copy =
            if self.bf16 { s.alloc_bf16(self.len) } else { s.alloc(self.len) }.unwrap_or_else(|e| panic!("{e}"));
        copy.nhwc = self.nhwc;
        self.note_use();
        // SAFETY: both buffers hold `len` values of the same type on this stream's device.
        unsafe { result::memcpy_dtod_async(copy.ptr, self.ptr, self.bytes(), s.stream.cu_stream()) }
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
