//! `tern sim`: run a workload through the DLAC cycle engine; per-layer table, CSV and a
//! Fig. 5-style plot (FLOP/cycle per layer against the no-skipping line).

use crate::plot::{line_charts, scatter_charts, Panel, Series};
use crate::progress::counter;
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use tern_core::checkpoint::write_atomic;
use tern_dlac::{
    simulate_workload, simulate_workload_masked, DlacConfig, Engine, OpResult, Orientation, Precision, Summary,
    Workload,
};

#[derive(Args, Debug)]
pub struct SimArgs {
    /// The profiler's workload.json, a CSV with layer, weight_zero_pct, ifm_zero_pct, k, crs, pq, or a
    /// SCALE-Sim topology CSV (optionally with weight_zero_pct and ifm_zero_pct columns)
    #[arg(long)]
    pub workload: PathBuf,
    /// A preset (dlac-fp32-train, dlac-fp16-infer; dlac-fp32-event: the event engine's fit;
    /// dlac-fp32-fmap: the event engine with input zeros drawn on the feature map and lowered;
    /// dlac-fp32-orient: that, with each op's larger output dimension along the 64 PE rows,
    /// the preset for prediction, run it with --engine event) or a TOML file
    #[arg(long, default_value = "dlac-fp32-train")]
    pub config: String,
    /// Only these passes (forward, backward, weight_grad; default: all in the workload)
    #[arg(long)]
    pub pass: Option<String>,
    /// Simulate on the real zeros of this masks.bin (`tern profile --masks`, same model as the
    /// workload) instead of Bernoulli masks drawn from the zero fractions
    #[arg(long, value_name = "MASKS_BIN")]
    pub masks: Option<PathBuf>,
    /// Seed of the Bernoulli operand masks
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// fast: the window-barrier throughput model on bit sets (ResNet-34, all passes, < 1 s);
    /// event: step-by-step, PE-by-PE event simulation with decoupled operand FIFOs, broadcast
    /// stalls and the FP pipeline's latency (slower: fewer tiles by default)
    #[arg(long, default_value = "fast", value_parser = ["fast", "event"])]
    pub engine: String,
    /// Tiles per op simulated cycle by cycle (the rest count as their mean; 0: all)
    /// [default: 64 with the fast engine, 8 with the event engine]
    #[arg(long)]
    pub max_tiles: Option<usize>,
    /// Output folder (layers.csv, summary.json, plots)
    #[arg(long, default_value = "runs/sim")]
    pub out: PathBuf,
    /// Design-space sweep: AXIS=V1,V2,... (repeatable; axes rows, cols, units, out_buffers,
    /// window, scan_rate, read_words_per_cycle, batch, weight_buffer_kib, ifm_buffer_kib,
    /// precision, orientation: fixed, fewest-dense-cycles, larger-along-longer); every
    /// combination of the values,
    /// starting from --config
    #[arg(long, value_name = "AXIS=VALUES", conflicts_with = "masks")]
    pub sweep: Vec<String>,
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
    let engine = Engine::parse(&a.engine).expect("clap checked the value");
    engine.check(&cfg)?;
    let tiles = a.max_tiles.unwrap_or(if engine == Engine::Event { 8 } else { 64 });
    let max_tiles = (tiles > 0).then_some(tiles);
    if !a.sweep.is_empty() {
        return sweep(&a, &cfg, engine, &w, max_tiles);
    }
    let t0 = std::time::Instant::now();
    let results = match &a.masks {
        Some(path) => simulate_workload_masked(&w, &cfg, engine, &tern_core::masks::read(path)?, path, max_tiles)?,
        None => simulate_workload(&w, &cfg, engine, a.seed, max_tiles),
    };
    let secs = t0.elapsed().as_secs_f64();
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    write_atomic(&a.out.join("layers.csv"), layers_csv(&results).as_bytes())?;
    print!("{}", layers_table(&results).render());
    let s = Summary::new(&cfg, engine, &results, &w.pt_layers);
    let mut json = serde_json::to_value(&s)?;
    json["workload"] = w.source.clone().into();
    json["operand_masks"] = match &a.masks {
        Some(p) => format!("real zeros from {} (image 0 of the profiled batch)", p.display()).into(),
        None => format!("Bernoulli draws from the zero fractions, seed {}", a.seed).into(),
    };
    json["simulation_seconds"] = secs.into();
    write_atomic(&a.out.join("summary.json"), serde_json::to_string_pretty(&json)?.as_bytes())?;
    println!(
        "{}: {} ops, {:.3e} cycles ({:.2}x fewer than without skipping), FLOP/cycle mean {:.0}, max {:.0} (dense peak {:.0}), {:.2} TFLOP/s at {} MHz, speedup {:.2}-{:.2}x; simulated in {:.2} s",
        cfg.name,
        s.ops,
        s.total_cycles,
        s.speedup,
        s.flops_per_cycle_mean_of_layers,
        s.flops_per_cycle_max,
        s.dense_flops_per_cycle,
        s.tflops_at_clock,
        cfg.clock_mhz,
        s.speedup_min,
        s.speedup_max,
        secs
    );
    println!("area {:.2} mm² (paper {:.2} mm²): {:.2} TFLOP/s/mm²", s.area_mm2, s.paper_area_mm2, s.tflops_per_mm2);
    println!(
        "energy {:.3} µJ per image ({:.2} pJ per useful FLOP, {:.2} per equivalent FLOP; {:.0}% saved by skipping; DRAM {:.0}%, buffers {:.0}%, PE-local {:.0}%, arithmetic {:.0}%)",
        s.energy_pj_per_image * 1e-6,
        s.pj_per_flop,
        s.pj_per_equivalent_flop,
        s.energy_saved_pct,
        100.0 * s.energy_breakdown_pj.dram / s.energy_pj_per_image.max(1e-30),
        100.0 * s.energy_breakdown_pj.buffers / s.energy_pj_per_image.max(1e-30),
        100.0 * s.energy_breakdown_pj.pe_local / s.energy_pj_per_image.max(1e-30),
        100.0 * s.energy_breakdown_pj.arithmetic / s.energy_pj_per_image.max(1e-30),
    );
    println!(
        "off-chip {:.2} MB per image: {} of {} ops memory-bound (*) at {} GB/s ({:.3e} cycles with memory); the simulated speed needs {:.1} GB/s",
        s.dram_bytes_per_image / 1e6,
        s.memory_bound_ops,
        s.ops,
        cfg.dram_gb_per_s,
        s.cycles_with_memory,
        s.dram_gb_per_s_needed
    );
    println!(
        "buffers to read every operand once: {:.0} KiB weights + {:.0} KiB IFM (this config: {} + {} KiB)",
        s.weight_buffer_kib_needed, s.ifm_buffer_kib_needed, cfg.weight_buffer_kib, cfg.ifm_buffer_kib
    );
    if s.pointwise_cycles > 0.0 {
        println!(
            "ptWiseOps of the forward program ({} BN/ReLU/add layers): {:.3e} cycles more, {:.0} FLOP/cycle with them",
            w.pt_layers.len(),
            s.pointwise_cycles,
            s.flops_per_cycle_with_pointwise
        );
    }
    if let (Some(mean), Some(max)) = (s.mean_abs_error_pct, s.max_abs_error_pct) {
        println!("against the reference FLOP/cycle: mean |error| {mean:.1}%, max {max:.1}%");
    }
    // one series per pass, x = the op's position within its pass (Fig. 5 has one pass)
    let mut passes: Vec<&str> = Vec::new();
    for r in &results {
        if !passes.contains(&r.op.pass.as_str()) {
            passes.push(&r.op.pass);
        }
    }
    let mut series = Vec::new();
    let mut widest = 1usize;
    for pass in &passes {
        let ops: Vec<&OpResult> = results.iter().filter(|r| r.op.pass == *pass).collect();
        widest = widest.max(ops.len());
        let name = if passes.len() == 1 { "DLAC (simulated)".to_string() } else { format!("{pass} (simulated)") };
        series.push(Series {
            name,
            points: ops.iter().enumerate().map(|(i, r)| ((i + 1) as f64, r.flops_per_cycle)).collect(),
        });
        let refs: Vec<(f64, f64)> = ops
            .iter()
            .enumerate()
            .filter_map(|(i, r)| r.op.reference_flops_per_cycle.map(|v| ((i + 1) as f64, v)))
            .collect();
        if !refs.is_empty() {
            series.push(Series {
                name: if passes.len() == 1 { "paper".into() } else { format!("{pass} (paper)") },
                points: refs,
            });
        }
    }
    let x = |i: usize| i as f64;
    series.push(Series {
        name: "no skipping (peak)".into(),
        points: vec![(1.0, cfg.dense_flops_per_cycle()), (x(widest), cfg.dense_flops_per_cycle())],
    });
    let svg = line_charts(&[Panel {
        title: format!("DLAC ({}) FLOP/cycle per mmOp", cfg.name),
        x_label: "layer (mmOp, in order)".into(),
        y_label: "equivalent FLOP/cycle".into(),
        series,
    }]);
    write_atomic(&a.out.join("flops_per_cycle.svg"), svg.as_bytes())?;
    println!("-> {} (layers.csv, summary.json, flops_per_cycle.svg)", a.out.display());
    Ok(())
}

