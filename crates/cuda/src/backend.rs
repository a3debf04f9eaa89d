//! `CudaBackend`: tern-core's `Backend` on one CUDA device and one stream.

use crate::conv::{Convs, Operands, Pass};
use crate::kernels::{act_kernel, grid_for, Kernels};
use crate::memory::{CudaBuffer, Shared};
use crate::staging::{Staging, PINNED_MIN_BYTES};
use crate::{args, Algorithms, Layout, Precision};
use cudarc::cublas::{result as blas, sys as blas_sys};
use cudarc::driver::{result as drv, CudaContext};
use std::sync::{Arc, Mutex};
use tern_core::kernels::norm::ChannelSums;
use tern_core::kernels::sparsity::Nonzeros;
use tern_core::quant::{Scale, TernaryConfig, Threshold};
use tern_core::{loss_stats, Backend, BnSaved, ConvGeometry, Device, Error, FusedRelu, PoolGeometry, Result, Tensor};

/// cuBLAS's own workspace.
const CUBLAS_WORKSPACE_BYTES: usize = 32 << 20;

/// Scratch the first call of each convolution geometry times its algorithms in (less if the
/// device cannot spare it). Some of cuDNN's fastest kernels need much: the filter gradient
/// of a ResNet stem at batch 256 wants ~1 GiB, and with 512 MiB only a kernel 3x slower ran.
const FIND_WORKSPACE_BYTES: [usize; 3] = [2 << 30, 1 << 30, 512 << 20];

/// The cuBLAS handle and the workspace it is given, so that it never allocates while a step
/// is being recorded.
struct Blas(blas_sys::cublasHandle_t, #[allow(dead_code)] CudaBuffer);
// SAFETY: the handle is used behind a mutex, one thread at a time, as cuBLAS allows.
unsafe impl Send for Blas {}

pub struct CudaBackend {
    shared: Arc<Shared>,
    kernels: Kernels,
    blas: Mutex<Blas>,
    convs: Mutex<Convs>,
    /// The convolutions' workspace (grown to the largest chosen algorithm's need).
    workspace: Mutex<Option<CudaBuffer>>,
    /// Pinned host buffers for large uploads (streamed batches).
    staging: Mutex<Staging>,
    precision: Precision,
    algorithms: Algorithms,
    layout: Layout,
    gpu_name: String,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (d, p, l) = (self.shared.device(), self.precision.name(), self.layout.name());
        write!(f, "CudaBackend({d}, {}, {p}, {l})", self.gpu_name)
    }
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        // the fields dropped after this (pinned buffers, pooled memory) need the context
        let _ = self.shared.ctx.bind_to_thread();
        let _ = self.shared.stream.synchronize();
        let h = self.blas.get_mut().unwrap_or_else(|e| e.into_inner()).0;
        // SAFETY: created in `new`, destroyed once.
        let _ = unsafe { blas::destroy_handle(h) };
    }
}

/// The device buffer of a tensor this backend owns; panics on a host tensor (a layer that
/// forgot to move something to the device) and on a channels-last buffer whose tensor was
/// reshaped behind the backend's back (its values would be read in the wrong order).
fn buf(t: &Tensor) -> &CudaBuffer {
    let b = t.device_buffer().unwrap_or_else(|| panic!("a host tensor {:?} was passed to the CUDA backend", t.shape()));
    let b = b.as_any().downcast_ref::<CudaBuffer>().expect("a CUDA buffer");
    if let Some(d) = b.nhwc {
        assert_eq!(t.shape(), d, "a channels-last tensor was reshaped outside the backend (use Backend::flatten)");
    }
    b
}

/// Whether a tensor's device values are channels-last.
fn is_nhwc(t: &Tensor) -> bool {
    buf(t).nhwc.is_some()
}

/// Whether a tensor's device values are bfloat16.
fn is_bf16(t: &Tensor) -> bool {
    buf(t).bf16
}

/// An input's device pointer, whatever its storage (noted if a graph is being recorded).
fn raw(t: &Tensor) -> u64 {
    let b = buf(t);
    b.note_use();
    b.ptr
}

/// An FP32 input's device pointer: weights, statistics, indices, logits (never bf16: those
/// are not allocated with `alloc_activation`).
fn ptr(t: &Tensor) -> u64 {
    assert!(!is_bf16(t), "a bf16 tensor {:?} was passed where FP32 is read", t.shape());
    raw(t)
}

/// The output's pointer and whether it is stored as bf16 (copy-on-write: a shared buffer is
/// duplicated first).
fn raw_out(t: &mut Tensor) -> (u64, bool) {
    let shape = t.shape().to_vec();
    let b = t.device_buffer_mut().unwrap_or_else(|| panic!("a host tensor {shape:?} was passed to the CUDA backend"));
    let b = b.as_any().downcast_ref::<CudaBuffer>().expect("a CUDA buffer");
    b.note_use();
    (b.ptr, b.bf16)
}

/// An FP32 output's pointer.
fn out(t: &mut Tensor) -> u64 {
    let (p, bf16) = raw_out(t);
    assert!(!bf16, "a bf16 tensor {:?} was passed where FP32 is written", t.shape());
    p
}

/// A device pointer to an input's values in a wanted storage: the tensor's own, or a
/// converted copy that lives as long as this.
struct Input {
    ptr: u64,
    _copy: Option<CudaBuffer>,
}

/// The sizes of a probed convolution (a linear layer: the 1x1 convolution of a 1x1 image).
struct Probe {
    g: ConvGeometry,
    n: usize,
    k: usize,
    c: usize,
    hw: usize,
    rs: usize,
    crs: usize,
    pq: usize,
}

impl Probe {
    fn of(g: &ConvGeometry) -> Probe {
        let rs = g.k_h * g.k_w;
        Probe { g: *g, n: g.n, k: g.c_out, c: g.c_in, hw: g.h * g.w, rs, crs: g.c_in * rs, pq: g.pq() }
    }
    /// (h, w, kh, kw, stride, pad, ho, wo) as the kernels take them.
    fn window(&self) -> (i32, i32, i32, i32, i32, i32, i32, i32) {
        let g = &self.g;
        let i = |v: usize| v as i32;
        (i(g.h), i(g.w), i(g.k_h), i(g.k_w), i(g.stride), i(g.pad), i(g.h_out()), i(g.w_out()))
    }
}

impl CudaBackend {
    /// Three zeroed u64 totals for the probe kernels.
    fn probe_result(&self) -> CudaBuffer {
        let b = self.buffer(6);
        let (p, n, f32_) = (b.ptr, 6i64, 0i32);
        let zero = 0.0f32;
        // SAFETY: b holds 6 floats (3 u64); 0.0f32 has all bits clear.
        unsafe { self.launch("fill", grid_for(6), 256, args!(&p, &f32_, &zero, &n)) };
        b
    }
    /// The three totals (macs, a, b) back on the host.
    fn probe_read(&self, res: &CudaBuffer) -> Nonzeros {
        let v = tern_core::DeviceBuffer::to_host(res);
        let u = |i: usize| v[2 * i].to_bits() as u64 | (v[2 * i + 1].to_bits() as u64) << 32;
        Nonzeros { macs: u(0), a: u(1), b: u(2) }
    }
}

/// A recorded step: a CUDA graph, and the buffers reserved for it until it is dropped.
struct Graph {
    graph: cudarc::driver::CudaGraph,
    touched: Vec<u64>,
    shared: Arc<Shared>,
}

impl tern_core::StepGraph for Graph {
    fn replay(&self) {
        self.graph.launch().unwrap_or_else(|e| panic!("{}: replaying a recorded step: {e}", self.shared.device()));
    }
}

impl Drop for Graph {
    fn drop(&mut self) {
        // the replays queued so far must finish before the buffers go back to eager use
        let _ = self.shared.stream.synchronize();
        self.shared.release_graph(&self.touched);
    }
}

// SAFETY: the graph is only launched and dropped by its owner, one thread at a time.
unsafe impl Send for Graph {}

/// (n, c, hw) of `[n, c, ...]`.
fn nchw(x: &Tensor) -> (usize, usize, usize) {
    let s = x.shape();
    (s[0], s[1], s[2..].iter().product())
}

