//! tern-infer: CPU inference of trained tern networks with u8 activations and ternary (or
//! s8) weights. A [`plan::Plan`] is built from a checkpoint — BN folded into each
//! convolution's epilogue, ReLU, residual adds and requantisation fused — and run by
//! [`conv`]'s kernels (AVX-512 VNNI where the CPU has it, a portable twin elsewhere).

pub mod conv;
pub mod file;
pub mod plan;
