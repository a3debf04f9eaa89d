//! tern-core: tensors, convolution geometry, CPU kernels (each with a plain reference twin),
//! the kernel boundary (`Backend`), a checkpointable RNG, checkpoints and the error type.

pub mod backend;
pub mod checkpoint;
pub mod error;
pub mod fuzz;
pub mod geometry;
pub mod kernels;
pub mod masks;
pub mod quant;
pub mod rng;
pub mod tensor;

pub use backend::{loss_stats, Backend, BnSaved, CpuBackend, FusedRelu, StepGraph};
pub use error::{Error, Result};
pub use geometry::{ConvGeometry, PoolGeometry};
pub use rng::Rng;
pub use tensor::{Device, DeviceBuffer, Tensor};
