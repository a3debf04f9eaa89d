//! `tern import`: a model trained elsewhere into a tern checkpoint: torchvision ResNets saved
//! with `safetensors.torch.save_file(model.state_dict(), path)`, or ONNX graphs of tern's
//! architectures (tern's own exports among them).

use anyhow::Context;
use clap::Args;
use std::path::PathBuf;

/// Where imported weights come from.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// A torchvision state dict in safetensors (float32)
    Torchvision,
    /// An ONNX model (weights inside the file) of one of tern's architectures
    Onnx,
}

#[derive(Args, Debug)]
pub struct ImportArgs {
    /// What the weights file is
    #[arg(long, value_enum)]
    pub format: Format,
    /// torchvision: the architecture the state dict belongs to (ONNX: read off the graph)
    #[arg(long, value_parser = tern_onnx::torchvision::ARCHS)]
    pub arch: Option<String>,
    /// The weights: `safetensors.torch.save_file(model.state_dict(), "FILE.safetensors")`, or
    /// the .onnx file
    #[arg(long)]
    pub weights: PathBuf,
    /// torchvision: input side length the model will see [default: 224, ImageNet's] (ONNX:
    /// the graph's input shape)
    #[arg(long, value_parser = crate::common::parse_input_size)]
    pub input_size: Option<usize>,
    /// Output folder: DIR/model.safetensors (a tern checkpoint) and DIR/import.json
    #[arg(long)]
    pub out: PathBuf,
}

pub fn run(a: ImportArgs) -> anyhow::Result<()> {
    if a.format == Format::Onnx {
        return run_onnx(&a);
    }
    let Some(arch) = &a.arch else {
        anyhow::bail!("--format torchvision needs --arch (one of {:?})", tern_onnx::torchvision::ARCHS)
    };
    let input_size = a.input_size.unwrap_or(224);
    let (mut model, report) = tern_onnx::torchvision::import(arch, &a.weights, input_size)?;
    let channels = model.config.in_shape[0];
    // torchvision's ImageNet normalisation (its models expect it); other channel counts get 0/1
    let (mean, std) = if channels == 3 {
        (vec![0.485f32, 0.456, 0.406], vec![0.229f32, 0.224, 0.225])
    } else {
        (vec![0.0; channels], vec![1.0; channels])
    };
    let meta = serde_json::json!({
        "normalize": {"mean": mean, "std": std},
        "import": {"format": "torchvision", "arch": arch, "weights": a.weights.display().to_string(), "report": report},
    });
    let ckpt = write(&a.out, &mut model, meta, serde_json::to_value(&report)?)?;
    println!(
        "{} (width {}, {} classes, {}x{}x{} input): {} tensors loaded, {} skipped (BN counters) -> {}",
        arch,
        model.config.width,
        model.config.classes,
        channels,
        input_size,
        input_size,
        report.loaded,
        report.skipped.len(),
        ckpt.display()
    );
    Ok(())
}

/// Writes an imported model: OUT/model.safetensors (a tern checkpoint with `meta`) and
/// OUT/import.json (the model and the import's report). Returns the checkpoint's path.
fn write(
    out: &std::path::Path,
    model: &mut tern_train::Model,
    meta: serde_json::Value,
    report: serde_json::Value,
) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let ckpt = out.join("model.safetensors");
    tern_train::checkpoint::save(&ckpt, model, &[], meta)?;
    let text = serde_json::to_string_pretty(&serde_json::json!({"model": model.config, "report": report}))?;
    tern_core::checkpoint::write_atomic(&out.join("import.json"), text.as_bytes())?;
    Ok(ckpt)
}

/// `tern import --format onnx`: the graph matched onto one of tern's architectures.
fn run_onnx(a: &ImportArgs) -> anyhow::Result<()> {
    if a.arch.is_some() || a.input_size.is_some() {
        anyhow::bail!("--arch and --input-size are read off an ONNX graph: leave them out with --format onnx");
    }
    let (mut model, report) = tern_onnx::import::import(&a.weights)?;
    // the normalisation a tern export recorded; otherwise none (values as the graph takes them)
    let c = model.config.in_shape[0];
    let normalize =
        read_normalize(&a.weights)?.unwrap_or_else(|| serde_json::json!({"mean": vec![0.0; c], "std": vec![1.0; c]}));
    let mut meta = serde_json::json!({
        "normalize": normalize,
        "import": {"format": "onnx", "file": a.weights.display().to_string(), "report": report},
    });
    // ReLU thresholds (ThresholdedRelu nodes): a checkpoint holds one for the whole model
    let mut thresholds = Vec::new();
    tern_train::Layer::visit_leaves(&mut model.net, &mut |l| {
        if let Some(r) = l.as_any_mut().downcast_mut::<tern_train::layers::Relu>() {
            thresholds.push(r.threshold);
        }
    });
    if let Some(&t) = thresholds.iter().find(|&&t| t != 0.0) {
        if thresholds.iter().any(|&u| u != t) {
            anyhow::bail!(
                "{}: its ReLUs have different thresholds ({thresholds:?}); tern models have one",
                a.weights.display()
            );
        }
        meta["relu_threshold"] = t.into();
    }
    let ckpt = write(&a.out, &mut model, meta, serde_json::to_value(&report)?)?;
    println!(
        "{} (width {}, {} classes, {:?} input): {} nodes, {} tensors loaded -> {}",
        model.config.name,
        model.config.width,
        model.config.classes,
        model.config.in_shape,
        report.nodes,
        report.weights,
        ckpt.display()
    );
    Ok(())
}

/// The `tern.normalize` metadata of an ONNX file tern exported, if any.
fn read_normalize(path: &std::path::Path) -> anyhow::Result<Option<serde_json::Value>> {
    use prost::Message;
    let m = tern_onnx::proto::ModelProto::decode(std::fs::read(path)?.as_slice())?;
    let entry = m.metadata_props.iter().find(|e| e.key.as_deref() == Some("tern.normalize"));
    Ok(entry.and_then(|e| serde_json::from_str(e.value.as_deref()?).ok()))
}
