//! `tern eval`: accuracy of a checkpoint on a data set's test split.

use crate::common::DataArgs;
use crate::progress::Bars;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use tern_data::Normalize;

#[derive(Args, Debug)]
pub struct EvalArgs {
    /// A checkpoint written by `tern train` (DIR/model.safetensors)
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// Images per batch
    #[arg(long, default_value_t = 256)]
    pub batch: usize,
    /// Evaluate on the first N test samples only
    #[arg(long)]
    pub limit: Option<usize>,
    /// Print {"test_accuracy": ..., "top5": ...} only
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: EvalArgs) -> anyhow::Result<()> {
    if a.batch == 0 {
        anyhow::bail!("invalid value for --batch: must be at least 1");
    }
    let (mut model, c) = tern_train::checkpoint::load_model(&a.checkpoint)?;
    let normalize: Normalize = serde_json::from_value(c.meta["normalize"].clone())
        .with_context(|| format!("{}: no `normalize` metadata", a.checkpoint.display()))?;
    let data = a.data.load()?;
    crate::common::check_data_fits(&a.checkpoint, &model.config, &data, &a.data.data)?;
    let test = Arc::new(match a.limit {
        Some(n) => data.test.take(n),
        None => data.test.clone(),
    });
    let mut bars = Bars::new(a.json);
    let (backend, _) = a.device.backend()?;
    model.to_backend(backend.as_ref());
    let r = tern_train::evaluate(&mut model, backend.as_ref(), test, &normalize, a.batch, &mut bars)?;
    bars.finish();
    if a.json {
        println!(
            "{}",
            serde_json::json!({"test_accuracy": r.top1, "top5": r.top5, "loss": r.loss, "samples": r.samples})
        );
    } else {
        println!(
            "{} on {} ({} images): top-1 {:.2}%  top-5 {:.2}%  loss {:.4}",
            model.config.name,
            data.name,
            r.samples,
            100.0 * r.top1,
            100.0 * r.top5,
            r.loss
        );
    }
    Ok(())
}