/// DIR/layers.csv: one row per simulated op.
pub fn layers_csv(results: &[OpResult]) -> String {
    let mut csv = String::from("layer,pass,k,crs,pq,weight_zero_pct,ifm_zero_pct,cycles,flops_per_cycle,speedup,utilisation,buffer_reads,reference_flops_per_cycle,error_pct,dram_bytes,memory_cycles,memory_bound,loop_order,energy_pj,dense_energy_pj,first_operand_on\n");
    for r in results {
        let reference = r.op.reference_flops_per_cycle;
        csv.push_str(&format!(
            "{},{},{},{},{},{:.2},{:.2},{:.0},{:.2},{:.3},{:.4},{:.0},{},{},{:.0},{:.0},{},{},{:.1},{:.1},{}\n",
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
            r.buffer_reads,
            reference.map_or(String::new(), |v| format!("{v:.2}")),
            r.error_pct().map_or(String::new(), |v| format!("{v:.2}")),
            r.dram_bytes,
            r.memory_cycles,
            r.memory_bound,
            r.loop_order,
            r.energy.total,
            r.dense_energy_pj,
            r.first_operand_on
        ));
    }
    csv
}

/// The per-op table `tern sim` prints.
pub fn layers_table(results: &[OpResult]) -> Table {
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
        "reads/cycle",
        "DRAM KB",
        "µJ",
        "paper",
        "err%",
    ]);
    for r in results {
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
            format!("{:.0}", r.buffer_reads / r.cycles.max(1.0)),
            format!("{:.0}{}", r.dram_bytes / 1e3, if r.memory_bound { "*" } else { "" }),
            format!("{:.2}", r.energy.total * 1e-6),
            r.op.reference_flops_per_cycle.map_or("-".into(), |v| format!("{v:.0}")),
            r.error_pct().map_or("-".into(), |v| format!("{v:+.1}")),
        ]);
    }
    t
}

