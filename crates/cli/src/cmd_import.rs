//! `tern import`: a model trained elsewhere into a tern checkpoint (today: torchvision
//! ResNets saved with `safetensors.torch.save_file(model.state_dict(), path)`).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Where imported weights come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A torchvision state dict in safetensors (float32)
    Torchvision,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What the weights file is
    #[arg(long, value_enum)]
    pub format: Format,
    /// The architecture the state dict belongs to
    #[arg(long, value_parser = tern_onnx::torchvision::ARCHS)]
    pub arch: String,
    /// The weights: `safetensors.torch.save_file(model.state_dict(), "FILE.safetensors")`
    #[arg(long)]
    pub weights: PathBuf,
    /// Input side length the model will see (torchvision's ImageNet models: 224)
    #[arg(long, default_value_t = 224, value_parser = crate::common::parse_input_size)]
    pub input_size: usize,
    /// Output folder: DIR/model.safetensors (a tern checkpoint) and DIR/import.json
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    let Format::Torchvision = a.format;
    let (mut model, report) = tern_onnx::torchvision::import(&a.arch, &a.weights, a.input_size)?;
    let channels = model.config.in_shape[0];
    // torchvision's ImageNet normalisation (its models expect it); other channel counts get 0/1
    let (mean, std) = if channels == 3 {
        (vec![0.485f32, 0.456, 0.406], vec![0.229f32, 0.224, 0.225])
    } else {
        (vec![0.0; channels], vec![1.0; channels])
    };
    let meta = serde_json::json!({
        "normalize": {"mean": mean, "std": std},
        "import": {"format": "torchvision", "arch": a.arch, "weights": a.weights.display().to_string(), "report": report},
    });
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let ckpt = a.out.join("model.safetensors");
    tern_train::checkpoint::save(&ckpt, &mut model, &[], meta)?;
    let text = serde_json::to_string_pretty(&serde_json::json!({"model": model.config, "report": report}))?;
    tern_core::checkpoint::write_atomic(&a.out.join("import.json"), text.as_bytes())?;
    println!(
        "{} (width {}, {} classes, {}x{}x{} input): {} tensors loaded, {} skipped (BN counters) -> {}",
        a.arch,
        model.config.width,
        model.config.classes,
        channels,
        a.input_size,
        a.input_size,
        report.loaded,
        report.skipped.len(),
        ckpt.display()
    );
    Ok(())
}
