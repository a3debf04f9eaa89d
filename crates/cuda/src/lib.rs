//! tern-cuda: the CUDA backend. Tensors live in device memory (`CudaBuffer`, pooled);
//! convolutions run through cuDNN (algorithm chosen by measurement per geometry), linear
//! layers through cuBLAS, everything else through NVRTC-compiled kernels (`kernels.cu`):
//! BN with its fused ReLU, pooling, the loss, ternarisation, SGD, batch rendering. Everything runs on one
//! stream. The libraries are loaded at run time (cudarc, dynamic loading), so the
//! workspace builds and tests on machines without CUDA; `CudaBackend::new` says what is
//! missing there.

mod backend;
mod conv;
mod kernels;
mod memory;
mod staging;

pub use backend::CudaBackend;
pub use memory::CudaBuffer;

/// The math of convolutions and matrix multiplies, and how activations are stored
/// (point-wise kernels always compute in FP32).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Strict FP32: cuDNN FMA kernels only, cuBLAS without tensor cores.
    Fp32,
    /// TF32 tensor cores for convolutions and GEMMs (10-bit mantissa products, FP32
    /// accumulation): what PyTorch uses for convolutions on Hopper by default.
    Tf32,
    /// Mixed precision, as PyTorch's bf16 autocast: image activations and their gradients
    /// are stored as bfloat16 (8-bit mantissa), convolutions run on bf16 tensor cores with
    /// FP32 accumulation (filters rounded to bf16 per call, filter gradients widened to FP32);
    /// weights, their gradients, the optimizer, BN statistics, the classifier (TF32) and the
    /// loss stay FP32. Needs the channels-last layout.
    Bf16,
}

/// Which convolution algorithms cuDNN may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithms {
    /// Only algorithms that give the same bits every run (a resumed run then ends with the
    /// same weights as an uninterrupted one); where a shape has none, the fastest.
    Deterministic,
    /// The fastest measured, as PyTorch's `cudnn.benchmark` picks them (some add partial
    /// results with atomics, in varying order).
    Fastest,
}

/// How the CUDA backend stores image tensors `[n, c, h, w]` (and conv filters) in device
/// memory. The host always sees NCHW: uploads and host copies convert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Layout {
    /// Channels first, as the host.
    Nchw,
    /// Channels last (`[n, h, w, c]`, filters `[k, r, s, c]`): cuDNN's tensor-core
    /// convolutions read this layout natively; NCHW operands cost them transposes.
    Nhwc,
}

impl Layout {
    pub fn name(self) -> &'static str {
        match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        }
    }
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::Fp32 => "fp32",
            Precision::Tf32 => "tf32",
            Precision::Bf16 => "bf16",
        }
    }
}
