//! `tern profile`: exact non-zero operand counts of every mmOp layer in the forward, backward
//! and weight-gradient passes (the paper's Table 1 and Fig. 1), plus the simulator workload.

use crate::common::DataArgs;
use crate::plot::{bar_chart, line_charts, Bar, Panel, Series};
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tern_core::checkpoint::write_atomic;
use tern_core::masks::{MaskRecord, Operand};
use tern_core::quant::TernaryConfig;
use tern_core::{Backend, Rng, Tensor};
use tern_data::{Augment, BatchIter, LoaderConfig, Normalize};
use tern_train::layer::Ctx;
use tern_train::profile::{LayerProfile, Profiler, PASSES};
use tern_train::{Model, ModelConfig};

#[derive(Args, Debug)]
pub struct ProfileArgs {
    /// A checkpoint written by `tern train` (its recipe decides which layers are ternary)
    #[arg(long, conflicts_with_all = ["model", "input_size", "channels", "classes", "ternary", "relu_threshold"])]
    pub checkpoint: Option<PathBuf>,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// Profile a freshly initialised model on random images instead (shapes only: the
    /// activation and gradient zeros of random data are not those of a trained network)
    #[arg(long)]
    pub model: Option<String>,
    /// With --model: input side length
    #[arg(long, default_value_t = 224)]
    pub input_size: usize,
    /// With --model: input channels
    #[arg(long, default_value_t = 3)]
    pub channels: usize,
    /// With --model: classes
    #[arg(long, default_value_t = 1000)]
    pub classes: usize,
    /// With --model: ternary weights (TWN rule) except the first layer
    #[arg(long)]
    pub ternary: bool,
    /// With --model: ReLU threshold (the paper uses 0.01)
    #[arg(long, default_value_t = 0.0)]
    pub relu_threshold: f32,
    /// Batches to profile (counts accumulate over them)
    #[arg(long, default_value_t = 4)]
    pub batches: usize,
    /// Images per profiled batch
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Seed of the sample order (or of the random model and images)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Output folder (sparsity.csv/.json, table.txt, workload.json, figures)
    #[arg(long, default_value = "runs/profile")]
    pub out: PathBuf,
    /// Also write the zero masks of every mmOp's operands in the last batch to DIR/masks.bin
    /// (format: tern-core's `masks` module)
    #[arg(long)]
    pub masks: bool,
    /// Profile with the paper's GradUpdate: the correctly classified samples get zero error
    /// (as `tern train --skip-correct` trains), so their backward and weight-gradient work
    /// counts only where the zeros survive (batch-statistics BN spreads them back)
    #[arg(long)]
    pub skip_correct: bool,
}