const SWEEP_AXES: [&str; 12] = [
    "rows",
    "cols",
    "units",
    "out_buffers",
    "window",
    "scan_rate",
    "read_words_per_cycle",
    "batch",
    "weight_buffer_kib",
    "ifm_buffer_kib",
    "precision",
    "orientation",
];

/// Parses `--sweep AXIS=V1,V2` flags into (axis, values).
fn parse_sweep(flags: &[String]) -> anyhow::Result<Vec<(String, Vec<String>)>> {
    let mut axes: Vec<(String, Vec<String>)> = Vec::new();
    for f in flags {
        let (axis, values) = f.split_once('=').ok_or_else(|| {
            anyhow::anyhow!("invalid value `{f}` for --sweep: expected AXIS=V1,V2,... (axes: {SWEEP_AXES:?})")
        })?;
        if !SWEEP_AXES.contains(&axis) {
            anyhow::bail!("invalid value `{f}` for --sweep: unknown axis `{axis}` (axes: {SWEEP_AXES:?})");
        }
        if axes.iter().any(|(a, _)| a == axis) {
            anyhow::bail!("invalid value `{f}` for --sweep: axis `{axis}` given twice");
        }
        let vals: Vec<String> = values.split(',').map(|v| v.trim().to_string()).filter(|v| !v.is_empty()).collect();
        for v in &vals {
            let (ok, expected) = match axis {
                "precision" => (matches!(v.as_str(), "fp32" | "fp16"), "precision (fp32 or fp16)".to_string()),
                "orientation" => (
                    orientation(v).is_some(),
                    format!("orientation ({})", Orientation::ALL.map(|o| o.name()).join(", ")),
                ),
                _ => (v.parse::<usize>().is_ok(), "whole number".to_string()),
            };
            if !ok {
                anyhow::bail!("invalid value `{f}` for --sweep: `{v}` is not a {expected}");
            }
        }
        if vals.is_empty() {
            anyhow::bail!("invalid value `{f}` for --sweep: no values");
        }
        axes.push((axis.to_string(), vals));
    }
    Ok(axes)
}

