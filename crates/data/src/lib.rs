//! tern-data: data sets (IDX, CIFAR-10 binary, image folders), their transforms, and a
//! deterministic, prefetching batch iterator.

pub mod cifar;
pub mod dataset;
pub mod folder;
pub mod idx;
pub mod loader;
pub mod named;
pub mod synthetic;
pub mod transform;

pub use dataset::{DataSplit, Dataset, ImageFiles, Images};
pub use loader::{epoch_plans, plan_batch, Batch, BatchIter, LoaderConfig, RawBatch, RawBatchIter, SamplePlan};
pub use named::{load_named, DataKind};
pub use transform::{Augment, Normalize, Placement};
