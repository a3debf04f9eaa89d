//! `tern export`: a tern checkpoint out of tern — today as an ONNX graph that ONNX Runtime
//! and other engines run (ternary weights as their dequantised values).

use clap::Args;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The checkpoint to export (model.safetensors of a training run or an import)
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Write an ONNX model (opset 13): input `input` [batch, c, h, w] normalised as tern's
    /// loader normalises (mean/std in the model's metadata), output `logits`
    #[arg(long)]
    pub onnx: PathBuf,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    let (mut model, c) = tern_train::checkpoint::load_model(&a.checkpoint)?;
    let mut meta = vec![
        ("tern.checkpoint".to_string(), a.checkpoint.display().to_string()),
        ("tern.model".to_string(), serde_json::to_string(&model.config)?),
    ];
    if let Some(n) = c.meta.get("normalize") {
        meta.push(("tern.normalize".to_string(), n.to_string()));
    }
    let bytes = tern_onnx::export::write_onnx(&a.onnx, &mut model, &meta)?;
    let ternary = model.summary().iter().filter(|r| r.ternary).count();
    println!(
        "{} ({} ternary layers) -> {} ({:.1} KiB, ONNX opset {})",
        model.config.name,
        ternary,
        a.onnx.display(),
        bytes as f64 / 1024.0,
        tern_onnx::export::OPSET
    );
    Ok(())
}
