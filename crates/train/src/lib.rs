//! tern-train: the `Layer` trait and layers, models by name, SGD, learning-rate schedules and
//! the trainer (with checkpoints and resume).

pub mod checkpoint;
pub mod data_parallel;
pub mod layer;
pub mod layers;
pub mod model;
pub mod models;
pub mod optim;
pub mod profile;
pub mod recipe;
pub mod schedule;
pub mod step;
pub mod summary;
pub mod trainer;

pub use layer::{Ctx, Layer, Param};
pub use model::{Model, ModelConfig};
pub use optim::{Sgd, SgdConfig};
pub use recipe::Recipe;
pub use schedule::{Schedule, ScheduleKind};
pub use step::{StepOutcome, Stepper};
pub use trainer::{evaluate, EpochMetrics, EvalResult, Observer, Silent, TrainConfig, Trainer};