pub fn run(a: ProfileArgs) -> anyhow::Result<()> {
    if a.batches == 0 || a.batch == 0 {
        anyhow::bail!("invalid value for --batches/--batch: must be at least 1");
    }
    let (backend, _) = a.device.backend()?;
    let be = backend.as_ref();
    let prof = RefCell::new(Profiler { capture: a.masks, ..Default::default() });
    let source;
    let mut model;
    if let Some(path) = &a.checkpoint {
        let (m, c) = tern_train::checkpoint::load_model(path)?;
        model = m;
        model.to_backend(be);
        let normalize: Normalize = serde_json::from_value(c.meta["normalize"].clone())
            .with_context(|| format!("{}: no `normalize` metadata", path.display()))?;
        let data = a.data.load()?;
        crate::common::check_data_fits(path, &model.config, &data, &a.data.data)?;
        let cfg = LoaderConfig {
            batch_size: a.batch,
            shuffle: true,
            seed: a.seed,
            augment: Augment::default(),
            normalize,
            input_shape: model.config.in_shape,
            prefetch: 2,
        };
        for b in BatchIter::new(Arc::new(data.train.clone()), cfg, 0, false).take(a.batches) {
            let b = b?;
            step(&mut model, be, &prof, &b.x, &b.labels, a.skip_correct);
        }
        source = format!(
            "{} on {} training images ({} batches of {}){}",
            path.display(),
            data.name,
            a.batches,
            a.batch,
            if a.skip_correct { ", GradUpdate (correct samples get zero error)" } else { "" }
        );
    } else {
        let name = a.model.clone().ok_or_else(|| anyhow::anyhow!("pass --checkpoint PATH or --model NAME"))?;
        let cfg = ModelConfig {
            name,
            in_shape: [a.channels, a.input_size, a.input_size],
            classes: a.classes,
            width: 0,
            small_input: false,
            spec: None,
        };
        let mut rng = Rng::new(a.seed);
        model = tern_train::models::build(&cfg, &mut rng)?;
        if a.ternary {
            model.set_ternary(Some(TernaryConfig::default()), true, false);
        }
        model.set_relu(a.relu_threshold, 0.0);
        model.to_backend(be);
        for _ in 0..a.batches {
            let x = Tensor::randn(&[a.batch, a.channels, a.input_size, a.input_size], 1.0, &mut rng);
            let labels: Vec<u32> = (0..a.batch).map(|_| rng.below(a.classes) as u32).collect();
            step(&mut model, be, &prof, &x, &labels, a.skip_correct);
        }
        source = format!(
            "freshly initialised {}{} on random N(0,1) images {:?} ({} batches of {}){}: shapes are real, zeros are not those of a trained network",
            cfg.name,
            if a.ternary { " (ternary, FP first layer)" } else { "" },
            cfg.in_shape,
            a.batches,
            a.batch,
            if a.skip_correct { ", GradUpdate" } else { "" }
        );
    }
    let p = prof.into_inner();
    write_outputs(&a.out, &p, &source, &model.config, &model.summary())?;
    if a.masks {
        let mut recs = Vec::new();
        for o in &p.operands {
            let g = &o.geometry;
            recs.push(
                MaskRecord::from_values(&o.name, Operand::Weight, &[g.c_out, g.c_in, g.k_h, g.k_w], &o.w)
                    .with_stride_pad(g.stride, g.pad),
            );
            recs.push(MaskRecord::from_values(&o.name, Operand::Input, &[g.n, g.c_in, g.h, g.w], &o.x));
            if let Some(dy) = &o.dy {
                recs.push(MaskRecord::from_values(
                    &o.name,
                    Operand::OutputGrad,
                    &[g.n, g.c_out, g.h_out(), g.w_out()],
                    dy,
                ));
            }
        }
        let path = a.out.join("masks.bin");
        tern_core::masks::write(&path, &recs)?;
        println!("zero masks of the last batch ({} records) -> {}", recs.len(), path.display());
    }
    Ok(())
}

/// One forward and backward pass in train mode with the profiler on; no weight update.
/// One profiled training step (forward, loss, backward; no update).
fn step(model: &mut Model, be: &dyn Backend, prof: &RefCell<Profiler>, x: &Tensor, labels: &[u32], skip_correct: bool) {
    let mut ctx = Ctx::new(be, true);
    ctx.profiler = Some(prof);
    let (x, labels) = (be.upload(x), be.upload(&Tensor::from_u32(&[labels.len()], labels)));
    let logits = model.forward(&ctx, &x);
    let mut d = be.alloc(logits.shape());
    let mut stats = be.zeros(&[tern_core::loss_stats::LEN]);
    be.softmax_cross_entropy(&logits, &labels, 1, skip_correct, Some(&mut d), &mut stats);
    model.backward(&ctx, &d);
    model.clear_cache();
}

