//! The NVRTC-compiled kernels of `kernels.cu` and `kernels_act.cu` (compiled once per
//! process, for the device's own architecture) and the launch helper. The activation kernels
//! are compiled twice: for FP32 storage (`relu_fwd`) and for bf16 storage (`relu_fwd_bf16`).

use cudarc::driver::{result, sys, CudaContext, CudaFunction, CudaModule};
use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Arc;
use tern_core::{Error, Result};

const COMMON: &str = include_str!("kernels.cu");
const ACTIVATIONS: &str = include_str!("kernels_act.cu");

/// The whole NVRTC source: the common kernels, then the activation kernels for each storage.
pub fn source() -> String {
    format!(
        "{COMMON}\n#define ACT float\n#define K(name) name\n{ACTIVATIONS}\n#undef ACT\n#undef K\n\
         #define ACT bf16\n#define K(name) name##_bf16\n{ACTIVATIONS}\n#undef ACT\n#undef K\n"
    )
}

/// Every `extern "C"` kernel of `kernels_act.cu`, in both storages.
const ACT_NAMES: &[&str] = &[
    "relu_fwd",
    "relu_bwd",
    "add",
    "add_relu",
    "add_bias",
    "channel_partial_sums",
    "rows_partial_sums",
    "bn_apply",
    "bn_apply_eval",
    "bn_bwd_partial",
    "bn_bwd_rows_partial",
    "bn_bwd_input",
    "bn_frozen_bwd",
    "max_pool_fwd",
    "max_pool_bwd",
    "max_pool_fwd_nhwc4",
    "max_pool_bwd_nhwc4",
    "avg_pool_fwd",
    "avg_pool_bwd",
    "global_avg_pool_fwd",
    "global_avg_pool_nhwc_fwd",
    "global_avg_pool_bwd",
    "render_batch",
    "nz_over_images",
    "nz_over_channels",
    "relu_fwd4",
    "relu_bwd4",
    "add4",
    "add_relu4",
    "bn_apply4",
    "bn_apply_eval4",
    "bn_bwd_input4",
    "bn_frozen_bwd4",
];

/// Every `extern "C"` kernel of `kernels.cu`.
const NAMES: &[&str] = &[
    "fill",
    "cast",
    "convert_layout",
    "channel_sum_finalize",
    "bn_finalize",
    "bn_eval_stats",
    "bn_bwd_finalize",
    "softmax_xent",
    "tern_abs_partial",
    "tern_threshold",
    "tern_row_stats",
    "tern_apply",
    "tern_zero_fraction",
    "straight_through",
    "mask_multiply",
    "sgd",
    "nz_col_rows",
    "nz_row_sums",
    "nz_dot",
    "nz_window_dot",
];

/// Every kernel name of the compiled source.
fn all_names() -> impl Iterator<Item = String> {
    let act = ACT_NAMES.iter().flat_map(|n| [n.to_string(), format!("{n}_bf16")]);
    NAMES.iter().map(|n| n.to_string()).chain(act)
}

/// The name of activation kernel `name` for the storage (`bf16` or FP32).
pub fn act_kernel(name: &'static str, bf16: bool) -> std::borrow::Cow<'static, str> {
    debug_assert!(ACT_NAMES.contains(&name), "{name} is not an activation kernel");
    if bf16 {
        format!("{name}_bf16").into()
    } else {
        name.into()
    }
}

pub struct Kernels {
    _module: Arc<CudaModule>,
    functions: HashMap<String, CudaFunction>,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Kernels({} functions)", self.functions.len())
    }
}

impl Kernels {
    /// Compiles the source for the context's device and loads every kernel.
    pub fn load(ctx: &Arc<CudaContext>, device: &str) -> Result<Self> {
        let err = |what: String| Error::device(device, what);
        let (major, minor) = ctx.compute_capability().map_err(|e| err(format!("compute capability: {e}")))?;
        let ptx = compile(major, minor).map_err(err)?;
        let module = ctx.load_module(ptx).map_err(|e| err(format!("loading the kernels: {e}")))?;
        let mut functions = HashMap::new();
        for name in all_names() {
            let f = module.load_function(&name).map_err(|e| err(format!("kernel {name}: {e}")))?;
            functions.insert(name, f);
        }
        Ok(Kernels { _module: module, functions })
    }

    /// Launches `name` on `stream` with `args`: pointers to each argument's value, in the
    /// kernel's parameter order.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type, and every device
    /// pointer among them must be valid for the accesses the kernel makes with these sizes.
    pub unsafe fn launch(
        &self,
        name: &str,
        stream: sys::CUstream,
        grid: (u32, u32, u32),
        block: u32,
        args: &mut [*mut c_void],
    ) -> Result<()> {
        let f = self.functions.get(name).unwrap_or_else(|| panic!("no kernel named {name}"));
        // SAFETY: the caller guarantees the arguments (see above).
        unsafe { result::launch_kernel(f.cu_function(), grid, (block, 1, 1), 0, stream, args) }
            .map_err(|e| Error::device("cuda", format!("launching {name}: {e}")))
    }
}

/// PTX of `kernels.cu` for compute capability `major.minor` (NVRTC only, no device needed).
pub fn compile(major: i32, minor: i32) -> std::result::Result<cudarc::nvrtc::Ptx, String> {
    // NVRTC wants a 'static string; one per process and architecture.
    let arch: &'static str = Box::leak(format!("compute_{major}{minor}").into_boxed_str());
    let opts = CompileOptions { arch: Some(arch), fmad: Some(true), ..Default::default() };
    compile_ptx_with_opts(source(), opts).map_err(|e| format!("NVRTC could not compile the kernels: {e}"))
}

/// Blocks of 256 threads covering `n` elements with a grid-stride loop (capped: each thread
/// then takes several elements).
pub fn grid_for(n: usize) -> (u32, u32, u32) {
    ((n.div_ceil(256)).clamp(1, 132 * 32) as u32, 1, 1)
}

/// `args!(a, b, ...)`: the argument array for [`Kernels::launch`] from references to values.
#[macro_export]
macro_rules! args {
    ($($a:expr),* $(,)?) => {
        &mut [$(($a) as *const _ as *mut ::std::ffi::c_void),*]
    };
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_kernels_compile_where_nvrtc_is_present() {
        // SAFETY: only tries to open the library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            eprintln!("skipped: libnvrtc is not on this machine");
            return;
        }
        let ptx = super::compile(9, 0).unwrap_or_else(|e| panic!("{e}"));
        let text = ptx.to_src();
        for name in super::all_names() {
            assert!(text.contains(&format!(".entry {name}(")), "kernel {name} missing from the PTX");
        }
    }
}