/// An orientation rule by its name (as in config files).
fn orientation(name: &str) -> Option<Orientation> {
    Orientation::ALL.into_iter().find(|o| o.name() == name)
}

fn with_axis(cfg: &DlacConfig, axis: &str, v: &str) -> DlacConfig {
    let mut c = cfg.clone();
    let n = || v.parse::<usize>().unwrap_or(0);
    match axis {
        "rows" => c.rows = n(),
        "cols" => c.cols = n(),
        "units" => c.units = n(),
        "out_buffers" => c.out_buffers = n(),
        "window" => c.window = n(),
        "scan_rate" => c.scan_rate = n(),
        "read_words_per_cycle" => c.read_words_per_cycle = n(),
        "batch" => c.batch = n(),
        "weight_buffer_kib" => c.weight_buffer_kib = n(),
        "ifm_buffer_kib" => c.ifm_buffer_kib = n(),
        "orientation" => c.orientation = orientation(v).unwrap_or_default(),
        _ => c.precision = if v == "fp16" { Precision::Fp16 } else { Precision::Fp32 },
    }
    c
}

/// `tern sim --sweep`: every combination of the swept values, one summary each.
fn sweep(a: &SimArgs, base: &DlacConfig, engine: Engine, w: &Workload, max_tiles: Option<usize>) -> anyhow::Result<()> {
    let axes = parse_sweep(&a.sweep)?;
    let mut points = vec![(base.clone(), Vec::<String>::new())];
    for (axis, vals) in &axes {
        points = points
            .iter()
            .flat_map(|(c, label)| {
                vals.iter().map(move |v| {
                    let mut l = label.clone();
                    l.push(format!("{axis}={v}"));
                    (with_axis(c, axis, v), l)
                })
            })
            .collect();
    }
    let (valid, invalid): (Vec<_>, Vec<_>) = points.into_iter().partition(|(c, _)| c.validate().is_ok());
    if valid.is_empty() {
        anyhow::bail!(
            "invalid value for --sweep: no combination is a valid config (e.g. {:?})",
            invalid[0].0.validate().err()
        );
    }
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    let bar = counter("sweep", valid.len() as u64, "configs");
    let mut rows = Vec::new();
    for (c, label) in &valid {
        let mut c = c.clone();
        c.name = label.join(" ");
        let s = Summary::new(&c, engine, &simulate_workload(w, &c, engine, a.seed, max_tiles), &w.pt_layers);
        bar.inc(1);
        rows.push(s);
    }
    bar.finish_and_clear();
    let mut csv = String::from("config,rows,cols,units,out_buffers,window,scan_rate,precision,pes,flops_per_cycle,tflops,speedup,area_mm2,tflops_per_mm2,dram_bytes_per_image,memory_bound_ops,energy_pj_per_image,pj_per_flop\n");
    let mut t = Table::new(&[
        "config",
        "PEs",
        "units",
        "FLOP/cycle",
        "TFLOP/s",
        "speedup",
        "area mm²",
        "TFLOP/s/mm²",
        "DRAM MB/img",
        "mem-bound",
        "µJ/img",
    ]);
    for s in &rows {
        let c = &s.config;
        csv.push_str(&format!(
            "{},{},{},{},{},{},{},{:?},{},{:.2},{:.4},{:.4},{:.4},{:.4},{:.0},{},{:.1},{:.4}\n",
            c.name,
            c.rows,
            c.cols,
            c.units,
            c.out_buffers,
            c.window,
            c.scan_rate,
            c.precision,
            c.rows * c.cols,
            s.flops_per_cycle_overall,
            s.tflops_at_clock,
            s.speedup,
            s.area_mm2,
            s.tflops_per_mm2,
            s.dram_bytes_per_image,
            s.memory_bound_ops,
            s.energy_pj_per_image,
            s.pj_per_flop
        ));
        t.row(vec![
            c.name.clone(),
            (c.rows * c.cols).to_string(),
            c.total_units().to_string(),
            format!("{:.0}", s.flops_per_cycle_overall),
            format!("{:.3}", s.tflops_at_clock),
            format!("{:.2}", s.speedup),
            format!("{:.3}", s.area_mm2),
            format!("{:.3}", s.tflops_per_mm2),
            format!("{:.1}", s.dram_bytes_per_image / 1e6),
            format!("{}/{}", s.memory_bound_ops, s.ops),
            format!("{:.0}", s.energy_pj_per_image * 1e-6),
        ]);
    }
    write_atomic(&a.out.join("sweep.csv"), csv.as_bytes())?;
    print!("{}", t.render());
    if !invalid.is_empty() {
        println!(
            "skipped {} invalid combination(s), e.g. {}: {}",
            invalid.len(),
            invalid[0].1.join(" "),
            invalid[0].0.validate().unwrap_err()
        );
    }
    let best = rows.iter().max_by(|x, y| x.tflops_per_mm2.total_cmp(&y.tflops_per_mm2)).expect("one config");
    println!(
        "densest: {} at {:.3} TFLOP/s/mm² ({:.3} TFLOP/s on {:.3} mm²)",
        best.config.name, best.tflops_per_mm2, best.tflops_at_clock, best.area_mm2
    );
    let by_precision = |f: &dyn Fn(&Summary) -> (f64, f64)| -> Vec<Series> {
        [Precision::Fp32, Precision::Fp16]
            .iter()
            .filter_map(|p| {
                let pts: Vec<(f64, f64)> = rows.iter().filter(|s| s.config.precision == *p).map(f).collect();
                (!pts.is_empty()).then(|| Series { name: format!("{p:?}").to_lowercase(), points: pts })
            })
            .collect()
    };
    let svg = scatter_charts(&[
        Panel {
            title: "Performance".into(),
            x_label: "area (mm²)".into(),
            y_label: "TFLOP/s at the clock".into(),
            series: by_precision(&|s| (s.area_mm2, s.tflops_at_clock)),
        },
        Panel {
            title: "Performance density".into(),
            x_label: "area (mm²)".into(),
            y_label: "TFLOP/s/mm²".into(),
            series: by_precision(&|s| (s.area_mm2, s.tflops_per_mm2)),
        },
    ]);
    write_atomic(&a.out.join("sweep.svg"), svg.as_bytes())?;
    println!("-> {} (sweep.csv, sweep.svg)", a.out.display());
    Ok(())
}
