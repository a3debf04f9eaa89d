//! Convolutions through cuDNN: descriptors per geometry, and for each pass the algorithm
//! chosen by measurement (`cudnnFind*AlgorithmEx`) the first time a geometry runs, cached.
//! The heuristic pick (`cudnnGet*_v7`) chose kernels 4–6x slower in a probe. Only
//! deterministic algorithms are taken, so a step gives the same bits every time.

use crate::{Algorithms, Layout, Precision};
use cudarc::cudnn::{result, sys};
use std::collections::HashMap;
use std::ffi::c_void;
use tern_core::{ConvGeometry, Error, Result};

/// The three passes of a convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Pass {
    Forward = 0,
    BackwardData = 1,
    BackwardFilter = 2,
}

/// An algorithm, the workspace it needs and the math type it runs with.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    pub algo: u32,
    pub workspace: usize,
    pub math: u32,
}

/// cuDNN descriptors of one geometry; one convolution descriptor per pass, since each pass
/// runs with the math type of its own chosen algorithm.
struct Plan {
    key: Key,
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: [sys::cudnnConvolutionDescriptor_t; 3],
    chosen: [Option<Choice>; 3],
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created by `Plan::new` and is destroyed once, here.
        unsafe {
            let _ = result::destroy_tensor_descriptor(self.x);
            let _ = result::destroy_tensor_descriptor(self.y);
            let _ = result::destroy_filter_descriptor(self.w);
            for c in self.conv {
                let _ = result::destroy_convolution_descriptor(c);
            }
        }
    }
}

/// A geometry: n, c_in, h, w, c_out, k_h, k_w, stride, pad.
pub type Key = (usize, usize, usize, usize, usize, usize, usize, usize, usize);

fn key(g: &ConvGeometry) -> Key {
    (g.n, g.c_in, g.h, g.w, g.c_out, g.k_h, g.k_w, g.stride, g.pad)
}

fn check(status: sys::cudnnStatus_t, what: &str) -> Result<()> {
    if status == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(Error::device("cudnn", format!("{what}: {status:?}")))
    }
}

fn dims(v: [usize; 4]) -> [i32; 4] {
    v.map(|d| i32::try_from(d).expect("tensor dimension fits i32"))
}

impl Plan {
    fn new(g: &ConvGeometry, precision: Precision, layout: Layout) -> Result<Plan> {
        fn e(what: &'static str) -> impl Fn(result::CudnnError) -> Error {
            move |err| Error::device("cudnn", format!("{what}: {err:?}"))
        }
        let f32_ = sys::cudnnDataType_t::CUDNN_DATA_FLOAT;
        // bf16 operands accumulate in FP32 (cuDNN's BFLOAT16 "pseudo" configuration)
        let data = match precision {
            Precision::Bf16 => sys::cudnnDataType_t::CUDNN_DATA_BFLOAT16,
            Precision::Fp32 | Precision::Tf32 => f32_,
        };
        // the filter takes the tensors' format: KCRS with NCHW, KRSC with NHWC
        let tensor_format = match layout {
            Layout::Nchw => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
            Layout::Nhwc => sys::cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
        };
        let x = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        let y = result::create_tensor_descriptor().map_err(e("tensor descriptor"))?;
        let w = result::create_filter_descriptor().map_err(e("filter descriptor"))?;
        let mut conv = [std::ptr::null_mut(); 3];
        for c in &mut conv {
            *c = result::create_convolution_descriptor().map_err(e("convolution descriptor"))?;
        }
        let plan = Plan { key: key(g), x, y, w, conv, chosen: [None; 3] };
        let math = match precision {
            Precision::Fp32 => sys::cudnnMathType_t::CUDNN_FMA_MATH,
            Precision::Tf32 | Precision::Bf16 => sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
        };
        let (p, s) = (g.pad as i32, g.stride as i32);
        // SAFETY: the descriptors were just created and are owned by `plan`.
        unsafe {
            result::set_tensor4d_descriptor(x, tensor_format, data, dims([g.n, g.c_in, g.h, g.w]))
                .map_err(e("input shape"))?;
            result::set_tensor4d_descriptor(y, tensor_format, data, dims([g.n, g.c_out, g.h_out(), g.w_out()]))
                .map_err(e("output shape"))?;
            result::set_filter4d_descriptor(w, data, tensor_format, dims([g.c_out, g.c_in, g.k_h, g.k_w]))
                .map_err(e("filter shape"))?;
            for c in conv {
                let mode = sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION;
                result::set_convolution2d_descriptor(c, p, p, s, s, 1, 1, mode, f32_).map_err(e("convolution"))?;
                result::set_convolution_math_type(c, math).map_err(e("math type"))?;
            }
        }
        Ok(plan)
    }
}