/// Splits of the per-channel reductions: enough blocks to fill a large GPU, fixed by the
/// shape alone so that the sums do not depend on the device. Planes form: `n` images.
fn splits(n: usize, c: usize) -> usize {
    (512 / c.max(1)).clamp(1, n.max(1))
}

/// Splits of the rows form (`[rows, c]`, blocks of 32 channels): about a thousand blocks,
/// each of at least 128 rows.
fn row_splits(rows: usize, c: usize) -> usize {
    (1024 / c.div_ceil(32)).clamp(1, rows.div_ceil(128).max(1))
}

/// The element-wise kernel for `len` values and the count it takes: the 4-at-a-time form
/// (`four`, vector loads) when `len` is a multiple of 4.
fn elementwise(one: &'static str, four: &'static str, bf16: bool, len: usize) -> (std::borrow::Cow<'static, str>, i64) {
    if len.is_multiple_of(4) {
        (act_kernel(four, bf16), (len / 4) as i64)
    } else {
        (act_kernel(one, bf16), len as i64)
    }
}

/// For the 4-channel forms of the per-channel maps: the number of 4-value groups, when the
/// tensor is in rows form (channels-last or 2-D) with a multiple of 4 channels.
fn four_channels(form: Form, c: usize) -> Option<i64> {
    match form {
        Form::Rows { rows, .. } if c.is_multiple_of(4) => Some((rows * c / 4) as i64),
        _ => None,
    }
}

/// Threads of a one-warp-per-channel kernel, in blocks of 256.
fn warp_per_channel(c: usize) -> (u32, u32, u32) {
    ((c * 32).div_ceil(256) as u32, 1, 1)
}

/// How a per-channel reduction reads its input: planes (`[n, c, hw]`, hw > 1) or rows
/// (`[rows, c]`: channels-last tensors and 2-D ones).
#[derive(Clone, Copy)]
enum Form {
    Planes { n: usize, c: usize, hw: usize, splits: usize },
    Rows { rows: usize, c: usize, splits: usize },
}

impl Form {
    fn of(t: &Tensor) -> Form {
        let (n, c, hw) = nchw(t);
        if is_nhwc(t) || hw == 1 {
            Form::Rows { rows: n * hw, c, splits: row_splits(n * hw, c) }
        } else {
            Form::Planes { n, c, hw, splits: splits(n, c) }
        }
    }
    fn c(self) -> usize {
        match self {
            Form::Planes { c, .. } | Form::Rows { c, .. } => c,
        }
    }
    fn splits(self) -> usize {
        match self {
            Form::Planes { splits, .. } | Form::Rows { splits, .. } => splits,
        }
    }
    /// The launch grid of a partial-sums kernel (blocks of 256 threads).
    fn grid(self) -> (u32, u32, u32) {
        match self {
            Form::Planes { c, splits, .. } => (splits as u32, c as u32, 1),
            Form::Rows { c, splits, .. } => (splits as u32, c.div_ceil(32) as u32, 1),
        }
    }
    /// Elements that share a channel index in a row of the point-wise kernels' view
    /// (`channel = (i / inner) % c`).
    fn inner(self) -> usize {
        match self {
            Form::Planes { hw, .. } => hw,
            Form::Rows { .. } => 1,
        }
    }
}

impl CudaBackend {
    /// The backend on CUDA device `ordinal`. Fails with a clear message when the driver,
    /// cuBLAS, cuDNN or NVRTC cannot be loaded or the device does not exist.
    pub fn new(ordinal: usize, precision: Precision, algorithms: Algorithms, layout: Layout) -> Result<CudaBackend> {
        let dev = format!("cuda:{ordinal}");
        let e = |what: String| Error::device(&dev, what);
        if precision == Precision::Bf16 && layout != Layout::Nhwc {
            return Err(e("bf16 precision needs the channels-last layout (--layout nhwc)".into()));
        }
        // SAFETY: these only try to open the libraries.
        let libs = unsafe {
            [
                ("libcuda (the NVIDIA driver)", cudarc::driver::sys::is_culib_present()),
                ("libnvrtc (CUDA's run-time compiler)", cudarc::nvrtc::sys::is_culib_present()),
                ("libcublas", cudarc::cublas::sys::is_culib_present()),
                ("libcudnn (cuDNN 9)", cudarc::cudnn::sys::is_culib_present()),
            ]
        };
        if let Some((name, _)) = libs.iter().find(|(_, ok)| !ok) {
            return Err(e(format!("{name} could not be loaded: is this a machine with an NVIDIA GPU and CUDA 13? (--device cpu trains on the CPU)")));
        }
        let count = CudaContext::device_count().map_err(|err| e(format!("the CUDA driver did not start: {err}")))?;
        if ordinal >= count.max(0) as usize {
            return Err(e(format!("no such device: this machine has {count} CUDA device(s)")));
        }
        let ctx = CudaContext::new(ordinal).map_err(|err| e(format!("creating a context: {err}")))?;
        // SAFETY: one stream does all the work, so cudarc's cross-stream events are not needed.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(|err| e(format!("creating a stream: {err}")))?;
        let gpu_name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let kernels = Kernels::load(&ctx, &dev)?;
        let handle = blas::create_handle().map_err(|err| e(format!("cuBLAS: {err:?}")))?;
        // the classifier's GEMMs stay FP32 storage under bf16, with TF32 products
        let math = match precision {
            Precision::Fp32 => blas_sys::cublasMath_t::CUBLAS_DEFAULT_MATH,
            Precision::Tf32 | Precision::Bf16 => blas_sys::cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH,
        };
        // SAFETY: a fresh handle and the live stream.
        unsafe {
            blas::set_stream(handle, stream.cu_stream() as _).map_err(|err| e(format!("cuBLAS stream: {err:?}")))?;
            blas_sys::cublasSetMathMode(handle, math);
        }
        let convs = Convs::new(stream.cu_stream(), precision, algorithms, layout)?;
        let shared = Arc::new(Shared::new(ordinal, ctx, stream));
        let blas_ws = shared.alloc(CUBLAS_WORKSPACE_BYTES / 4)?;
        // SAFETY: the handle is live and the workspace outlives it (both in `Blas`).
        let st = unsafe { blas_sys::cublasSetWorkspace_v2(handle, blas_ws.ptr as *mut _, CUBLAS_WORKSPACE_BYTES) };
        if st != blas_sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS {
            return Err(e(format!("cuBLAS workspace: {st:?}")));
        }
        Ok(CudaBackend {
            shared,
            kernels,
            blas: Mutex::new(Blas(handle, blas_ws)),
            convs: Mutex::new(convs),
            workspace: Mutex::new(None),
            staging: Mutex::new(Staging::new()),
            precision,
            algorithms,
            layout,
            gpu_name,
        })
    }

