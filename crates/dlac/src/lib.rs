//! tern-dlac: DLAC, the paper's zero-skipping accelerator (§3, §4.3), as a configuration,
//! a lowering of mmOp workloads onto its PE grid, and a cycle engine.
//! It reads workloads (the profiler's `workload.json`, or a Fig. 5-style CSV), never the trainer.

pub mod area;
pub mod config;
pub mod energy;
pub mod engine;
pub mod event;
pub mod isa;
pub mod masks;
pub mod memory;
pub mod summary;
pub mod workload;

pub use area::Area;
pub use config::{DlacConfig, Orientation, Precision};
pub use energy::Energy;
pub use engine::{simulate_op, simulate_op_masked, Engine, OpResult};
pub use masks::OpMasks;
pub use summary::{simulate_workload, simulate_workload_masked, Summary};
pub use workload::{MmOp, PtLayer, Workload};