/// cuDNN state: the handle (bound to the backend's stream) and the plans.
pub struct Convs {
    handle: sys::cudnnHandle_t,
    precision: Precision,
    algorithms: Algorithms,
    layout: Layout,
    plans: HashMap<Key, Plan>,
    /// Choices of an earlier process (a resumed run), used instead of measuring again.
    preset: HashMap<(Key, usize), Choice>,
}

// SAFETY: the handle and descriptors are only used behind the backend's mutex, by one thread
// at a time, which cuDNN allows.
unsafe impl Send for Convs {}

impl Drop for Convs {
    fn drop(&mut self) {
        self.plans.clear();
        // SAFETY: created in `Convs::new`, destroyed once.
        let _ = unsafe { result::destroy_handle(self.handle) };
    }
}

/// Device pointers of one call (x/dy/w are inputs, `out` the output of the pass).
pub struct Operands {
    pub x: u64,
    pub w: u64,
    pub y: u64,
}

impl Convs {
    pub fn new(
        stream: cudarc::driver::sys::CUstream,
        precision: Precision,
        algorithms: Algorithms,
        layout: Layout,
    ) -> Result<Self> {
        let handle =
            result::create_handle().map_err(|e| Error::device("cudnn", format!("creating a handle: {e:?}")))?;
        // SAFETY: a valid handle and the backend's live stream.
        unsafe { result::set_stream(handle, stream as _) }
            .map_err(|e| Error::device("cudnn", format!("binding the stream: {e:?}")))?;
        Ok(Convs { handle, precision, algorithms, layout, plans: HashMap::new(), preset: HashMap::new() })
    }

    /// Whether `pass` of `g` already has its algorithm (no search needed).
    pub fn has_choice(&self, g: &ConvGeometry, pass: Pass) -> bool {
        self.plans.get(&key(g)).is_some_and(|p| p.chosen[pass as usize].is_some())
            || self.preset.contains_key(&(key(g), pass as usize))
    }

    /// Every choice made so far (and those preset), per geometry and pass.
    pub fn export(&self) -> Vec<(Key, usize, Choice)> {
        let mut v: Vec<(Key, usize, Choice)> = self.preset.iter().map(|(&(k, p), &c)| (k, p, c)).collect();
        for (k, plan) in &self.plans {
            for (p, c) in plan.chosen.iter().enumerate() {
                if let Some(c) = c {
                    if !self.preset.contains_key(&(*k, p)) {
                        v.push((*k, p, *c));
                    }
                }
            }
        }
        v.sort_by_key(|e| (e.0, e.1));
        v
    }

    /// Takes choices an earlier process made, for geometries not yet planned here.
    pub fn import(&mut self, choices: impl IntoIterator<Item = (Key, usize, Choice)>) {
        for (k, p, c) in choices {
            if p < 3 && self.plans.get(&k).is_none_or(|plan| plan.chosen[p].is_none()) {
                self.preset.insert((k, p), c);
            }
        }
    }