    pub fn gpu_name(&self) -> &str {
        &self.gpu_name
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Whether this backend stores a tensor of `shape` channels-last.
    fn stores_nhwc(&self, shape: &[usize]) -> bool {
        self.layout == Layout::Nhwc && shape.len() == 4
    }

    /// Whether convolutions read and write bf16 (filters are rounded per call).
    fn conv_bf16(&self) -> bool {
        self.precision == Precision::Bf16
    }

    /// Whether this backend stores activations of `shape` as bf16 (image tensors under
    /// `Precision::Bf16`).
    fn stores_bf16(&self, shape: &[usize]) -> bool {
        self.precision == Precision::Bf16 && self.stores_nhwc(shape)
    }

    /// dst = src converted between layouts (`to_nhwc`: src NCHW, dst NHWC; else back) and
    /// storages (`*_bf16`).
    fn convert(&self, src: (u64, bool), dst: (u64, bool), shape: &[usize], to_nhwc: bool) {
        let (c, hw) = (shape[1] as i32, (shape[2] * shape[3]) as i32);
        let (total, flag) = (shape.iter().product::<usize>() as i64, to_nhwc as i32);
        let (sp, sb, dp, db) = (src.0, src.1 as i32, dst.0, dst.1 as i32);
        // SAFETY: src and dst both hold the `shape.product()` values of an [n, c, h, w] tensor
        // in the storages given.
        unsafe {
            self.launch(
                "convert_layout",
                grid_for(total as usize),
                256,
                args!(&sp, &sb, &dp, &db, &c, &hw, &flag, &total),
            )
        };
    }

    /// dst = src for `n` values, between storages.
    fn cast(&self, src: (u64, bool), dst: (u64, bool), n: usize) {
        let (sp, sb, dp, db, n) = (src.0, src.1 as i32, dst.0, dst.1 as i32, n as i64);
        // SAFETY: src and dst hold n values in the storages given.
        unsafe { self.launch("cast", grid_for(n as usize), 256, args!(&sp, &sb, &dp, &db, &n)) };
    }

    /// A buffer of `len` values in the storage `bf16` says.
    fn buffer_of(&self, len: usize, bf16: bool) -> CudaBuffer {
        let b = if bf16 { self.shared.alloc_bf16(len) } else { self.shared.alloc(len) };
        b.unwrap_or_else(|e| panic!("{e}"))
    }

    /// `t`'s values in the storage `bf16` says (converted when it is stored the other way:
    /// a weight read by a bf16 convolution, a host-uploaded batch under bf16).
    fn input(&self, t: &Tensor, bf16: bool) -> Input {
        if is_bf16(t) == bf16 {
            return Input { ptr: raw(t), _copy: None };
        }
        let copy = self.buffer_of(t.len(), bf16);
        self.cast((raw(t), !bf16), (copy.ptr, bf16), t.len());
        Input { ptr: copy.ptr, _copy: Some(copy) }
    }

    /// Runs `op` on a pointer to `t`'s values in storage `bf16`: `t`'s own, or a scratch
    /// buffer converted into `t` afterwards.
    fn output(&self, t: &mut Tensor, bf16: bool, op: impl FnOnce(u64)) {
        let (p, own) = raw_out(t);
        if own == bf16 {
            return op(p);
        }
        let scratch = self.buffer_of(t.len(), bf16);
        op(scratch.ptr);
        self.cast((scratch.ptr, bf16), (p, own), t.len());
    }

    fn stream(&self) -> cudarc::driver::sys::CUstream {
        self.shared.stream.cu_stream()
    }

    fn bind(&self) {
        self.shared
            .ctx
            .bind_to_thread()
            .unwrap_or_else(|e| panic!("{}: binding the context: {e}", self.shared.device()));
    }

    /// Ends the process's use of the device with what failed, and what the stream reports
    /// once drained: an asynchronous fault of an earlier kernel (an illegal address, say) is
    /// sticky and surfaces at whatever call comes next, so the failing call alone can mislead.
    fn fail(&self, what: &str) -> ! {
        let sticky = match self.shared.stream.synchronize() {
            Ok(()) => "the stream itself reports no fault".to_string(),
            Err(e) => format!("the stream reports {e}: an earlier kernel may have faulted"),
        };
        panic!("{}: {what} ({sticky}; CUDA_LAUNCH_BLOCKING=1 makes every launch report its own fault)", self.device())
    }

    fn buffer(&self, len: usize) -> CudaBuffer {
        self.buffer_of(len, false)
    }

    /// Launches a kernel; a failure here is a device fault or a programmer error.
    ///
    /// # Safety
    /// As for [`Kernels::launch`].
    unsafe fn launch(&self, name: &str, grid: (u32, u32, u32), block: u32, args: &mut [*mut std::ffi::c_void]) {
        self.bind();
        // SAFETY: forwarded from the caller.
        unsafe { self.kernels.launch(name, self.stream(), grid, block, args) }
            .unwrap_or_else(|e| self.fail(&format!("{e}")));
    }

    fn conv(&self, g: &ConvGeometry, pass: Pass, o: Operands) {
        self.bind();
        let mut convs = self.convs.lock().unwrap_or_else(|e| e.into_inner());
        let mut ws_slot = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let mut find_buf: Option<CudaBuffer> = None;
        let mut workspace = |bytes: usize| -> Result<u64> {
            if ws_slot.as_ref().is_none_or(|b| b.len * 4 < bytes) {
                *ws_slot = None; // back to the pool before the larger one is taken
                *ws_slot = Some(self.shared.alloc(bytes.div_ceil(4))?);
            }
            Ok(ws_slot.as_ref().expect("workspace").ptr)
        };
        let needs_find = !convs.has_choice(g, pass);
        let find_ws = if needs_find {
            let (b, bytes) = FIND_WORKSPACE_BYTES
                .iter()
                .find_map(|&bytes| self.shared.alloc(bytes / 4).ok().map(|b| (b, bytes)))
                .unwrap_or_else(|| panic!("{}: no memory left to search convolution algorithms in", self.device()));
            let p = (b.ptr, bytes);
            find_buf = Some(b);
            p
        } else {
            (0, 0)
        };
        // SAFETY: the operands hold tensors of `g`'s shapes on this device (the Backend
        // contract), and `workspace` returns buffers of the requested size.
        unsafe { convs.run(g, pass, &o, find_ws, &mut workspace) }
            .unwrap_or_else(|e| self.fail(&format!("{e} in the {pass:?} pass of {g:?}")));
        if let Some(b) = find_buf {
            // a GiB or two used once per geometry: not worth keeping in the pool
            b.release_to_driver();
        }
    }

    /// Per-channel partial (Σ x, Σ x²) of `x` in `partial` (c·splits pairs of doubles).
    fn partial_sums(&self, x: &Tensor, form: Form, partial: &CudaBuffer) {
        let (xp, pp, bf) = (raw(x), partial.ptr, is_bf16(x));
        // SAFETY: x holds the tensor `form` describes; partial holds c·splits pairs of doubles.
        unsafe {
            match form {
                Form::Planes { n, c, hw, splits } => {
                    let (ni, ci, hwi, si) = (n as i32, c as i32, hw as i32, splits as i32);
                    let k = act_kernel("channel_partial_sums", bf);
                    self.launch(&k, form.grid(), 256, args!(&xp, &pp, &ni, &ci, &hwi, &si));
                }
                Form::Rows { rows, c, splits } => {
                    let (ri, ci, si) = (rows as i64, c as i32, splits as i32);
                    self.launch(&act_kernel("rows_partial_sums", bf), form.grid(), 256, args!(&xp, &pp, &ri, &ci, &si));
                }
            }
        }
    }

    /// Column sums over images and positions: db[ch] = Σ_{n, hw} dy (a bias gradient).
    fn channel_sums_into(&self, dy: &Tensor, db: &mut Tensor) {
        let form = Form::of(dy);
        let (c, s) = (form.c(), form.splits());
        let partial = self.buffer(c * s * 4);
        self.partial_sums(dy, form, &partial);
        let (p, o, ci, si) = (partial.ptr, out(db), c as i32, s as i32);
        // SAFETY: partial holds c·s pairs of doubles; db is [c].
        unsafe { self.launch("channel_sum_finalize", warp_per_channel(c), 256, args!(&p, &si, &o, &ci)) };
    }

    fn add_bias(&self, y: &mut Tensor, bias: &Tensor, inner: usize) {
        let (n, c) = (y.len() as i64, bias.len() as i64);
        let ((yp, bf), bp, inner) = (raw_out(y), ptr(bias), inner as i64);
        // SAFETY: y holds n values whose channel index is (i / inner) % c < bias.len().
        unsafe { self.launch(&act_kernel("add_bias", bf), grid_for(n as usize), 256, args!(&yp, &bp, &inner, &c, &n)) };
    }

    /// C = op(A)·op(B) in column-major terms (see the linear layers for the mapping).
    #[allow(clippy::too_many_arguments)]
    fn sgemm(
        &self,
        ta: bool,
        tb: bool,
        m: usize,
        n: usize,
        k: usize,
        a: u64,
        lda: usize,
        b: u64,
        ldb: usize,
        c: u64,
        ldc: usize,
    ) {
        self.bind();
        let blas_h = self.blas.lock().unwrap_or_else(|e| e.into_inner());
        let op = |t: bool| {
            if t {
                blas_sys::cublasOperation_t::CUBLAS_OP_T
            } else {
                blas_sys::cublasOperation_t::CUBLAS_OP_N
            }
        };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let i = |v: usize| i32::try_from(v).expect("GEMM size fits i32");
        // SAFETY: the callers pass device pointers to matrices of these sizes and strides.
        unsafe {
            blas::sgemm(
                blas_h.0,
                op(ta),
                op(tb),
                i(m),
                i(n),
                i(k),
                &alpha,
                a as *const f32,
                i(lda),
                b as *const f32,
                i(ldb),
                &beta,
                c as *mut f32,
                i(ldc),
            )
        }
        .unwrap_or_else(|e| panic!("{}: cuBLAS sgemm: {e:?}", self.shared.device()));
    }

    /// (channels, channels-last, h, w, ho, wo, k, stride, pad) of a pooling of `t`'s layout.
    #[allow(clippy::type_complexity)]
    fn pool_dims(t: &Tensor, g: &PoolGeometry) -> (i32, i32, i32, i32, i32, i32, i32, i32, i32) {
        let (c, nhwc) = (t.dim(1) as i32, is_nhwc(t) as i32);
        let (h, w, ho, wo) = (g.h as i32, g.w as i32, g.h_out() as i32, g.w_out() as i32);
        (c, nhwc, h, w, ho, wo, g.k as i32, g.stride as i32, g.pad as i32)
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "cuda"
    }
    fn device(&self) -> Device {
        self.shared.device()
    }
    fn alloc(&self, shape: &[usize]) -> Tensor {
        let mut b = self.buffer(shape.iter().product());
        if self.stores_nhwc(shape) {
            b.nhwc = Some([shape[0], shape[1], shape[2], shape[3]]);
        }
        Tensor::from_device(shape, Box::new(b))
    }
    fn alloc_activation(&self, shape: &[usize]) -> Tensor {
        if !self.stores_bf16(shape) {
            return self.alloc(shape);
        }
        let mut b = self.buffer_of(shape.iter().product(), true);
        b.nhwc = Some([shape[0], shape[1], shape[2], shape[3]]);
        Tensor::from_device(shape, Box::new(b))
    }
    fn zeros(&self, shape: &[usize]) -> Tensor {
        let mut t = self.alloc(shape);
        self.fill(&mut t, 0.0);
        t
    }
    fn upload(&self, t: &Tensor) -> Tensor {
        if t.device() == self.device() {
            return t.clone();
        }
        let mut dst = self.alloc(t.shape());
        self.write(&mut dst, t);
        dst
    }
    fn fill(&self, t: &mut Tensor, v: f32) {
        let ((p, bf16), n) = (raw_out(t), t.len() as i64);
        let bf = bf16 as i32;
        // SAFETY: t holds n values in the storage `bf` says.
        unsafe { self.launch("fill", grid_for(n as usize), 256, args!(&p, &bf, &v, &n)) };
    }
    fn synchronize(&self) {
        self.shared.stream.synchronize().unwrap_or_else(|e| panic!("{}: {e}", self.shared.device()));
    }
    fn upload_bytes(&self, bytes: &[u8]) -> Tensor {
        let slots = bytes.len().div_ceil(4);
        let mut t = self.alloc(&[slots]);
        let d = out(&mut t);
        self.bind();
        if bytes.len() >= PINNED_MIN_BYTES && !self.shared.is_recording() {
            let mut staging = self.staging.lock().unwrap_or_else(|e| e.into_inner());
            // SAFETY: the context is bound; t holds slots·4 = bytes + tail bytes on it.
            unsafe { staging.upload(bytes, slots * 4 - bytes.len(), d, self.stream()) }
                .unwrap_or_else(|e| panic!("{}: upload through pinned memory: {e}", self.shared.device()));
            return t;
        }
        let whole = bytes.len() / 4 * 4;
        let mut tail = [0u8; 4];
        tail[..bytes.len() - whole].copy_from_slice(&bytes[whole..]);
        // SAFETY: the buffer holds `slots` floats = whole + (a padded tail) bytes; the copies
        // are ordered on the stream, and pageable memory is copied out before they return.
        unsafe {
            if whole > 0 {
                drv::memcpy_htod_async(d, &bytes[..whole], self.stream())
                    .unwrap_or_else(|e| panic!("{}: upload: {e}", self.shared.device()));
            }
            if whole < bytes.len() {
                drv::memcpy_htod_async(d + whole as u64, &tail, self.stream())
                    .unwrap_or_else(|e| panic!("{}: upload: {e}", self.shared.device()));
            }
        }
        t
    }
    fn write(&self, dst: &mut Tensor, src: &Tensor) {
        assert_eq!(dst.len(), src.len(), "write: lengths differ");
        // in place, also when other handles share the storage (see the trait)
        let d = raw(dst);
        let (d_nhwc, d_bf16) = (buf(dst).nhwc.is_some(), is_bf16(dst));
        self.bind();
        if src.device() == self.device() {
            assert_eq!(buf(src).nhwc, buf(dst).nhwc, "write: the layouts differ");
            if is_bf16(src) != d_bf16 {
                return self.cast((raw(src), is_bf16(src)), (d, d_bf16), src.len());
            }
            // SAFETY: both hold src.len() values of the same storage on this device, ordered
            // on the stream.
            unsafe { drv::memcpy_dtod_async(d, raw(src), buf(src).bytes(), self.stream()) }
                .unwrap_or_else(|e| panic!("{}: write: {e}", self.shared.device()));
            return;
        }
        let host = src.host_values();
        // a channels-last or bf16 destination is filled through an NCHW FP32 staging buffer
        let staging = (d_nhwc || d_bf16).then(|| self.buffer(host.len()));
        // SAFETY: the target holds host.len() floats; the copy is ordered on the stream, and
        // pageable memory is copied out before the call returns.
        unsafe { drv::memcpy_htod_async(staging.as_ref().map_or(d, |b| b.ptr), &host, self.stream()) }
            .unwrap_or_else(|e| panic!("{}: write: {e}", self.shared.device()));
        match staging {
            Some(b) if d_nhwc => self.convert((b.ptr, false), (d, d_bf16), dst.shape(), true),
            Some(b) => self.cast((b.ptr, false), (d, d_bf16), host.len()),
            None => {}
        }
    }
    fn capture(&self, step: &mut dyn FnMut()) -> Option<Box<dyn tern_core::StepGraph>> {
        use cudarc::driver::sys::{CUgraphInstantiate_flags, CUstreamCaptureMode};
        self.bind();
        let stream = &self.shared.stream;
        if stream.begin_capture(CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED).is_err() {
            step();
            return None;
        }
        self.shared.begin_recording();
        step();
        let touched = self.shared.end_recording();
        match stream.end_capture(CUgraphInstantiate_flags(0)) {
            Ok(Some(graph)) => {
                // the eager steps' cached buffers that the recording did not take are not
                // needed by replays: hand them back rather than hold them
                self.shared.release_free();
                let g = Graph { graph, touched, shared: self.shared.clone() };
                tern_core::StepGraph::replay(&g);
                Some(Box::new(g))
            }
            _ => {
                // nothing ran: run the step for real, and keep stepping eagerly
                self.shared.release_graph(&touched);
                step();
                None
            }
        }
    }
    fn held_bytes(&self) -> usize {
        self.shared.held_bytes()
    }
    fn tuning(&self) -> Option<serde_json::Value> {
        let convs = self.convs.lock().unwrap_or_else(|e| e.into_inner());
        let rows: Vec<Vec<usize>> = convs
            .export()
            .into_iter()
            .map(|(k, p, c)| {
                vec![k.0, k.1, k.2, k.3, k.4, k.5, k.6, k.7, k.8, p, c.algo as usize, c.workspace, c.math as usize]
            })
            .collect();
        Some(serde_json::json!({
            "gpu": self.gpu_name, "precision": self.precision.name(), "algorithms": format!("{:?}", self.algorithms),
            "layout": self.layout.name(),
            "convolutions": rows,
        }))
    }
    fn load_tuning(&self, t: &serde_json::Value) -> bool {
        let same = t["gpu"] == self.gpu_name.as_str()
            && t["precision"] == self.precision.name()
            && t["algorithms"] == format!("{:?}", self.algorithms).as_str()
            // choices of files written before layouts existed were NCHW's
            && t.get("layout").and_then(|l| l.as_str()).unwrap_or("nchw") == self.layout.name();
        let Some(rows) = t["convolutions"].as_array().filter(|_| same) else { return false };
        // algorithm counts of cuDNN 9 per pass: forward, backward data, backward filter
        const ALGOS: [usize; 3] = [8, 6, 7];
        let mut choices = Vec::new();
        for r in rows {
            let v: Option<Vec<usize>> =
                r.as_array().map(|a| a.iter().filter_map(|x| x.as_u64().map(|x| x as usize)).collect());
            let Some(v) = v.filter(|v| v.len() == 13) else { return false };
            let (pass, algo, math) = (v[9], v[10], v[12]);
            if pass > 2 || algo >= ALGOS[pass] || math > 3 {
                return false;
            }
            let key = (v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8]);
            choices.push((key, pass, crate::conv::Choice { algo: algo as u32, workspace: v[11], math: math as u32 }));
        }
        self.convs.lock().unwrap_or_else(|e| e.into_inner()).import(choices);
        true
    }

