//! `tern sim`: run a workload through the DLAC cycle engine; per-layer table, CSV and a
//! Fig. 5-style plot (FLOP/cycle per layer against the no-skipping line).

use crate::plot::{line_charts, Panel, Series};
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use rayon::prelude::*;
use std::path::PathBuf;
use tern_core::checkpoint::write_atomic;
use tern_dlac::{simulate_op, DlacConfig, Workload};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// The profiler's workload.json, or a CSV with layer, weight_zero_pct, ifm_zero_pct, k, crs, pq
    #[arg(long)]
    pub workload: PathBuf,
    /// A preset (dlac-fp32-train, dlac-fp16-infer) or a TOML file
    #[arg(long, default_value = "dlac-fp32-train")]
    pub config: String,
    /// Only these passes (forward, backward, weight_grad; default: all in the workload)
    #[arg(long)]
    pub pass: Option<String>,
    /// Seed of the Bernoulli operand masks
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Tiles per op simulated cycle by cycle (the rest count as their mean; 0: all)
    #[arg(long, default_value_t = 64)]
    pub max_tiles: usize,
    #[arg(long, default_value = "runs/sim")]
    pub out: PathBuf,
}

pub fn run(a: SimArgs) -> anyhow::Result<()> {
    let cfg = DlacConfig::load(&a.config)?;
    let mut w = Workload::load(&a.workload)?;
    if let Some(p) = &a.pass {
        w.ops.retain(|o| &o.pass == p);
        if w.ops.is_empty() {
            anyhow::bail!("invalid value for --pass: no `{p}` ops in {}", a.workload.display());
        }
    }
    let max_tiles = (a.max_tiles > 0).then_some(a.max_tiles);
    let t0 = std::time::Instant::now();
    let results: Vec<_> = w
        .ops
        .par_iter()
        .enumerate()
        .map(|(i, op)| simulate_op(op, &cfg, a.seed.wrapping_add(i as u64), max_tiles))
        .collect();
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let mut csv = String::from("layer,pass,k,crs,pq,weight_zero_pct,ifm_zero_pct,cycles,flops_per_cycle,speedup,utilisation,reference_flops_per_cycle,error_pct\n");
    let mut t = Table::new(&[
        "layer",
        "pass",
        "K",
        "CRS",
        "PQ",
        "zero% row",
        "zero% col",
        "cycles",
        "FLOP/cycle",
        "speedup",
        "util%",
        "paper",
        "err%",
    ]);
    let mut errs = Vec::new();
    for (op, r) in w.ops.iter().zip(&results) {
        let reference = op.reference_flops_per_cycle;
        let err = reference.map(|p| 100.0 * (r.flops_per_cycle - p) / p);
        if let Some(e) = err {
            errs.push(e.abs());
        }
        csv.push_str(&format!(
            "{},{},{},{},{},{:.2},{:.2},{:.0},{:.2},{:.3},{:.4},{},{}\n",
            r.op.name,
            r.op.pass,
            r.op.k,
            r.op.crs,
            r.op.pq,
            100.0 * r.op.row_zero,
            100.0 * r.op.col_zero,
            r.cycles,
            r.flops_per_cycle,
            r.speedup,
            r.utilisation,
            reference.map_or(String::new(), |v| format!("{v:.2}")),
            err.map_or(String::new(), |v| format!("{v:.2}"))
        ));
        t.row(vec![
            r.op.name.clone(),
            r.op.pass.clone(),
            r.op.k.to_string(),
            r.op.crs.to_string(),
            r.op.pq.to_string(),
            format!("{:.1}", 100.0 * r.op.row_zero),
            format!("{:.1}", 100.0 * r.op.col_zero),
            format!("{:.0}", r.cycles),
            format!("{:.0}", r.flops_per_cycle),
            format!("{:.2}", r.speedup),
            format!("{:.1}", 100.0 * r.utilisation),
            reference.map_or("-".into(), |v| format!("{v:.0}")),
            err.map_or("-".into(), |v| format!("{v:+.1}")),
        ]);
    }
    write_atomic(&a.out.join("layers.csv"), csv.as_bytes())?;
    print!("{}", t.render());
    let flops: f64 = w.ops.iter().map(|o| 2.0 * o.macs() as f64).sum();
    let cycles: f64 = results.iter().map(|r| r.cycles).sum();
    let dense: f64 = results.iter().map(|r| r.dense_cycles).sum();
    let per_layer: Vec<f64> = results.iter().map(|r| r.flops_per_cycle).collect();
    let mean = per_layer.iter().sum::<f64>() / per_layer.len().max(1) as f64;
    let max = per_layer.iter().cloned().fold(0.0, f64::max);
    let (smin, smax) = results.iter().fold((f64::MAX, 0.0f64), |(lo, hi), r| (lo.min(r.speedup), hi.max(r.speedup)));
    let tflops = flops / cycles * cfg.clock_mhz * 1e6 / 1e12;
    let summary = serde_json::json!({
        "config": cfg, "workload": w.source, "ops": results.len(),
        "total_cycles": cycles, "dense_cycles": dense, "speedup": dense / cycles,
        "flops_per_cycle_overall": flops / cycles, "flops_per_cycle_mean_of_layers": mean, "flops_per_cycle_max": max,
        "speedup_min": smin, "speedup_max": smax, "tflops_at_clock": tflops,
        "dense_flops_per_cycle": cfg.dense_flops_per_cycle(),
        "mean_abs_error_pct": (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64),
        "max_abs_error_pct": (!errs.is_empty()).then(|| errs.iter().cloned().fold(0.0, f64::max)),
        "simulation_seconds": secs,
    });
    write_atomic(&a.out.join("summary.json"), serde_json::to_string_pretty(&summary)?.as_bytes())?;
    println!(
        "{}: {} ops, {:.3e} cycles ({:.2}x fewer than without skipping), FLOP/cycle mean {:.0}, max {:.0} (dense peak {:.0}), {:.2} TFLOP/s at {} MHz, speedup {:.2}-{:.2}x; simulated in {:.2} s",
        cfg.name,
        results.len(),
        cycles,
        dense / cycles,
        mean,
        max,
        cfg.dense_flops_per_cycle(),
        tflops,
        cfg.clock_mhz,
        smin,
        smax,
        secs
    );
    if !errs.is_empty() {
        println!(
            "against the reference FLOP/cycle: mean |error| {:.1}%, max {:.1}%",
            errs.iter().sum::<f64>() / errs.len() as f64,
            errs.iter().cloned().fold(0.0, f64::max)
        );
    }
    let x = |i: usize| (i + 1) as f64;
    let mut series = vec![Series {
        name: "DLAC (simulated)".into(),
        points: per_layer.iter().enumerate().map(|(i, &v)| (x(i), v)).collect(),
    }];
    if w.ops.iter().any(|o| o.reference_flops_per_cycle.is_some()) {
        series.push(Series {
            name: "paper".into(),
            points: w
                .ops
                .iter()
                .enumerate()
                .filter_map(|(i, o)| o.reference_flops_per_cycle.map(|v| (x(i), v)))
                .collect(),
        });
    }
    series.push(Series {
        name: "no skipping (peak)".into(),
        points: vec![(1.0, cfg.dense_flops_per_cycle()), (x(results.len() - 1), cfg.dense_flops_per_cycle())],
    });
    let svg = line_charts(&[Panel {
        title: format!("DLAC ({}) FLOP/cycle per mmOp", cfg.name),
        x_label: "mmOp (workload order)".into(),
        y_label: "equivalent FLOP/cycle".into(),
        series,
    }]);
    write_atomic(&a.out.join("flops_per_cycle.svg"), svg.as_bytes())?;
    println!("-> {} (layers.csv, summary.json, flops_per_cycle.svg)", a.out.display());
    Ok(())
}