    /// Runs `pass` of geometry `g` (y = conv(x, w); dx = conv_bwd_data(dy, w) with `o.x` = dx
    /// and `o.y` = dy; dw = conv_bwd_filter(x, dy) with `o.w` = dw and `o.y` = dy), choosing
    /// its algorithm on first use with `find_ws` (bytes at `find_ws_ptr`) as scratch.
    /// `workspace` grows the run's workspace to what the algorithm needs.
    ///
    /// # Safety
    /// The pointers must hold tensors of `g`'s shapes on the handle's device; `workspace`
    /// must return a pointer to at least the requested bytes, valid until the call returns.
    pub unsafe fn run(
        &mut self,
        g: &ConvGeometry,
        pass: Pass,
        o: &Operands,
        find_ws: (u64, usize),
        workspace: &mut dyn FnMut(usize) -> Result<u64>,
    ) -> Result<()> {
        let (precision, algorithms, layout) = (self.precision, self.algorithms, self.layout);
        let plan = match self.plans.entry(key(g)) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(Plan::new(g, precision, layout)?),
        };
        let i = pass as usize;
        let choice = match plan.chosen[i] {
            Some(c) => c,
            None if self.preset.contains_key(&(key(g), i)) => {
                let c = self.preset[&(key(g), i)];
                // SAFETY: the pass's own descriptor, owned by `plan`; the math type is one
                // cuDNN reported for this algorithm in the process that measured it.
                unsafe {
                    result::set_convolution_math_type(
                        plan.conv[i],
                        std::mem::transmute::<u32, sys::cudnnMathType_t>(c.math),
                    )
                }
                .map_err(|e| Error::device("cudnn", format!("math type: {e:?}")))?;
                plan.chosen[i] = Some(c);
                c
            }
            None => {
                // SAFETY: forwarded from the caller.
                let c = unsafe { find(self.handle, plan, pass, o, find_ws, precision, algorithms)? };
                plan.chosen[i] = Some(c);
                c
            }
        };
        let ws = if choice.workspace > 0 { workspace(choice.workspace)? } else { 0 };
        let (alpha, beta) = (1.0f32, 0.0f32);
        let (a, b) = (&alpha as *const f32 as *const c_void, &beta as *const f32 as *const c_void);
        let p = |v: u64| v as *mut c_void;
        let h = self.handle;
        // SAFETY: descriptors match the pointers' shapes (the caller's contract), the
        // algorithm was found for these descriptors, and the workspace is large enough.
        let status = unsafe {
            match pass {
                Pass::Forward => sys::cudnnConvolutionForward(
                    h,
                    a,
                    plan.x,
                    p(o.x),
                    plan.w,
                    p(o.w),
                    plan.conv[i],
                    std::mem::transmute::<u32, sys::cudnnConvolutionFwdAlgo_t>(choice.algo),
                    p(ws),
                    choice.workspace,
                    b,
                    plan.y,
                    p(o.y),
                ),
                Pass::BackwardData => sys::cudnnConvolutionBackwardData(
                    h,
                    a,
                    plan.w,
                    p(o.w),
                    plan.y,
                    p(o.y),
                    plan.conv[i],
                    std::mem::transmute::<u32, sys::cudnnConvolutionBwdDataAlgo_t>(choice.algo),
                    p(ws),
                    choice.workspace,
                    b,
                    plan.x,
                    p(o.x),
                ),
                Pass::BackwardFilter => sys::cudnnConvolutionBackwardFilter(
                    h,
                    a,
                    plan.x,
                    p(o.x),
                    plan.y,
                    p(o.y),
                    plan.conv[i],
                    std::mem::transmute::<u32, sys::cudnnConvolutionBwdFilterAlgo_t>(choice.algo),
                    p(ws),
                    choice.workspace,
                    b,
                    plan.w,
                    p(o.w),
                ),
            }
        };
        check(status, "convolution")
    }
}

