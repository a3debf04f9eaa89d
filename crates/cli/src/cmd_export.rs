//! `tern export`: a tern checkpoint out of tern — as an ONNX graph that ONNX Runtime and
//! other engines run (ternary weights as their dequantised values), and as a packed `.tern`
//! file for tern's own u8 inference engine (2-bit weights, calibrated activation scales).

use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Args, Debug)]
pub struct ExportArgs {
    /// The checkpoint to export (model.safetensors of a training run or an import)
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Write an ONNX model (opset 13): input `input` [batch, c, h, w] normalised as tern's
    /// loader normalises (mean/std in the model's metadata), output `logits`
    #[arg(long)]
    pub onnx: Option<PathBuf>,
    /// Write a packed model for `tern infer --model`: ternary weights as 2-bit codes, BN
    /// folded, u8 activation scales calibrated on training images of the data flags below
    #[arg(long)]
    pub packed: Option<PathBuf>,
    /// With --packed: training images that calibrate the activation scales
    #[arg(long, default_value_t = 256)]
    pub calibrate: usize,
    #[command(flatten)]
    pub data: crate::common::DataArgs,
}

pub fn run(a: ExportArgs) -> anyhow::Result<()> {
    if a.onnx.is_none() && a.packed.is_none() {
        anyhow::bail!("nothing to write: give --onnx OUT.onnx and/or --packed OUT.tern");
    }
    if let Some(path) = &a.onnx {
        onnx(&a.checkpoint, path)?;
    }
    if let Some(path) = &a.packed {
        let (q, _) = crate::cmd_infer::quantise(&a.checkpoint, &a.data, a.calibrate)?;
        let bytes = q.packed.write(path)?;
        let totals = tern_train::summary::totals(&q.model.summary());
        let params = totals.bytes_fp32 / 4;
        let weights = q.packed.weight_bytes();
        println!(
            "{} -> {} ({:.1} KiB, of which weights {:.1} KiB: {:.1}x smaller than int8; FP32 weights {:.1} KiB, \
             int8 {:.1} KiB; u8 scales from {} training images)",
            q.model.config.name,
            path.display(),
            bytes as f64 / 1024.0,
            weights as f64 / 1024.0,
            params as f64 / weights.max(1) as f64,
            (4 * params) as f64 / 1024.0,
            params as f64 / 1024.0,
            q.calibration_images
        );
    }
    Ok(())
}

fn onnx(checkpoint: &Path, path: &Path) -> anyhow::Result<()> {
    let (mut model, c) = tern_train::checkpoint::load_model(checkpoint)?;
    let mut meta = vec![
        ("tern.checkpoint".to_string(), checkpoint.display().to_string()),
        ("tern.model".to_string(), serde_json::to_string(&model.config)?),
    ];
    if let Some(n) = c.meta.get("normalize") {
        meta.push(("tern.normalize".to_string(), n.to_string()));
    }
    let bytes = tern_onnx::export::write_onnx(path, &mut model, &meta)?;
    let ternary = model.summary().iter().filter(|r| r.ternary).count();
    println!(
        "{} ({} ternary layers) -> {} ({:.1} KiB, ONNX opset {})",
        model.config.name,
        ternary,
        path.display(),
        bytes as f64 / 1024.0,
        tern_onnx::export::OPSET
    );
    Ok(())
}