    fn conv2d_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, g: &ConvGeometry, y: &mut Tensor) {
        let bf = self.conv_bf16();
        let (xi, wi) = (self.input(x, bf), self.input(w, bf));
        self.output(y, bf, |yp| self.conv(g, Pass::Forward, Operands { x: xi.ptr, w: wi.ptr, y: yp }));
        if let Some(b) = bias {
            let inner = if is_nhwc(y) { 1 } else { g.pq() };
            self.add_bias(y, b, inner);
        }
    }
    fn conv2d_backward_input(&self, dy: &Tensor, w: &Tensor, g: &ConvGeometry, dx: &mut Tensor) {
        let bf = self.conv_bf16();
        let (dyi, wi) = (self.input(dy, bf), self.input(w, bf));
        self.output(dx, bf, |dxp| self.conv(g, Pass::BackwardData, Operands { x: dxp, w: wi.ptr, y: dyi.ptr }));
    }
    fn conv2d_backward_weight(
        &self,
        x: &Tensor,
        dy: &Tensor,
        g: &ConvGeometry,
        dw: &mut Tensor,
        db: Option<&mut Tensor>,
    ) {
        // under bf16 the filter gradient comes out as bf16 and is widened into dw
        let bf = self.conv_bf16();
        let (xi, dyi) = (self.input(x, bf), self.input(dy, bf));
        self.output(dw, bf, |dwp| self.conv(g, Pass::BackwardFilter, Operands { x: xi.ptr, w: dwp, y: dyi.ptr }));
        if let Some(db) = db {
            self.channel_sums_into(dy, db);
        }
    }
    // Row-major [r, c] is column-major [c, r]: y = x·wᵀ is yᵀ = w·xᵀ, i.e. column-major
    // C[d_out × n] = op_T(W'[d_in × d_out])·X'[d_in × n].
    fn linear_forward(&self, x: &Tensor, w: &Tensor, bias: Option<&Tensor>, y: &mut Tensor) {
        let (n, d_in, d_out) = (x.dim(0), x.dim(1), w.dim(0));
        let xi = self.input(x, false);
        self.sgemm(true, false, d_out, n, d_in, ptr(w), d_in, xi.ptr, d_in, out(y), d_out);
        if let Some(b) = bias {
            self.add_bias(y, b, 1);
        }
    }
    // dx = dy·w: column-major dxᵀ[d_in × n] = W'[d_in × d_out]·DY'[d_out × n].
    fn linear_backward_input(&self, dy: &Tensor, w: &Tensor, dx: &mut Tensor) {
        let (n, d_out, d_in) = (dy.dim(0), w.dim(0), w.dim(1));
        self.sgemm(false, false, d_in, n, d_out, ptr(w), d_in, ptr(dy), d_out, out(dx), d_in);
    }
    // dw = dyᵀ·x: column-major dwᵀ[d_in × d_out] = X'[d_in × n]·op_T(DY'[d_out × n]).
    fn linear_backward_weight(&self, x: &Tensor, dy: &Tensor, dw: &mut Tensor, db: Option<&mut Tensor>) {
        let (n, d_in, d_out) = (x.dim(0), x.dim(1), dy.dim(1));
        let xi = self.input(x, false);
        self.sgemm(false, true, d_in, d_out, n, xi.ptr, d_in, ptr(dy), d_out, out(dw), d_in);
        if let Some(db) = db {
            self.channel_sums_into(dy, db);
        }
    }

    fn batch_norm_train(
        &self,
        x: &Tensor,
        _sums: Option<ChannelSums>,
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
        let form = Form::of(x);
        let s = form.splits();
        let partial = self.buffer(c * s * 4);
        self.partial_sums(x, form, &partial);
        let (mut mean, mut inv_std) = (self.alloc(&[c]), self.alloc(&[c]));
        let (ci, si) = (c as i32, s as i32);
        let count = (n * hw) as f64;
        let (pp, rm, rv, mp, ip) =
            (partial.ptr, out(running_mean), out(running_var), out(&mut mean), out(&mut inv_std));
        let (gp, bp, (yp, bf)) = (ptr(gamma), ptr(beta), raw_out(y));
        let xi = self.input(x, bf);
        let xp = xi.ptr;
        let (flag, t) = (relu.is_some() as i32, relu.unwrap_or(0.0));
        let (hw64, total) = (form.inner() as i64, x.len() as i64);
        // SAFETY: x, y: the tensor `form` describes; per-channel tensors: [c]; partial: c·s
        // pairs of doubles.
        unsafe {
            self.launch(
                "bn_finalize",
                warp_per_channel(c),
                256,
                args!(&pp, &si, &count, &eps, &momentum, &rm, &rv, &mp, &ip, &ci),
            );
            if let Some(n4) = four_channels(form, c) {
                let k = act_kernel("bn_apply4", bf);
                self.launch(&k, grid_for(n4 as usize), 256, args!(&xp, &yp, &gp, &bp, &mp, &ip, &flag, &t, &ci, &n4));
            } else {
                self.launch(
                    &act_kernel("bn_apply", bf),
                    grid_for(total as usize),
                    256,
                    args!(&xp, &yp, &gp, &bp, &mp, &ip, &flag, &t, &hw64, &ci, &total),
                );
            }
        }
        BnSaved { mean, inv_std }
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
        let (_, c, _) = nchw(x);
        let (mut mean, mut inv_std) = (self.alloc(&[c]), self.alloc(&[c]));
        let ((yp, bf), gp, bp, rm, rv) = (raw_out(y), ptr(gamma), ptr(beta), ptr(running_mean), ptr(running_var));
        let xi = self.input(x, bf);
        let xp = xi.ptr;
        let (mp, ip, ci) = (out(&mut mean), out(&mut inv_std), c as i32);
        let (flag, t) = (relu.is_some() as i32, relu.unwrap_or(0.0));
        let (hw64, total) = (Form::of(x).inner() as i64, x.len() as i64);
        // SAFETY: x, y: [n, c, hw]; per-channel tensors: [c].
        unsafe {
            self.launch("bn_eval_stats", (c.div_ceil(128) as u32, 1, 1), 128, args!(&rm, &rv, &eps, &mp, &ip, &ci));
            if let Some(n4) = four_channels(Form::of(x), c) {
                self.launch(
                    &act_kernel("bn_apply_eval4", bf),
                    grid_for(n4 as usize),
                    256,
                    args!(&xp, &yp, &gp, &bp, &rm, &rv, &eps, &flag, &t, &ci, &n4),
                );
            } else {
                self.launch(
                    &act_kernel("bn_apply_eval", bf),
                    grid_for(total as usize),
                    256,
                    args!(&xp, &yp, &gp, &bp, &rm, &rv, &eps, &flag, &t, &hw64, &ci, &total),
                );
            }
        }
        BnSaved { mean, inv_std }
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
        let form = Form::of(x);
        let (c, s) = (form.c(), form.splits());
        let partial = self.buffer(c * s * 4);
        let (ci, si) = (c as i32, s as i32);
        let (flag, t, extra) =
            (relu.is_some() as i32, relu.map_or(0.0, |r| r.threshold), relu.map_or(0.0, |r| r.extra));
        let bf = is_bf16(x);
        let dyi = self.input(dy, bf);
        let (xp, dp, gp, bp, mp, ip, pp) =
            (raw(x), dyi.ptr, ptr(gamma), ptr(beta), ptr(&saved.mean), ptr(&saved.inv_std), partial.ptr);
        let (dgp, dbp) = (out(dgamma), out(dbeta));
        // SAFETY: x, dy: the tensor `form` describes; per-channel tensors: [c]; partial: c·s
        // pairs of doubles.
        unsafe {
            match form {
                Form::Planes { n, hw, .. } => {
                    let (ni, hwi) = (n as i32, hw as i32);
                    self.launch(
                        &act_kernel("bn_bwd_partial", bf),
                        form.grid(),
                        256,
                        args!(&xp, &dp, &gp, &bp, &mp, &ip, &flag, &t, &extra, &pp, &ni, &ci, &hwi, &si),
                    );
                }
                Form::Rows { rows, .. } => {
                    let ri = rows as i64;
                    self.launch(
                        &act_kernel("bn_bwd_rows_partial", bf),
                        form.grid(),
                        256,
                        args!(&xp, &dp, &gp, &bp, &mp, &ip, &flag, &t, &extra, &pp, &ri, &ci, &si),
                    );
                }
            }
            self.launch("bn_bwd_finalize", warp_per_channel(c), 256, args!(&pp, &si, &ip, &dgp, &dbp, &ci));
        }
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
        let (n, c, hw) = nchw(x);
        let (flag, t, extra) =
            (relu.is_some() as i32, relu.map_or(0.0, |r| r.threshold), relu.map_or(0.0, |r| r.extra));
        let m = (n * hw) as f32;
        let (dxp, bf) = raw_out(dx);
        let (xi, dyi) = (self.input(x, bf), self.input(dy, bf));
        let (xp, dp, gp, bp, mp, ip) = (xi.ptr, dyi.ptr, ptr(gamma), ptr(beta), ptr(&saved.mean), ptr(&saved.inv_std));
        let (dgp, dbp) = (ptr(dgamma), ptr(dbeta));
        let (hw64, ci, total) = (Form::of(x).inner() as i64, c as i32, x.len() as i64);
        // SAFETY: x, dy, dx: [n, c, hw]; per-channel tensors: [c].
        unsafe {
            if let Some(n4) = four_channels(Form::of(x), c) {
                self.launch(
                    &act_kernel("bn_bwd_input4", bf),
                    grid_for(n4 as usize),
                    256,
                    args!(&xp, &dp, &gp, &bp, &mp, &ip, &flag, &t, &extra, &dgp, &dbp, &m, &dxp, &ci, &n4),
                );
            } else {
                self.launch(
                    &act_kernel("bn_bwd_input", bf),
                    grid_for(total as usize),
                    256,
                    args!(&xp, &dp, &gp, &bp, &mp, &ip, &flag, &t, &extra, &dgp, &dbp, &m, &dxp, &hw64, &ci, &total),
                );
            }
        }
    }
    fn batch_norm_frozen_backward_input(
        &self,
        dy: &Tensor,
        gamma: &Tensor,
        running_var: &Tensor,
        eps: f32,
        dx: &mut Tensor,
    ) {
        let (_, c, _) = nchw(dy);
        let (dxp, bf) = raw_out(dx);
        let dyi = self.input(dy, bf);
        let (dp, gp, rv) = (dyi.ptr, ptr(gamma), ptr(running_var));
        let (hw64, ci, total) = (Form::of(dy).inner() as i64, c as i32, dy.len() as i64);
        // SAFETY: dy, dx: [n, c, hw]; gamma, running_var: [c].
        unsafe {
            if let Some(n4) = four_channels(Form::of(dy), c) {
                let k = act_kernel("bn_frozen_bwd4", bf);
                self.launch(&k, grid_for(n4 as usize), 256, args!(&dp, &gp, &rv, &eps, &dxp, &ci, &n4))
            } else {
                self.launch(
                    &act_kernel("bn_frozen_bwd", bf),
                    grid_for(total as usize),
                    256,
                    args!(&dp, &gp, &rv, &eps, &dxp, &hw64, &ci, &total),
                )
            }
        };
    }

    fn relu_forward(&self, x: &Tensor, threshold: f32, y: &mut Tensor) {
        let (yp, bf) = raw_out(y);
        let xi = self.input(x, bf);
        let (k, n) = elementwise("relu_fwd", "relu_fwd4", bf, x.len());
        // SAFETY: x and y hold x.len() values of y's storage (n units of the kernel).
        unsafe { self.launch(&k, grid_for(n as usize), 256, args!(&xi.ptr, &yp, &threshold, &n)) };
    }
    fn relu_backward(&self, x: &Tensor, dy: &Tensor, threshold: f32, extra: f32, dx: &mut Tensor) {
        let (dxp, bf) = raw_out(dx);
        let (xi, dyi) = (self.input(x, bf), self.input(dy, bf));
        let (xp, dp) = (xi.ptr, dyi.ptr);
        let (k, n) = elementwise("relu_bwd", "relu_bwd4", bf, x.len());
        // SAFETY: x, dy and dx hold x.len() values of dx's storage (n units of the kernel).
        unsafe { self.launch(&k, grid_for(n as usize), 256, args!(&xp, &dp, &dxp, &threshold, &extra, &n)) };
    }
    fn add(&self, a: &Tensor, b: &Tensor, y: &mut Tensor) {
        let (yp, bf) = raw_out(y);
        let (ai, bi) = (self.input(a, bf), self.input(b, bf));
        let (k, n) = elementwise("add", "add4", bf, a.len());
        // SAFETY: a, b and y hold a.len() values of y's storage (n units of the kernel).
        unsafe { self.launch(&k, grid_for(n as usize), 256, args!(&ai.ptr, &bi.ptr, &yp, &n)) };
    }
    fn add_relu(&self, a: &Tensor, b: &Tensor, threshold: f32, y: &mut Tensor) {
        let (yp, bf) = raw_out(y);
        let (ai, bi) = (self.input(a, bf), self.input(b, bf));
        let (ap, bp) = (ai.ptr, bi.ptr);
        let (k, n) = elementwise("add_relu", "add_relu4", bf, a.len());
        // SAFETY: a, b and y hold a.len() values of y's storage (n units of the kernel).
        unsafe { self.launch(&k, grid_for(n as usize), 256, args!(&ap, &bp, &yp, &threshold, &n)) };
    }

    fn max_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor, argmax: &mut Tensor) {
        let (c, nhwc, h, w, ho, wo, k, s, p) = Self::pool_dims(x, g);
        let ((yp, bf), ap, total) = (raw_out(y), out(argmax), y.len() as i64);
        let xi = self.input(x, bf);
        let xp = xi.ptr;
        if nhwc == 1 && c % 4 == 0 {
            let total4 = total / 4;
            // SAFETY: as below; with c a multiple of 4 every 4-channel group is aligned.
            unsafe {
                self.launch(
                    &act_kernel("max_pool_fwd_nhwc4", bf),
                    grid_for(total4 as usize),
                    256,
                    args!(&xp, &yp, &ap, &c, &h, &w, &ho, &wo, &k, &s, &p, &total4),
                )
            };
            return;
        }
        // SAFETY: x: [n, c, h, w]; y and argmax: [n, c, ho, wo]; all in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("max_pool_fwd", bf),
                grid_for(total as usize),
                256,
                args!(&xp, &yp, &ap, &c, &nhwc, &h, &w, &ho, &wo, &k, &s, &p, &total),
            )
        };
    }
    fn max_pool_backward(&self, dy: &Tensor, argmax: &Tensor, g: &PoolGeometry, dx: &mut Tensor) {
        let (c, nhwc, h, w, ho, wo, k, s, p) = Self::pool_dims(dy, g);
        let ((dxp, bf), ap, total) = (raw_out(dx), ptr(argmax), dx.len() as i64);
        let dyi = self.input(dy, bf);
        let dp = dyi.ptr;
        if nhwc == 1 && c % 4 == 0 {
            let total4 = total / 4;
            // SAFETY: as below; with c a multiple of 4 every 4-channel group is aligned.
            unsafe {
                self.launch(
                    &act_kernel("max_pool_bwd_nhwc4", bf),
                    grid_for(total4 as usize),
                    256,
                    args!(&dp, &ap, &dxp, &c, &h, &w, &ho, &wo, &k, &s, &p, &total4),
                )
            };
            return;
        }
        // SAFETY: dy and argmax: [n, c, ho, wo]; dx: [n, c, h, w]; all in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("max_pool_bwd", bf),
                grid_for(total as usize),
                256,
                args!(&dp, &ap, &dxp, &c, &nhwc, &h, &w, &ho, &wo, &k, &s, &p, &total),
            )
        };
    }
    fn avg_pool_forward(&self, x: &Tensor, g: &PoolGeometry, y: &mut Tensor) {
        let (c, nhwc, h, w, ho, wo, k, s, p) = Self::pool_dims(x, g);
        let ((yp, bf), total) = (raw_out(y), y.len() as i64);
        let xi = self.input(x, bf);
        let xp = xi.ptr;
        // SAFETY: x: [n, c, h, w]; y: [n, c, ho, wo]; both in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("avg_pool_fwd", bf),
                grid_for(total as usize),
                256,
                args!(&xp, &yp, &c, &nhwc, &h, &w, &ho, &wo, &k, &s, &p, &total),
            )
        };
    }
    fn avg_pool_backward(&self, dy: &Tensor, g: &PoolGeometry, dx: &mut Tensor) {
        let (c, nhwc, h, w, ho, wo, k, s, p) = Self::pool_dims(dy, g);
        let ((dxp, bf), total) = (raw_out(dx), dx.len() as i64);
        let dyi = self.input(dy, bf);
        let dp = dyi.ptr;
        // SAFETY: dy: [n, c, ho, wo]; dx: [n, c, h, w]; both in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("avg_pool_bwd", bf),
                grid_for(total as usize),
                256,
                args!(&dp, &dxp, &c, &nhwc, &h, &w, &ho, &wo, &k, &s, &p, &total),
            )
        };
    }
    fn global_avg_pool_forward(&self, x: &Tensor, y: &mut Tensor) {
        let (n, c, hw) = nchw(x);
        let (xp, bf, yp, hwi) = (raw(x), is_bf16(x), out(y), hw as i32);
        if is_nhwc(x) {
            let (ci, total) = (c as i32, (n * c) as i64);
            let k = act_kernel("global_avg_pool_nhwc_fwd", bf);
            // SAFETY: x: [n, hw, c]; y: [n, c].
            unsafe { self.launch(&k, grid_for(n * c), 256, args!(&xp, &yp, &ci, &hwi, &total)) };
        } else {
            let planes = (n * c) as i64;
            let blocks = (n * c).div_ceil(8) as u32; // 8 warps per block, one plane each
                                                     // SAFETY: x: [n·c, hw]; y: [n·c].
            unsafe {
                self.launch(&act_kernel("global_avg_pool_fwd", bf), (blocks, 1, 1), 256, args!(&xp, &yp, &hwi, &planes))
            };
        }
    }
    fn global_avg_pool_backward(&self, dy: &Tensor, dx: &mut Tensor) {
        let (_, c, hw) = nchw(dx);
        let nhwc = is_nhwc(dx) as i32;
        let ((dxp, bf), ci, hwi, total) = (raw_out(dx), c as i32, hw as i32, dx.len() as i64);
        let dyi = self.input(dy, false);
        let dp = dyi.ptr;
        // SAFETY: dy: [n, c]; dx: [n, c, hw] in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("global_avg_pool_bwd", bf),
                grid_for(total as usize),
                256,
                args!(&dp, &dxp, &ci, &hwi, &nhwc, &total),
            )
        };
    }
    // The flat form feeds a classifier: FP32, NCHW order.
    fn flatten(&self, x: &Tensor) -> Tensor {
        let s = x.shape().to_vec();
        let flat = [s[0], s[1..].iter().product()];
        if !is_nhwc(x) && !is_bf16(x) {
            return x.clone().reshape(&flat);
        }
        let mut y = self.alloc(&flat);
        let yp = out(&mut y);
        if is_nhwc(x) {
            self.convert((raw(x), is_bf16(x)), (yp, false), &s, false);
        } else {
            self.cast((raw(x), true), (yp, false), x.len());
        }
        y
    }
    fn unflatten(&self, dy: &Tensor, shape: &[usize]) -> Tensor {
        if !self.stores_nhwc(shape) {
            return dy.clone().reshape(shape);
        }
        let mut dx = self.alloc_activation(shape);
        let dxp = raw_out(&mut dx);
        self.convert((raw(dy), is_bf16(dy)), dxp, shape, true);
        dx
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
        assert!(stats.len() >= loss_stats::LEN);
        let (n, classes) = (logits.dim(0) as i32, logits.dim(1) as i32);
        let k = top_k.min(classes as usize) as i32;
        let (lp, yp, sp) = (ptr(logits), ptr(labels), out(stats));
        let dp = dlogits.map_or(0u64, out);
        let skip = skip_correct as i32;
        // SAFETY: logits and dlogits: [n, classes]; labels: [n] indices < classes (checked
        // where data sets are read); stats: [3]. A null dlogits is skipped by the kernel.
        unsafe { self.launch("softmax_xent", (1, 1, 1), 1024, args!(&lp, &yp, &dp, &sp, &n, &classes, &k, &skip)) };
    }

    fn render_batch(&self, images: &Tensor, src_shape: [usize; 3], plan: &Tensor, norm: &Tensor, dst: &mut Tensor) {
        let [c, sh, sw] = src_shape.map(|v| v as i32);
        let (dh, dw) = (dst.dim(2) as i32, dst.dim(3) as i32);
        assert_eq!(dst.dim(1) as i32, c, "render_batch: channels differ");
        let (total, nhwc) = (dst.len() as i64, is_nhwc(dst) as i32);
        // in place, also when other handles share the storage, as `write` (see the trait)
        let (ip, pp, np, op, bf) = (ptr(images), ptr(plan), ptr(norm), raw(dst), is_bf16(dst));
        // SAFETY: images holds the data set's bytes (every plan index is an image of it, as the
        // loader drew them), plan [n, 4], norm [2c], out [n, c, dh, dw] in the layout `nhwc` says.
        unsafe {
            self.launch(
                &act_kernel("render_batch", bf),
                grid_for(total as usize),
                256,
                args!(&ip, &pp, &np, &op, &c, &sh, &sw, &dh, &dw, &nhwc, &total),
            )
        };
    }
    fn ternarize(&self, w: &Tensor, rows: usize, cfg: &TernaryConfig, q: &mut Tensor, zero_fraction: &mut Tensor) {
        let (rule, f) = match cfg.threshold {
            Threshold::MeanAbs(f) => (0i32, f),
            Threshold::Fixed(d) => (1, d),
            Threshold::MaxFraction(f) => (2, f),
            Threshold::ZeroFraction(f) => (3, f),
        };
        let scale = match cfg.scale {
            Scale::None => 0i32,
            Scale::Layer => 1,
            Scale::Channel => 2,
        };
        let n = w.len() as i64;
        let rows = rows.max(1);
        let cols = (w.len() / rows) as i64;
        // slices of at least 16 Ki weights, at most 256 of them (fixed by the size alone)
        let parts = w.len().div_ceil(1 << 14).clamp(1, 256);
        let (scratch, row_zeros) = (self.buffer(1), self.buffer(rows));
        // pairs of doubles: 4 floats per pair
        let (partial, row_stats) = (self.buffer(parts * 4), self.buffer(rows * 4));
        let (wp, qp, zp, sp, rp) = (ptr(w), out(q), out(zero_fraction), scratch.ptr, row_zeros.ptr);
        let (pp, rsp, rows64, parts32) = (partial.ptr, row_stats.ptr, rows as i64, parts as i32);
        // SAFETY: w and q hold rows·cols floats; scratch 1, row_zeros `rows`, zero_fraction 1;
        // partial `parts` and row_stats `rows` pairs of doubles.
        unsafe {
            self.launch("tern_abs_partial", (parts as u32, 1, 1), 256, args!(&wp, &n, &parts32, &pp));
            self.launch("tern_threshold", (1, 1, 1), 1024, args!(&wp, &n, &rule, &f, &pp, &parts32, &sp));
            self.launch("tern_row_stats", (rows as u32, 1, 1), 256, args!(&wp, &cols, &sp, &rsp));
            self.launch(
                "tern_apply",
                (rows as u32, 1, 1),
                256,
                args!(&wp, &qp, &cols, &rows64, &scale, &sp, &rsp, &rp),
            );
            self.launch("tern_zero_fraction", (1, 1, 1), 256, args!(&rp, &rows64, &n, &zp));
        }
    }
    fn straight_through(&self, w: &Tensor, grad: &mut Tensor, clip: f32) {
        let (wp, gp, n) = (ptr(w), out(grad), w.len() as i64);
        // SAFETY: w and grad hold n floats.
        unsafe { self.launch("straight_through", grid_for(n as usize), 256, args!(&wp, &gp, &clip, &n)) };
    }
    fn mask(&self, x: &mut Tensor, mask: &Tensor) {
        assert_eq!(x.len(), mask.len(), "mask of {} values for a tensor of {}", mask.len(), x.len());
        let (xp, mp, n) = (out(x), ptr(mask), x.len() as i64);
        // SAFETY: x and mask hold n floats (asserted).
        unsafe { self.launch("mask_multiply", grid_for(n as usize), 256, args!(&xp, &mp, &n)) };
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
        let (wp, gp, vp, lp, n) = (out(w), ptr(g), out(v), ptr(lr), g.len() as i64);
        let gd = guard.map_or(0u64, ptr);
        let nest = nesterov as i32;
        // SAFETY: w, g, v hold n floats; lr one; guard (if not null) one.
        unsafe {
            self.launch(
                "sgd",
                grid_for(n as usize),
                256,
                args!(&wp, &gp, &vp, &lp, &gd, &momentum, &nest, &weight_decay, &n),
            )
        };
    }

    fn nonzero_forward(&self, x: &Tensor, w: &Tensor, g: &ConvGeometry) -> Nonzeros {
        let p = Probe::of(g);
        let (xp, wp, xl, wl) = (raw(x), raw(w), is_nhwc(x) as i32, is_nhwc(w) as i32);
        let (per_image, rows, w_cols) = (self.buffer(p.c * p.hw), self.buffer(p.crs), self.buffer(p.crs));
        let (pi, ro, wc) = (per_image.ptr, rows.ptr, w_cols.ptr);
        let (n, k, c, hw, rs, crs) = (p.n as i64, p.k as i64, p.c as i32, p.hw as i32, p.rs as i32, p.crs as i64);
        let (h, wd, kh, kw, st, pad, ho, wo) = p.window();
        let chw = (p.c * p.hw) as i64;
        let res = self.probe_result();
        let (r0, r2) = (res.ptr, res.ptr + 16);
        let null = 0u64;
        // SAFETY: x is [n, c, h·w] and w [k, c, r·s] in the layouts given; per_image holds
        // c·h·w counts, rows and w_cols crs each, res 3 u64.
        unsafe {
            self.launch(
                &act_kernel("nz_over_images", is_bf16(x)),
                grid_for(p.c * p.hw),
                256,
                args!(&xp, &pi, &n, &c, &hw, &xl),
            );
            self.launch(
                "nz_col_rows",
                (p.crs as u32, 1, 1),
                256,
                args!(&pi, &ro, &h, &wd, &kh, &kw, &st, &pad, &ho, &wo),
            );
            self.launch(
                &act_kernel("nz_over_images", is_bf16(w)),
                grid_for(p.crs),
                256,
                args!(&wp, &wc, &k, &c, &rs, &wl),
            );
            self.launch("nz_dot", grid_for(p.crs), 256, args!(&wc, &ro, &crs, &r0));
            self.launch("nz_dot", grid_for(p.c * p.hw), 256, args!(&pi, &null, &chw, &r2));
        }
        self.probe_read(&res)
    }
    fn nonzero_backward(&self, w: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Nonzeros {
        let p = Probe::of(g);
        let (wp, dp, wl, dl) = (raw(w), raw(dy), is_nhwc(w) as i32, is_nhwc(dy) as i32);
        let (w_pos, w_rows) = (self.buffer(p.k * p.rs), self.buffer(p.k));
        let (dy_images, dy_rows) = (self.buffer(p.k * p.pq), self.buffer(p.k));
        let (wpo, wro, dyi, dyr) = (w_pos.ptr, w_rows.ptr, dy_images.ptr, dy_rows.ptr);
        let (n, k, c, rs, pq) = (p.n as i64, p.k as i64, p.c as i32, p.rs as i32, p.pq as i32);
        let (k32, rs64, pq64) = (p.k as i32, p.rs as i64, p.pq as i64);
        let res = self.probe_result();
        let (r0, r2) = (res.ptr, res.ptr + 16);
        let null = 0u64;
        // SAFETY: w is [k, c, r·s] and dy [n, k, pq] in the layouts given; w_pos holds k·r·s
        // counts, dy_images k·pq, w_rows and dy_rows k each, res 3 u64.
        unsafe {
            self.launch(
                &act_kernel("nz_over_channels", is_bf16(w)),
                grid_for(p.k * p.rs),
                256,
                args!(&wp, &wpo, &k, &c, &rs, &wl),
            );
            self.launch("nz_row_sums", (p.k as u32, 1, 1), 256, args!(&wpo, &wro, &rs64));
            self.launch(
                &act_kernel("nz_over_images", is_bf16(dy)),
                grid_for(p.k * p.pq),
                256,
                args!(&dp, &dyi, &n, &k32, &pq, &dl),
            );
            self.launch("nz_row_sums", (p.k as u32, 1, 1), 256, args!(&dyi, &dyr, &pq64));
            self.launch("nz_dot", grid_for(p.k), 256, args!(&wro, &dyr, &k, &r0));
            self.launch("nz_dot", grid_for(p.k), 256, args!(&dyr, &null, &k, &r2));
        }
        self.probe_read(&res)
    }
    fn nonzero_weight_grad(&self, x: &Tensor, dy: &Tensor, g: &ConvGeometry) -> Nonzeros {
        let p = Probe::of(g);
        let (xp, dp, xl, dl) = (raw(x), raw(dy), is_nhwc(x) as i32, is_nhwc(dy) as i32);
        let (x_pixels, dy_pos) = (self.buffer(p.n * p.hw), self.buffer(p.n * p.pq));
        let (xpx, dyp) = (x_pixels.ptr, dy_pos.ptr);
        let (n, c, k, hw, pq) = (p.n as i64, p.c as i32, p.k as i32, p.hw as i32, p.pq as i32);
        let (h, wd, kh, kw, st, pad, ho, wo) = p.window();
        let (npq, nhw) = ((p.n * p.pq) as i64, (p.n * p.hw) as i64);
        let res = self.probe_result();
        let (r0, r1, r2) = (res.ptr, res.ptr + 8, res.ptr + 16);
        let null = 0u64;
        // SAFETY: x is [n, c, h·w] and dy [n, k, pq] in the layouts given; x_pixels holds
        // n·h·w counts, dy_pos n·pq, res 3 u64.
        unsafe {
            self.launch(
                &act_kernel("nz_over_channels", is_bf16(x)),
                grid_for(p.n * p.hw),
                256,
                args!(&xp, &xpx, &n, &c, &hw, &xl),
            );
            self.launch(
                &act_kernel("nz_over_channels", is_bf16(dy)),
                grid_for(p.n * p.pq),
                256,
                args!(&dp, &dyp, &n, &k, &pq, &dl),
            );
            self.launch(
                "nz_window_dot",
                grid_for(p.n * p.pq),
                256,
                args!(&xpx, &dyp, &n, &h, &wd, &ho, &wo, &kh, &kw, &st, &pad, &r0),
            );
            self.launch("nz_dot", grid_for(p.n * p.pq), 256, args!(&dyp, &null, &npq, &r1));
            self.launch("nz_dot", grid_for(p.n * p.hw), 256, args!(&xpx, &null, &nhw, &r2));
        }
        self.probe_read(&res)
    }
}