fn write_outputs(
    out: &Path,
    p: &Profiler,
    source: &str,
    model: &ModelConfig,
    rows: &[tern_train::layer::SummaryRow],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // sparsity.csv: one row per layer and pass
    let mut csv = String::from(
        "layer,kind,pass,k,crs,pq,macs,nonzero_macs,nonzero_frac,weight_zero_frac,input_zero_frac,grad_zero_frac,ms\n",
    );
    // passes that never ran (the first layer's input gradient) get no row: count only what runs
    for l in &p.layers {
        for (i, pass) in PASSES.iter().enumerate().filter(|&(i, _)| Profiler::ran(l, i)) {
            csv.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6},{:.6},{:.3}\n",
                l.name,
                l.kind,
                pass,
                l.k,
                l.crs,
                l.pq,
                l.macs[i],
                l.nonzero[i],
                l.nonzero_frac(i),
                l.weight_zero_frac(),
                l.input_zero_frac(),
                l.grad_zero_frac(),
                l.ms[i]
            ));
        }
    }
    write_atomic(&out.join("sparsity.csv"), csv.as_bytes())?;

    // The Table 1-style table.
    let total_ms: f64 = p.layers.iter().map(|l| l.ms.iter().sum::<f64>()).sum();
    let mut t = Table::new(&[
        "#",
        "layer",
        "nz FWD",
        "nz BWD",
        "nz GradUpd",
        "ms FWD",
        "ms BWD",
        "ms GradUpd",
        "ms total",
        "share %",
        "best-case ms",
    ]);
    let mut best_total = 0.0;
    let frac = |l: &LayerProfile, k: usize| {
        if Profiler::ran(l, k) {
            format!("{:.2}", l.nonzero_frac(k))
        } else {
            "-".into()
        }
    };
    for (i, l) in p.layers.iter().enumerate() {
        let best: f64 = (0..3).filter(|&k| Profiler::ran(l, k)).map(|k| l.ms[k] * l.nonzero_frac(k)).sum();
        best_total += best;
        let tot: f64 = l.ms.iter().sum();
        t.row(vec![
            (i + 1).to_string(),
            l.name.clone(),
            frac(l, 0),
            frac(l, 1),
            frac(l, 2),
            format!("{:.1}", l.ms[0]),
            format!("{:.1}", l.ms[1]),
            format!("{:.1}", l.ms[2]),
            format!("{tot:.1}"),
            format!("{:.2}", 100.0 * tot / total_ms.max(1e-12)),
            format!("{best:.1}"),
        ]);
    }
    let totals = p.totals();
    let pass_ms: Vec<f64> = (0..3).map(|k| p.layers.iter().map(|l| l.ms[k]).sum()).collect();
    t.row(vec![
        "all".into(),
        String::new(),
        format!("{:.2}", totals[0]),
        format!("{:.2}", totals[1]),
        format!("{:.2}", totals[2]),
        format!("{:.1}", pass_ms[0]),
        format!("{:.1}", pass_ms[1]),
        format!("{:.1}", pass_ms[2]),
        format!("{total_ms:.1}"),
        "100.00".into(),
        format!("{best_total:.1}"),
    ]);
    let table = t.render();
    print!("{table}");
    println!(
        "non-zero fraction of the multiply-adds: forward {:.3}, backward {:.3}, weight gradient {:.3} (paper, ResNet-34 on ImageNet: 0.16 / 0.37 / 0.37)",
        totals[0], totals[1], totals[2]
    );
    println!("source: {source}");
    write_atomic(&out.join("table.txt"), format!("{table}\nsource: {source}\n").as_bytes())?;

    let json = serde_json::json!({
        "source": source,
        "model": model,
        "totals": {"forward": totals[0], "backward": totals[1], "weight_grad": totals[2]},
        "time_ms": {"forward": pass_ms[0], "backward": pass_ms[1], "weight_grad": pass_ms[2], "best_case_total": best_total, "total": total_ms},
        "layers": p.layers.iter().map(|l| serde_json::json!({
            "name": l.name, "kind": l.kind, "k": l.k, "crs": l.crs, "pq": l.pq,
            "macs": l.macs, "nonzero_macs": l.nonzero,
            "nonzero_frac": [l.nonzero_frac(0), l.nonzero_frac(1), l.nonzero_frac(2)],
            "weight_zero_frac": l.weight_zero_frac(), "input_zero_frac": l.input_zero_frac(), "grad_zero_frac": l.grad_zero_frac(),
            "ms": l.ms,
        })).collect::<Vec<_>>(),
    });
    write_atomic(&out.join("sparsity.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;

    // workload for the simulator: per mmOp and pass, the shapes and both operands' zero fractions
    let mut wl = Vec::new();
    let mut wcsv = String::from("layer,pass,k,crs,pq,a_zero_frac,b_zero_frac,nonzero_frac\n");
    for l in &p.layers {
        for (i, pass) in PASSES.iter().enumerate().filter(|&(i, _)| Profiler::ran(l, i)) {
            let (a_name, a, b_name, b) = match i {
                0 => ("weight", l.weight_zero_frac(), "input", l.input_zero_frac()),
                1 => ("weight", l.weight_zero_frac(), "output_grad", l.grad_zero_frac()),
                _ => ("output_grad", l.grad_zero_frac(), "input", l.input_zero_frac()),
            };
            // images profiled = forward multiply-adds over one image's; the input feature map
            // per image is the simulator's DRAM size of the lowered (im2col) operand
            let images = l.macs[0] / (l.k * l.crs * l.pq).max(1) as u64;
            let ifm_elems = l.input_values / images.max(1);
            wl.push(serde_json::json!({
                "name": l.name, "pass": pass, "k": l.k, "crs": l.crs, "pq": l.pq,
                "operands": [a_name, b_name], "zero_frac": [a, b], "nonzero_frac": l.nonzero_frac(i),
                "ifm_elems": ifm_elems,
            }));
            wcsv.push_str(&format!(
                "{},{pass},{},{},{},{a:.6},{b:.6},{:.6}\n",
                l.name,
                l.k,
                l.crs,
                l.pq,
                l.nonzero_frac(i)
            ));
        }
    }
    // the forward program's point-wise layers, run as ptWiseOps on DLAC's output buffers
    let pt: Vec<serde_json::Value> = rows
        .iter()
        .filter(|r| matches!(r.kind, "bn" | "relu" | "add"))
        .map(|r| serde_json::json!({"name": r.name, "kind": r.kind, "elements": r.out_shape.iter().product::<usize>()}))
        .collect();
    let workload =
        serde_json::json!({"format": "tern-workload-v1", "source": source, "model": model, "mm_ops": wl, "pt_ops": pt});
    write_atomic(&out.join("workload.json"), serde_json::to_string_pretty(&workload)?.as_bytes())?;
    write_atomic(&out.join("workload.csv"), wcsv.as_bytes())?;

    // Fig. 1 and the per-layer fractions
    let fig1 = bar_chart(
        "Fraction of multiply-adds on non-zero operands",
        "non-zero fraction",
        &[
            Bar { label: "forward (inference)".into(), value: totals[0], error: None },
            Bar { label: "backward".into(), value: totals[1], error: None },
            Bar { label: "weight gradient".into(), value: totals[2], error: None },
        ],
        Some(0.0),
    );
    write_atomic(&out.join("fig1.svg"), fig1.as_bytes())?;
    let series = |k: usize, name: &str| Series {
        name: name.into(),
        points: p
            .layers
            .iter()
            .enumerate()
            .filter(|(_, l)| Profiler::ran(l, k))
            .map(|(i, l)| ((i + 1) as f64, l.nonzero_frac(k)))
            .collect(),
    };
    let layers = line_charts(&[Panel {
        title: "Non-zero fraction per layer".into(),
        x_label: "mmOp layer".into(),
        y_label: "non-zero fraction".into(),
        series: vec![series(0, "forward"), series(1, "backward"), series(2, "weight gradient")],
    }]);
    write_atomic(&out.join("layers.svg"), layers.as_bytes())?;
    println!("-> {} (sparsity.csv, sparsity.json, table.txt, workload.json/.csv, fig1.svg, layers.svg)", out.display());
    Ok(())
}