/// Times every algorithm of `pass` on the real operands and returns the fastest that is
/// deterministic, succeeded, and keeps to the precision; sets its math type on the pass's
/// descriptor.
///
/// # Safety
/// As for [`Convs::run`]; `find_ws` is scratch of its stated size. The output operand is
/// overwritten by the trials (the real call that follows overwrites it again).
unsafe fn find(
    h: sys::cudnnHandle_t,
    plan: &Plan,
    pass: Pass,
    o: &Operands,
    find_ws: (u64, usize),
    precision: Precision,
    algorithms: Algorithms,
) -> Result<Choice> {
    const N: usize = 16;
    let mut returned = 0i32;
    let p = |v: u64| v as *mut c_void;
    let i = pass as usize;
    // (algo, status, memory, determinism, math type, ms) of each result, fastest first
    let rows: Vec<(u32, sys::cudnnStatus_t, usize, sys::cudnnDeterminism_t, sys::cudnnMathType_t, f32)> = unsafe {
        match pass {
            Pass::Forward => {
                let mut perf: [sys::cudnnConvolutionFwdAlgoPerf_t; N] = std::mem::zeroed();
                check(
                    sys::cudnnFindConvolutionForwardAlgorithmEx(
                        h,
                        plan.x,
                        p(o.x),
                        plan.w,
                        p(o.w),
                        plan.conv[i],
                        plan.y,
                        p(o.y),
                        N as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                        p(find_ws.0),
                        find_ws.1,
                    ),
                    "finding a forward algorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|r| (r.algo as u32, r.status, r.memory, r.determinism, r.mathType, r.time))
                    .collect()
            }
            Pass::BackwardData => {
                let mut perf: [sys::cudnnConvolutionBwdDataAlgoPerf_t; N] = std::mem::zeroed();
                check(
                    sys::cudnnFindConvolutionBackwardDataAlgorithmEx(
                        h,
                        plan.w,
                        p(o.w),
                        plan.y,
                        p(o.y),
                        plan.conv[i],
                        plan.x,
                        p(o.x),
                        N as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                        p(find_ws.0),
                        find_ws.1,
                    ),
                    "finding a backward-data algorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|r| (r.algo as u32, r.status, r.memory, r.determinism, r.mathType, r.time))
                    .collect()
            }
            Pass::BackwardFilter => {
                let mut perf: [sys::cudnnConvolutionBwdFilterAlgoPerf_t; N] = std::mem::zeroed();
                check(
                    sys::cudnnFindConvolutionBackwardFilterAlgorithmEx(
                        h,
                        plan.x,
                        p(o.x),
                        plan.y,
                        p(o.y),
                        plan.conv[i],
                        plan.w,
                        p(o.w),
                        N as i32,
                        &mut returned,
                        perf.as_mut_ptr(),
                        p(find_ws.0),
                        find_ws.1,
                    ),
                    "finding a backward-filter algorithm",
                )?;
                perf[..returned as usize]
                    .iter()
                    .map(|r| (r.algo as u32, r.status, r.memory, r.determinism, r.mathType, r.time))
                    .collect()
            }
        }
    };
    let tensor_math = |m: sys::cudnnMathType_t| {
        matches!(
            m,
            sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH | sys::cudnnMathType_t::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION
        )
    };
    let usable = |r: &&(u32, sys::cudnnStatus_t, usize, sys::cudnnDeterminism_t, sys::cudnnMathType_t, f32)| {
        r.1 == sys::cudnnStatus_t::CUDNN_STATUS_SUCCESS && (precision != Precision::Fp32 || !tensor_math(r.4))
    };
    // the fastest deterministic algorithm; where cuDNN has none for this shape (it happens
    // for some large layers), the fastest of any kind
    let pick = rows
        .iter()
        .filter(usable)
        .find(|r| algorithms == Algorithms::Fastest || r.3 == sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC)
        .or_else(|| rows.iter().find(usable));
    let Some(&(algo, _, memory, _, math, _)) = pick else {
        return Err(Error::device("cudnn", format!("no {pass:?} algorithm succeeded ({rows:?})")));
    };
    if std::env::var_os("TERN_CUDNN_LOG").is_some() {
        // what the search measured, for tuning work: one line per candidate
        eprintln!("cudnn {:?} {pass:?}: picked algo {algo}", plan.key);
        for r in &rows {
            eprintln!("  algo {} {:?} {:.3} ms, {} B, {:?}, {:?}", r.0, r.1, r.5, r.2, r.3, r.4);
        }
    }
    // SAFETY: the pass's own descriptor, owned by `plan`.
    unsafe { result::set_convolution_math_type(plan.conv[i], math) }
        .map_err(|e| Error::device("cudnn", format!("math type: {e:?}")))?;
    Ok(Choice { algo, workspace: memory, math: math as u32 })
}
