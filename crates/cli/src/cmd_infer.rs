//! `tern infer`: a checkpoint on tern's CPU inference engine (u8 activations, ternary or s8
//! weights, fused epilogues, VNNI kernels): its accuracy beside the FP32 model's on the
//! same test images, how often the two agree, and batch-1 latency of both.

use crate::common::DataArgs;
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tern_data::{Augment, BatchIter, Normalize};
use tern_infer::file::Packed;
use tern_infer::plan::{FloatPlan, Plan, Workspace};

#[derive(Args, Debug)]
pub struct InferArgs {
    /// A checkpoint written by `tern train` (DIR/model.safetensors): quantised now,
    /// compared with its FP32 forward
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Or a packed model written by `tern export --packed` (the u8 engine alone)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Check that the packed model's reference input gives the logits stored with it
    #[arg(long, requires = "model")]
    pub verify: bool,
    #[command(flatten)]
    pub data: DataArgs,
    /// Training images whose activations set the u8 scales (the first N)
    #[arg(long, default_value_t = 256)]
    pub calibrate: usize,
    /// Evaluate on the first N test images [default: all]
    #[arg(long)]
    pub limit: Option<usize>,
    /// Time inference over this many test images, the u8 engine against tern's FP32 forward
    /// (0: no timing): latency percentiles per call of --batch images, images/s
    #[arg(long, default_value_t = 32)]
    pub bench: usize,
    /// Images per timed call (one image: each convolution split over the threads; several:
    /// each thread runs its share of the images)
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Count, per convolution, the zeros its kernel could skip in its input (values, groups
    /// of 4 channels at a pixel, 4-channel groups zero over the whole image) over the
    /// evaluated images
    #[arg(long)]
    pub zeros: bool,
    /// Test images on which each convolution's dense and zero-skipping kernels are timed to
    /// pick the faster (0: dense everywhere)
    #[arg(long, default_value_t = 4)]
    pub tune: usize,
    /// Print the results as one JSON object only
    #[arg(long)]
    pub json: bool,
    /// Also write the JSON object to this file
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().fold((0, f32::NEG_INFINITY), |b, (i, &x)| if x > b.1 { (i, x) } else { b }).0
}

/// Milliseconds of each of `reps` calls of `f` (after two warm-up calls), sorted.
pub(crate) fn timed_ms(reps: usize, mut f: impl FnMut(usize)) -> Vec<f64> {
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
    t
}

/// The `q` quantile of sorted, non-empty times (nearest rank).
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// (median, p90, p99) milliseconds per call of `f` over `reps` calls.
fn latency_ms(reps: usize, f: impl FnMut(usize)) -> [f64; 3] {
    let t = timed_ms(reps, f);
    [quantile(&t, 0.5), quantile(&t, 0.9), quantile(&t, 0.99)]
}

/// Whether `label` is among the `k` largest of `v`.
fn in_top(v: &[f32], label: usize, k: usize) -> bool {
    let x = v[label];
    v.iter().filter(|&&o| o > x).count() < k
}

/// A checkpoint's float plan and its quantised, calibrated plan packed with a reference
/// input (the first test image) and the logits the plan gives it.
pub struct Quantised {
    pub model: tern_train::Model,
    pub float: FloatPlan,
    pub packed: Packed,
    pub calibration_images: usize,
}

/// Loads `checkpoint`, plans it and calibrates the u8 scales on the first `calibrate`
/// training images of `data`.
pub fn quantise(
    checkpoint: &Path,
    data: &DataArgs,
    calibrate: usize,
) -> anyhow::Result<(Quantised, tern_data::DataSplit)> {
    if calibrate == 0 {
        anyhow::bail!("invalid value for --calibrate: must be at least 1");
    }
    let (mut model, c) = tern_train::checkpoint::load_model(checkpoint)?;
    let normalize: Normalize = serde_json::from_value(c.meta["normalize"].clone())
        .with_context(|| format!("{}: no `normalize` metadata", checkpoint.display()))?;
    let split = data.load()?;
    crate::common::check_data_fits(checkpoint, &model.config, &split, &data.data)?;
    let float = FloatPlan::of(&mut model)?;
    let n = calibrate.min(split.train.len());
    let mut calib = Vec::new();
    for b in batches(Arc::new(split.train.take(n)), &normalize, model.config.in_shape) {
        calib.extend_from_slice(&b?.x.host_values());
    }
    let plan = Plan::quantise(&float, &calib, n)?;
    let first = batches(Arc::new(split.test.take(1)), &normalize, model.config.in_shape)
        .next()
        .context("the data set has no test image for the reference")??;
    let reference_input = first.x.host_values().into_owned();
    let reference_logits = plan.run(&reference_input, &mut Workspace::default());
    let packed = Packed {
        model: model.config.name.clone(),
        normalize: serde_json::to_value(&normalize)?,
        plan,
        reference_input,
        reference_logits,
    };
    Ok((Quantised { model, float, packed, calibration_images: n }, split))
}

fn batches(ds: Arc<tern_data::Dataset>, normalize: &Normalize, shape: [usize; 3]) -> BatchIter {
    let cfg = tern_train::trainer::loader(normalize, shape, 256, 0, false, Augment::default());
    BatchIter::new(ds, cfg, 0, false)
}

pub fn run(a: InferArgs) -> anyhow::Result<()> {
    if a.batch == 0 {
        anyhow::bail!("invalid value for --batch: must be at least 1");
    }
    let (q, data, from) = match (&a.checkpoint, &a.model) {
        (Some(ck), None) => {
            let (q, data) = quantise(ck, &a.data, a.calibrate)?;
            (Some(q), data, ck.display().to_string())
        }
        (None, Some(path)) => (None, a.data.load()?, path.display().to_string()),
        _ => anyhow::bail!("give exactly one of --checkpoint (a tern checkpoint) and --model (a packed .tern file)"),
    };
    let packed = match (&q, &a.model) {
        (Some(q), _) => q.packed.clone(),
        (None, Some(path)) => Packed::read(path)?,
        _ => unreachable!(),
    };
    if a.verify {
        let err = packed.verify().map_err(|e| anyhow::anyhow!("{from}: --verify failed: {e}"))?;
        if !a.json {
            println!("verified: the reference input gives the stored logits (max relative difference {err:.1e})");
        }
    }
    let mut packed = packed;
    let normalize: Normalize =
        serde_json::from_value(packed.normalize.clone()).with_context(|| format!("{from}: the input normalisation"))?;
    let s0 = packed.plan.values[0];
    let shape = [s0.c, s0.h, s0.w];
    if data.train.shape != shape && a.data.data != "folder" {
        anyhow::bail!("{from} takes {shape:?} images; {} has {:?}", data.name, data.train.shape);
    }
    let per = shape.iter().product::<usize>();
    let test = Arc::new(match a.limit {
        Some(n) => data.test.take(n),
        None => data.test.clone(),
    });
    // dense or zero-skipping kernel per convolution, by measurement on a few test images
    let tuned = match batches(Arc::new(test.take(a.tune.min(test.len()))), &normalize, shape).next() {
        Some(b) if a.tune > 0 => {
            let x = b?.x.host_values().into_owned();
            let imgs: Vec<&[f32]> = x.chunks(per).collect();
            packed.plan.tune(&imgs, &mut Workspace::default())
        }
        _ => Vec::new(),
    };
    let plan = &packed.plan;
    let bar = (!a.json).then(|| crate::progress::counter("infer", test.len() as u64, "images"));
    let mut ws = Workspace::default();
    let (mut ok_u8, mut top5_u8, mut ok_fp, mut agree, mut n) = (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut bench_images: Vec<f32> = Vec::new();
    let mut zeros = Vec::new();
    for b in batches(test.clone(), &normalize, shape) {
        let b = b?;
        let x = b.x.host_values();
        let m = b.labels.len();
        let fp = q.as_ref().map(|q| q.float.run(&x, m).pop().expect("logits"));
        for i in 0..m {
            let logits = plan.run(&x[i * per..(i + 1) * per], &mut ws);
            let u = argmax(&logits);
            if a.zeros {
                plan.count_zeros(&ws, &mut zeros);
            }
            let y = b.labels[i] as usize;
            ok_u8 += (u == y) as usize;
            top5_u8 += in_top(&logits, y, 5) as usize;
            if let Some(fp) = &fp {
                let classes = fp.len() / m;
                let f = argmax(&fp[i * classes..(i + 1) * classes]);
                ok_fp += (f == y) as usize;
                agree += (u == f) as usize;
            }
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
    let img = |i: usize| &bench_images[(i % reps) * per..(i % reps + 1) * per];
    // each timed call runs --batch images, starting at image i·batch
    let mut wss = Vec::new();
    let u8_lat = (reps > 0).then(|| {
        latency_ms(reps, |i| {
            let xs: Vec<&[f32]> = (0..a.batch).map(|j| img(i * a.batch + j)).collect();
            std::hint::black_box(plan.run_batch(&xs, &mut wss));
        })
    });
    let u8_ms = u8_lat.map(|l| l[0]);
    let fp_ms = q.as_ref().filter(|_| reps > 0).map(|q| {
        latency_ms(reps, |i| {
            for j in 0..a.batch {
                std::hint::black_box(q.float.run(img(i * a.batch + j), 1));
            }
        })[0]
    });
    let pct = |k: usize| 100.0 * k as f64 / n as f64;
    let kernel = tern_infer::conv::kernel_name();
    let mut json = serde_json::json!({
        "model": packed.model, "source": from, "kernel": kernel,
        "threads": rayon::current_num_threads(), "samples": n,
        "test_accuracy": ok_u8 as f64 / n as f64, "top5": top5_u8 as f64 / n as f64,
        "test_accuracy_u8": ok_u8 as f64 / n as f64,
    });
    if let Some(q) = &q {
        json["calibration_images"] = q.calibration_images.into();
        json["test_accuracy_fp32"] = (ok_fp as f64 / n as f64).into();
        json["agreement"] = (agree as f64 / n as f64).into();
    }
    if let Some([p50, p90, p99]) = u8_lat {
        json["batch"] = a.batch.into();
        json["latency_ms_u8"] = p50.into();
        json["latency_ms_p50"] = p50.into();
        json["latency_ms_p90"] = p90.into();
        json["latency_ms_p99"] = p99.into();
        json["images_per_s"] = (a.batch as f64 * 1e3 / p50).into();
        json["timed_calls"] = reps.into();
    }
    if let (Some(u), Some(f)) = (u8_ms, fp_ms) {
        json["latency_ms_fp32"] = f.into();
        json["speedup"] = (f / u).into();
    }
    if a.zeros {
        json["zeros"] = serde_json::to_value(&zeros)?;
    }
    json["kernels"] = serde_json::to_value(&tuned)?;
    if let Some(path) = &a.out {
        tern_core::checkpoint::write_atomic(path, serde_json::to_string_pretty(&json)?.as_bytes())?;
    }
    if a.json {
        println!("{json}");
        return Ok(());
    }
    if a.zeros {
        let mut t = Table::new(&[
            "convolution",
            "zero values %",
            "zero 4-channel units %",
            "4-channel groups zero in the whole image %",
        ]);
        let pc = |a: u64, b: u64| format!("{:.1}", 100.0 * a as f64 / b.max(1) as f64);
        for z in &zeros {
            t.row(vec![
                z.layer.clone(),
                pc(z.zero_values, z.values),
                pc(z.zero_units, z.units),
                pc(z.zero_groups, z.groups),
            ]);
        }
        print!("{}", t.render());
    }
    if !tuned.is_empty() && (a.zeros || tuned.iter().any(|k| k.kernel != tern_infer::conv::ConvKernel::Dense)) {
        print!("{}", kernel_table(&tuned).render());
    }
    let lat = format!("latency ms (batch {})", a.batch);
    let mut t = Table::new(&["engine", "top-1 %", "top-5 %", &lat, "p90 ms", "p99 ms", "images/s"]);
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    let rate = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}", a.batch as f64 * 1e3 / v));
    t.row(vec![
        format!("tern u8 ({kernel})"),
        format!("{:.2}", pct(ok_u8)),
        format!("{:.2}", pct(top5_u8)),
        ms(u8_ms),
        ms(u8_lat.map(|l| l[1])),
        ms(u8_lat.map(|l| l[2])),
        rate(u8_ms),
    ]);
    if q.is_some() {
        t.row(vec![
            "tern FP32 (the model's forward)".into(),
            format!("{:.2}", pct(ok_fp)),
            "-".into(),
            ms(fp_ms),
            "-".into(),
            "-".into(),
            rate(fp_ms),
        ]);
    }
    print!("{}", t.render());
    println!("{} on {} ({n} test images, {} threads)", packed.model, data.name, rayon::current_num_threads());
    if let Some(q) = &q {
        println!(
            "predictions agree with the FP32 model on {:.2}%; u8 scales calibrated on {} training images",
            pct(agree),
            q.calibration_images
        );
    }
    if let (Some(u), Some(f)) = (u8_ms, fp_ms) {
        println!("u8 engine {:.2}x the FP32 forward at batch {} (median of {reps} calls)", f / u, a.batch);
    }
    Ok(())
}

/// The kernel chosen per convolution with the timings behind the choice.
pub fn kernel_table(tuned: &[tern_infer::plan::KernelChoice]) -> Table {
    let mut t = Table::new(&[
        "convolution",
        "zero weight units %",
        "dense ms",
        "skip zero inputs ms",
        "skip zero weight units ms",
        "runs",
    ]);
    let ms = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.3}"));
    for k in tuned {
        t.row(vec![
            k.layer.clone(),
            format!("{:.1}", 100.0 * k.zero_weight_units),
            format!("{:.3}", k.dense_ms),
            ms(k.skip_zero_inputs_ms),
            ms(k.skip_zero_weight_units_ms),
            k.kernel.name().into(),
        ]);
    }
    t
}
