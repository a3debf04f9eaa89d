//! `tern models`: the list of models, or one model's layer-by-layer summary.

use crate::table::Table;
use clap::Args;
use tern_core::quant::TernaryConfig;
use tern_core::Rng;
use tern_train::models::{build, describe, MODEL_NAMES};
use tern_train::ModelConfig;

#[derive(Args, Debug)]
pub struct ModelsArgs {
    /// Model to summarise (omit to list them all)
    pub name: Option<String>,
    /// Input channels
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// Input side length [default: 224 for ImageNet-style ResNets and torchvision's VGGs, else 32]
    #[arg(long)]
    pub input_size: Option<usize>,
    /// Classes (the classifier's outputs)
    #[arg(long, default_value_t = 10)]
    pub classes: usize,
    /// Base channel width (0: the model's default)
    #[arg(long, default_value_t = 0)]
    pub width: usize,
    /// ImageNet-style ResNets: 3x3 stride-1 stem without max pooling, for small images
    #[arg(long)]
    pub small_input: bool,
    /// Print the summary as JSON
    #[arg(long)]
    pub json: bool,
    /// Cost with ternary weights (TWN rule) in every conv/linear layer
    #[arg(long)]
    pub ternary: bool,
    /// With --ternary: keep the first layer in full precision
    #[arg(long)]
    pub fp_first_layer: bool,
    /// With --ternary: keep the last layer in full precision
    #[arg(long)]
    pub fp_last_layer: bool,
}

pub fn run(a: ModelsArgs) -> anyhow::Result<()> {
    let Some(name) = a.name else {
        let mut t = Table::new(&["model", "description"]);
        for n in MODEL_NAMES {
            t.row(vec![n.to_string(), describe(n).to_string()]);
        }
        print!("{}", t.render());
        println!("\n`tern models NAME` prints a model's layers, output shapes, parameters and multiply-adds.");
        return Ok(());
    };
    let imagenet = (["resnet18", "resnet34", "resnet50", "resnet152"].contains(&name.as_str()) && !a.small_input)
        || name.ends_with("_bn");
    let side = a.input_size.unwrap_or(if imagenet { 224 } else { 32 });
    let cfg = ModelConfig {
        name,
        in_shape: [a.channels, side, side],
        classes: a.classes,
        width: a.width,
        small_input: a.small_input,
        spec: None,
    };
    let mut model = build(&cfg, &mut Rng::new(0))?;
    if a.ternary {
        model.set_ternary(Some(TernaryConfig::default()), a.fp_first_layer, a.fp_last_layer);
    }
    let rows = model.summary();
    let totals = tern_train::summary::totals(&rows);
    if a.json {
        println!("{}", serde_json::json!({"model": cfg, "layers": rows, "totals": totals}));
        return Ok(());
    }
    let mut t = Table::new(&["layer", "kind", "output", "params", "MACs", "weights"]);
    for r in &rows {
        let shape: Vec<String> = r.out_shape.iter().map(|d| d.to_string()).collect();
        let weights = match (r.macs, r.ternary) {
            (0, _) => String::new(),
            (_, true) => "ternary".into(),
            _ => "fp32".into(),
        };
        t.row(vec![
            r.name.clone(),
            r.kind.to_string(),
            shape.join("x"),
            r.params.to_string(),
            r.macs.to_string(),
            weights,
        ]);
    }
    print!("{}", t.render());
    println!(
        "\n{} for input {:?}, {} classes: {} parameters ({:.2} MB at FP32), {:.3} G multiply-adds per image",
        cfg.name,
        cfg.in_shape,
        cfg.classes,
        totals.params,
        totals.bytes_fp32 as f64 / 1e6,
        totals.macs as f64 / 1e9
    );
    if a.ternary {
        println!(
            "ternary: {:.1}% of the multiply-adds have a ternary weight (no multiplier); packed size {:.2} MB ({:.1}x smaller)",
            100.0 * totals.ternary_macs as f64 / totals.macs.max(1) as f64,
            totals.bytes_packed as f64 / 1e6,
            totals.bytes_fp32 as f64 / totals.bytes_packed.max(1) as f64
        );
    }
    Ok(())
}
