//! `tern infer`: a checkpoint on tern's CPU inference engine (u8 activations, ternary or s8
//! weights, fused epilogues, VNNI kernels): its accuracy beside the FP32 model's on the
//! same test images, how often the two agree, and batch-1 latency of both.

use crate::common::DataArgs;
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tern_data::{Augment, BatchIter, Normalize};
use tern_infer::plan::{FloatPlan, Plan, Workspace};

#[derive(Args, Debug)]
pub struct InferArgs {
    /// A checkpoint written by `tern train` (DIR/model.safetensors)
    #[arg(long)]
    pub checkpoint: PathBuf,
    #[command(flatten)]
    pub data: DataArgs,
    /// Training images whose activations set the u8 scales (the first N)
    #[arg(long, default_value_t = 256)]
    pub calibrate: usize,
    /// Evaluate on the first N test images [default: all]
    #[arg(long)]
    pub limit: Option<usize>,
    /// Also time batch-1 inference over this many test images, the u8 engine against tern's
    /// FP32 forward (0: no timing)
    #[arg(long, default_value_t = 0)]
    pub bench: usize,
    /// Print the results as one JSON object only
    #[arg(long)]
    pub json: bool,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// Milliseconds per call of `f` (median of `reps` after two warm-up calls).
fn median_ms(reps: usize, mut f: impl FnMut(usize)) -> f64 {
    f(0);
    f(1);
    let mut t: Vec<f64> = (0..reps)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

pub fn run(a: InferArgs) -> anyhow::Result<()> {
    if a.calibrate == 0 {
        anyhow::bail!("invalid value for --calibrate: must be at least 1");
    }
    let (mut model, c) = tern_train::checkpoint::load_model(&a.checkpoint)?;
    let normalize: Normalize = serde_json::from_value(c.meta["normalize"].clone())
        .with_context(|| format!("{}: no `normalize` metadata", a.checkpoint.display()))?;
    let data = a.data.load()?;
    crate::common::check_data_fits(&a.checkpoint, &model.config, &data, &a.data.data)?;
    let shape = model.config.in_shape;
    let per = shape.iter().product::<usize>();
    let batches = |ds: Arc<tern_data::Dataset>| {
        let cfg = tern_train::trainer::loader(&normalize, shape, 256, 0, false, Augment::default());
        BatchIter::new(ds, cfg, 0, false)
    };

    let float = FloatPlan::of(&mut model)?;
    let mut calib = Vec::new();
    let n_cal = a.calibrate.min(data.train.len());
    for b in batches(Arc::new(data.train.take(n_cal))) {
        calib.extend_from_slice(&b?.x.host_values());
    }
    let t = Instant::now();
    let plan = Plan::quantise(&float, &calib, n_cal)?;
    let plan_ms = t.elapsed().as_secs_f64() * 1e3;

    let test = Arc::new(match a.limit {
        Some(n) => data.test.take(n),
        None => data.test.clone(),
    });
    let bar = (!a.json).then(|| crate::progress::counter("infer", test.len() as u64, "images"));
    let mut ws = Workspace::default();
    let (mut ok_u8, mut ok_fp, mut agree, mut n) = (0usize, 0usize, 0usize, 0usize);
    let mut bench_images: Vec<f32> = Vec::new();
    for b in batches(test.clone()) {
        let b = b?;
        let x = b.x.host_values();
        let m = b.labels.len();
        let fp = float.run(&x, m).pop().expect("logits");
        let classes = fp.len() / m;
        for i in 0..m {
            let q = argmax(&plan.run(&x[i * per..(i + 1) * per], &mut ws));
            let f = argmax(&fp[i * classes..(i + 1) * classes]);
            let y = b.labels[i] as usize;
            ok_u8 += (q == y) as usize;
            ok_fp += (f == y) as usize;
            agree += (q == f) as usize;
        }
        n += m;
        if bench_images.len() < a.bench * per {
            bench_images.extend_from_slice(&x[..(a.bench * per - bench_images.len()).min(x.len())]);
        }
        if let Some(bar) = &bar {
            bar.inc(m as u64);
        }
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    if n == 0 {
        anyhow::bail!("no test images to evaluate (--limit 0?)");
    }
    let reps = bench_images.len() / per;
    let latency = (reps > 0).then(|| {
        let img = |i: usize| &bench_images[(i % reps) * per..(i % reps + 1) * per];
        let u8_ms = median_ms(reps, |i| {
            std::hint::black_box(plan.run(img(i), &mut ws));
        });
        let fp_ms = median_ms(reps, |i| {
            std::hint::black_box(float.run(img(i), 1));
        });
        (u8_ms, fp_ms)
    });
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    let kernel = tern_infer::conv::kernel_name();
    let mut json = serde_json::json!({
        "model": model.config.name, "checkpoint": a.checkpoint.display().to_string(), "kernel": kernel,
        "threads": rayon::current_num_threads(), "samples": n, "calibration_images": n_cal,
        "test_accuracy_u8": ok_u8 as f64 / n as f64, "test_accuracy_fp32": ok_fp as f64 / n as f64,
        "agreement": agree as f64 / n as f64, "plan_ms": plan_ms,
    });
    if let Some((u, f)) = latency {
        json["latency_ms_u8"] = u.into();
        json["latency_ms_fp32"] = f.into();
        json["speedup"] = (f / u).into();
        json["timed_images"] = reps.into();
    }
    if a.json {
        println!("{json}");
        return Ok(());
    }
    let mut t = Table::new(&["engine", "top-1 %", "latency ms (batch 1)"]);
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    t.row(vec![format!("tern u8 ({kernel})"), format!("{:.2}", pct(ok_u8)), ms(latency.map(|l| l.0))]);
    t.row(vec!["tern FP32 (the model's forward)".into(), format!("{:.2}", pct(ok_fp)), ms(latency.map(|l| l.1))]);
    print!("{}", t.render());
    println!(
        "{} on {} ({n} test images, {} threads): predictions agree on {:.2}%; scales calibrated on {n_cal} training images",
        model.config.name,
        data.name,
        rayon::current_num_threads(),
        pct(agree)
    );
    if let Some((u, f)) = latency {
        println!("u8 engine {:.2}x the FP32 forward at batch 1 (median of {reps} images)", f / u);
    }
    Ok(())
}
