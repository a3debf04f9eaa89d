//! The layers: each owns its forward and its split backward, calling the backend for kernels.

mod act;
mod container;
mod conv;
mod linear;
mod norm;
mod pool;
mod ternary;

pub use act::Relu;
pub use container::{Residual, Sequential};
pub use conv::Conv2d;
pub use linear::Linear;
pub use norm::BatchNorm;
pub use pool::{AvgPool2d, Flatten, GlobalAvgPool, MaxPool2d};
pub use ternary::TernaryWeight;

#[cfg(test)]
pub(crate) mod gradcheck;
