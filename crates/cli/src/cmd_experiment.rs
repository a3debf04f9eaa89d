//! `tern experiment NAME`: the ternary issue's experiments, each a list of training runs
//! (configurations × seeds) run one after another, resumable run by run, then summarised as
//! an aligned table, CSV files and an SVG bar chart.

use crate::common::DataArgs;
use crate::plot::{bar_chart, line_charts, Bar, Panel, Series};
use crate::progress::Bars;
use crate::table::Table;
use clap::{Args, ValueEnum};
use std::path::{Path, PathBuf};
use tern_core::quant::TernaryConfig;
use tern_data::{Augment, DataSplit};
use tern_train::trainer::{CHECKPOINT_FILE, METRICS_FILE};
use tern_train::{EpochMetrics, ModelConfig, Recipe, ScheduleKind, SgdConfig, TrainConfig, Trainer};

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Experiment {
    /// Fig. 3: FP32, ternary baseline, +Reg, +GradUpdate, +ReluT, +SkipLayer, and all together
    Ablation,
    /// FP32 against ternary (FP first layer) for each of --models
    FpVsTernary,
    /// Fig. 4: ternary from scratch and from FP pre-initialisation (PI), each at a constant rate
    /// and with plateau LR lowering (LR), beside the smaller FP net
    Pretrain,
    /// The central claim: a ternary deeper net against the FP shallower net (accuracy, multiply-adds, bytes)
    Depth,
    /// §4.2: --model trained in FP for --epochs, then lowered to ternary (FP first layer) and
    /// fine-tuned for --finetune-epochs at --finetune-lr: accuracy against fine-tuning epochs
    Lowering,
    /// Beyond the paper: ternary --model (FP first layer) with --block-sparsities of its 16x4
    /// weight units held at zero (what `tern infer` skips), beside FP32 and plain ternary
    BlockSparsity,
}

#[derive(Args, Debug)]
pub struct ExperimentArgs {
    pub name: Experiment,
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// The net under study
    #[arg(long, default_value = "vgg-small")]
    pub model: String,
    /// Comma-separated nets for fp-vs-ternary
    #[arg(long, default_value = "vgg-small,resnet20")]
    pub models: String,
    /// The shallower/smaller FP net of `pretrain` and `depth`
    #[arg(long, default_value = "resnet20")]
    pub small_model: String,
    /// The deeper net of `depth` (ternary)
    #[arg(long, default_value = "resnet32")]
    pub deep_model: String,
    /// Base channel width of --model (0: its default)
    #[arg(long, default_value_t = 16)]
    pub width: usize,
    /// ImageNet-style ResNets (resnet18/34/50) with the small-image stem (3x3 conv, no
    /// max-pool), as `tern train --small-input`: for 28-32 px data
    #[arg(long)]
    pub small_input: bool,
    /// Epochs per run
    #[arg(long, default_value_t = 4)]
    pub epochs: usize,
    /// Images per SGD step
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// `lowering`: fine-tuning epochs after the lowering
    #[arg(long, default_value_t = 5)]
    pub finetune_epochs: usize,
    /// `lowering`: peak learning rate of the fine-tuning (cosine)
    #[arg(long, default_value_t = 0.01)]
    pub finetune_lr: f32,
    /// `block-sparsity`: comma-separated fractions of zero weight units [default: 0.5,0.75,0.875]
    #[arg(long)]
    pub block_sparsities: Option<String>,
    /// Seeds per configuration (0, 1, ...)
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Train on the first N training samples
    #[arg(long, default_value_t = 10000)]
    pub train_limit: usize,
    /// Evaluate on the first N test samples
    #[arg(long, default_value_t = 10000)]
    pub test_limit: usize,
    /// Augmentation: random crop after padding by this many pixels (0: off)
    #[arg(long, default_value_t = 2)]
    pub crop_pad: usize,
    /// Augmentation: random horizontal flips
    #[arg(long)]
    pub hflip: bool,
    /// Reg: λ of the L1 activation penalty
    #[arg(long, default_value_t = 1e-4)]
    pub act_l1: f32,
    /// ReluT: the raised threshold, applied over the last third of the epochs
    #[arg(long, default_value_t = 0.01)]
    pub relu_threshold: f32,
    /// Output folder (one sub-folder per configuration and seed; finished runs are reused)
    #[arg(long, default_value = "runs/experiment")]
    pub out: PathBuf,
    /// Runs trained at the same time, each on its own backend (and CUDA stream): small nets
    /// leave most of a large GPU idle, so several at once finish sooner. Each run is what it
    /// would be alone (up to which deterministic cuDNN algorithm the timing picks)
    #[arg(long, default_value_t = 1)]
    pub jobs: usize,
    /// No progress bars
    #[arg(long)]
    pub quiet: bool,
}

/// A backend and its description for metrics, kept from one run to the next.
type HeldBackend = (Box<dyn tern_core::Backend>, serde_json::Value);

/// One configuration of an experiment.
struct Variant {
    label: String,
    model: String,
    width: usize,
    recipe: Recipe,
    schedule: ScheduleKind,
    epochs: usize,
    lr: f32,
    /// Start from the final weights of this variant's run with the same seed (it runs first).
    init_from: Option<usize>,
}

struct RunResult {
    label: String,
    seed: u64,
    model: String,
    history: Vec<EpochMetrics>,
    macs: u64,
    ternary_macs: u64,
    bytes_fp32: usize,
    bytes_packed: usize,
}

fn variants(a: &ExperimentArgs) -> anyhow::Result<Vec<Variant>> {
    let ternary = Some(TernaryConfig::default());
    let cosine = ScheduleKind::Cosine;
    let plateau = ScheduleKind::Plateau { patience: 1, factor: 0.2, min_lr: 0.0 };
    let base = Recipe { ternary, ..Recipe::default() };
    let relut_from = a.epochs - a.epochs.div_ceil(3);
    let v = |label: &str, model: &str, width: usize, recipe: Recipe, schedule: &ScheduleKind| Variant {
        label: label.into(),
        model: model.into(),
        width,
        recipe,
        schedule: schedule.clone(),
        epochs: a.epochs,
        lr: a.lr,
        init_from: None,
    };
    let (m, w) = (a.model.as_str(), a.width);
    if a.block_sparsities.is_some() && !matches!(a.name, Experiment::BlockSparsity) {
        anyhow::bail!("--block-sparsities only applies to `tern experiment block-sparsity`");
    }
    Ok(match a.name {
        Experiment::Ablation => vec![
            v("fp32", m, w, Recipe::default(), &cosine),
            v("ternary", m, w, base.clone(), &cosine),
            v("+reg", m, w, Recipe { act_l1: a.act_l1, ..base.clone() }, &cosine),
            v("+gradupdate", m, w, Recipe { skip_correct: true, ..base.clone() }, &cosine),
            v(
                "+relut",
                m,
                w,
                Recipe { relu_threshold: a.relu_threshold, relu_threshold_from_epoch: relut_from, ..base.clone() },
                &cosine,
            ),
            v("+skiplayer", m, w, Recipe { fp_first_layer: true, ..base.clone() }, &cosine),
            v(
                "all",
                m,
                w,
                Recipe {
                    act_l1: a.act_l1,
                    skip_correct: true,
                    relu_threshold: a.relu_threshold,
                    relu_threshold_from_epoch: relut_from,
                    fp_first_layer: true,
                    ..base.clone()
                },
                &cosine,
            ),
        ],
        Experiment::FpVsTernary => a
            .models
            .split(',')
            .flat_map(|name| {
                [
                    v(&format!("{name} fp32"), name, 0, Recipe::default(), &cosine),
                    v(&format!("{name} ternary"), name, 0, Recipe { fp_first_layer: true, ..base.clone() }, &cosine),
                ]
            })
            .collect(),
        Experiment::Pretrain => {
            if a.epochs < 3 {
                anyhow::bail!("invalid value for --epochs: `pretrain` needs at least 3 (a third of them in FP)");
            }
            let constant = ScheduleKind::Constant;
            let scratch = Recipe { fp_first_layer: true, ..base.clone() };
            let pi = Recipe { fp_warmup_epochs: a.epochs / 3, ..scratch.clone() };
            vec![
                v(&format!("{} fp32 (smaller)", a.small_model), &a.small_model, 0, Recipe::default(), &cosine),
                v(&format!("{m} ternary"), m, w, scratch.clone(), &constant),
                v(&format!("{m} ternary LR"), m, w, scratch, &plateau),
                v(&format!("{m} ternary PI"), m, w, pi.clone(), &constant),
                v(&format!("{m} ternary PI LR"), m, w, pi, &plateau),
            ]
        }
        // the claim's pair first (shallow FP, deep ternary): with --jobs they run in the first
        // wave, so an experiment cut short still answers it
        Experiment::Depth => vec![
            v(&format!("{} fp32", a.small_model), &a.small_model, 0, Recipe::default(), &cosine),
            v(
                &format!("{} ternary", a.deep_model),
                &a.deep_model,
                0,
                Recipe { fp_first_layer: true, ..base.clone() },
                &cosine,
            ),
            v(
                &format!("{} ternary", a.small_model),
                &a.small_model,
                0,
                Recipe { fp_first_layer: true, ..base.clone() },
                &cosine,
            ),
            v(&format!("{} fp32", a.deep_model), &a.deep_model, 0, Recipe::default(), &cosine),
        ],
        Experiment::Lowering => {
            if a.finetune_epochs == 0 {
                anyhow::bail!("invalid value for --finetune-epochs: must be at least 1");
            }
            let lowered = Variant {
                epochs: a.finetune_epochs,
                lr: a.finetune_lr,
                init_from: Some(0),
                ..v(&format!("{m} lowered"), m, w, Recipe { fp_first_layer: true, ..base.clone() }, &cosine)
            };
            vec![v(&format!("{m} fp32"), m, w, Recipe::default(), &cosine), lowered]
        }
        Experiment::BlockSparsity => {
            let ternary = Recipe { fp_first_layer: true, ..base.clone() };
            let mut arms = vec![
                v(&format!("{m} fp32"), m, w, Recipe::default(), &cosine),
                v(&format!("{m} ternary"), m, w, ternary.clone(), &cosine),
            ];
            for f in a.block_sparsities.as_deref().unwrap_or("0.5,0.75,0.875").split(',') {
                let f: f64 = f.trim().parse().map_err(|_| {
                    anyhow::anyhow!("invalid value for --block-sparsities: `{f}`: expected fractions like 0.5,0.75")
                })?;
                let recipe = Recipe { block_sparsity: f, ..ternary.clone() };
                recipe.validate(a.epochs).map_err(|e| anyhow::anyhow!("--block-sparsities: {e}"))?;
                arms.push(v(&format!("{m} ternary {:.1} % zero units", f * 100.0), m, w, recipe, &cosine));
            }
            arms
        }
    })
}

fn slug(label: &str) -> String {
    label.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// A finished run whose folder kept only `metrics.json` (results shipped without their
/// checkpoints): reused when it was trained with exactly this model and training config and
/// has all its epochs; anything else (a different config, a cut-off run) trains again.
fn finished_without_checkpoint(dir: &Path, model: &ModelConfig, cfg: &TrainConfig) -> Option<serde_json::Value> {
    if dir.join(CHECKPOINT_FILE).exists() {
        return None;
    }
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).ok()?).ok()?;
    let same_model = serde_json::from_value::<ModelConfig>(m["model"].clone()).ok()? == *model;
    let same_train = serde_json::from_value::<TrainConfig>(m["train"].clone()).ok()? == *cfg;
    let complete = m["epochs"].as_array().is_some_and(|e| e.len() == cfg.epochs);
    (same_model && same_train && complete).then_some(m)
}

/// Runs (or resumes, or reuses) one training run on `backend` (made on first use), and
/// hands the backend back for the next run (None when the run was reused and none was held).
fn run_one(
    a: &ExperimentArgs,
    data: &DataSplit,
    v: &Variant,
    seed: u64,
    dir: &Path,
    init_from: Option<PathBuf>,
    backend: Option<HeldBackend>,
    quiet: bool,
) -> anyhow::Result<(RunResult, Option<HeldBackend>)> {
    let [c, h, wd] = data.train.shape;
    let model = ModelConfig {
        name: v.model.clone(),
        in_shape: [c, h, wd],
        classes: data.class_names.len(),
        width: v.width,
        small_input: a.small_input,
        spec: None,
    };
    let cfg = TrainConfig {
        epochs: v.epochs,
        batch_size: a.batch,
        lr: v.lr,
        sgd: SgdConfig { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
        schedule: v.schedule.clone(),
        seed,
        augment: Augment { crop_pad: a.crop_pad, hflip: a.hflip },
        train_limit: Some(a.train_limit),
        test_limit: Some(a.test_limit),
        recipe: v.recipe.clone(),
        init_from,
        init_adapt: false,
        profile_every: 1,
    };
    if let Some(m) = finished_without_checkpoint(dir, &model, &cfg) {
        let count = |k: &str| m[k].as_u64().unwrap_or(0);
        let result = RunResult {
            label: v.label.clone(),
            seed,
            model: v.model.clone(),
            history: serde_json::from_value(m["epochs"].clone())?,
            macs: count("macs_per_image"),
            ternary_macs: count("ternary_macs_per_image"),
            bytes_fp32: count("bytes_fp32") as usize,
            bytes_packed: count("bytes_packed") as usize,
        };
        return Ok((result, backend));
    }
    let mut t = if dir.join(CHECKPOINT_FILE).exists() {
        Trainer::resume(&model, data, cfg, dir)?
    } else {
        Trainer::new(&model, data, cfg, dir)?
    };
    if t.next_epoch < v.epochs && !quiet {
        eprintln!("== {} (seed {seed}) -> {}", v.label, dir.display());
    }
    let (backend, info) = match backend {
        Some(b) => b,
        None => a.device.backend()?,
    };
    t.set_backend(backend);
    t.device_info = info.clone();
    t.run(&mut Bars::new(quiet))?;
    crate::cmd_train::write_curves(dir, &t.history)?;
    let totals = tern_train::summary::totals(&t.model.summary());
    let result = RunResult {
        label: v.label.clone(),
        seed,
        model: v.model.clone(),
        history: t.history.clone(),
        macs: totals.macs,
        ternary_macs: totals.ternary_macs,
        bytes_fp32: totals.bytes_fp32,
        bytes_packed: totals.bytes_packed,
    };
    Ok((result, Some((t.into_backend(), info))))
}

/// Every (configuration, seed) run: first those that start from scratch, then those that
/// start from another run's weights.
fn run_all(a: &ExperimentArgs, data: &DataSplit, vs: &[Variant], out: &Path) -> anyhow::Result<Vec<RunResult>> {
    let mut results = Vec::new();
    for derived in [false, true] {
        let runs: Vec<(usize, u64)> = (0..vs.len())
            .filter(|&v| vs[v].init_from.is_some() == derived)
            .flat_map(|v| (0..a.seeds).map(move |s| (v, s)))
            .collect();
        if !runs.is_empty() {
            results.extend(run_phase(a, data, vs, out, &runs)?);
        }
    }
    Ok(results)
}

/// `runs` (variant, seed), `a.jobs` at a time; results in the order of `runs`.
fn run_phase(
    a: &ExperimentArgs,
    data: &DataSplit,
    vs: &[Variant],
    out: &Path,
    runs: &[(usize, u64)],
) -> anyhow::Result<Vec<RunResult>> {
    let dir = |v: usize, seed: u64| out.join(slug(&vs[v].label)).join(format!("seed{seed}"));
    let one = |&(v, seed): &(usize, u64), backend, quiet| {
        let init = vs[v].init_from.map(|src| dir(src, seed).join(CHECKPOINT_FILE));
        run_one(a, data, &vs[v], seed, &dir(v, seed), init, backend, quiet)
    };
    let jobs = a.jobs.clamp(1, runs.len());
    if jobs == 1 {
        let mut backend = None;
        let mut results = Vec::new();
        for r in runs {
            let (res, be) = one(r, backend.take(), a.quiet)?;
            results.push(res);
            backend = be;
        }
        return Ok(results);
    }
    // Several workers take runs from a shared counter; each keeps its own backend. Their
    // per-epoch lines would interleave, so only finished runs are reported, under one bar.
    let next = std::sync::atomic::AtomicUsize::new(0);
    let slots: Vec<std::sync::Mutex<Option<anyhow::Result<RunResult>>>> =
        runs.iter().map(|_| std::sync::Mutex::new(None)).collect();
    let one = &one;
    let bar = (!a.quiet).then(|| crate::progress::counter("runs", runs.len() as u64, "runs"));
    std::thread::scope(|scope| {
        for _ in 0..jobs {
            scope.spawn(|| {
                let mut backend = None;
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(r) = runs.get(i) else { break };
                    // a device failure inside a kernel panics: it ends this run with an error
                    // naming it (its last checkpoint stays), not the whole process
                    let held = backend.take();
                    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| one(r, held, true)))
                        .unwrap_or_else(|p| {
                            Err(anyhow::anyhow!(
                                "failed: {} (its last checkpoint, if any, is kept; the experiment resumes from it when run again)",
                                crate::panic_text(p.as_ref())
                            ))
                        });
                    let res = res.map(|(res, be)| {
                        backend = be;
                        res
                    });
                    if let Some(b) = &bar {
                        match &res {
                            Ok(x) => b.println(format!(
                                "done {} (seed {}): test acc {:.2}%",
                                x.label,
                                x.seed,
                                100.0 * x.history.last().map_or(0.0, |m| m.test_acc)
                            )),
                            Err(e) => b.println(format!("FAILED {} (seed {}): {e:#}", vs[r.0].label, r.1)),
                        }
                        b.inc(1);
                    }
                    let failed = res.is_err();
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
                    if failed {
                        // no new runs start after a failure; the others finish theirs
                        next.store(runs.len(), std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let mut results = Vec::new();
    for (slot, r) in slots.into_iter().zip(runs) {
        match slot.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(Ok(res)) => results.push(res),
            Some(Err(e)) => return Err(e.context(format!("run {} (seed {})", vs[r.0].label, r.1))),
            None => anyhow::bail!("run {} (seed {}) did not start: an earlier run failed", vs[r.0].label, r.1),
        }
    }
    Ok(results)
}

/// Mean (± std over seeds) test accuracy and train loss after each epoch of each
/// configuration: curves.csv and NAME-curves.svg.
fn write_curves(out: &Path, name: &str, vs: &[Variant], results: &[RunResult]) -> anyhow::Result<()> {
    let mut csv = String::from("config,epoch,seeds,test_acc_mean,test_acc_std,train_loss_mean\n");
    let mut series = Vec::new();
    for v in vs {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.label == v.label).collect();
        let epochs = rs.iter().map(|r| r.history.len()).max().unwrap_or(0);
        let mut points = Vec::new();
        for e in 0..epochs {
            let at: Vec<&EpochMetrics> = rs.iter().filter_map(|r| r.history.get(e)).collect();
            let (m, sd) = mean_std(&at.iter().map(|h| 100.0 * h.test_acc).collect::<Vec<_>>());
            let loss = mean_std(&at.iter().map(|h| h.train_loss).collect::<Vec<_>>()).0;
            csv.push_str(&format!("{},{},{},{m:.4},{sd:.4},{loss:.6}\n", v.label, e + 1, at.len()));
            points.push(((e + 1) as f64, m));
        }
        series.push(Series { name: v.label.clone(), points });
    }
    tern_core::checkpoint::write_atomic(&out.join("curves.csv"), csv.as_bytes())?;
    let panel = Panel {
        title: format!("{name}: test accuracy after each epoch (mean over seeds)"),
        x_label: "epoch of the run".into(),
        y_label: "top-1 test accuracy (%)".into(),
        series,
    };
    tern_core::checkpoint::write_atomic(&out.join(format!("{name}-curves.svg")), line_charts(&[panel]).as_bytes())?;
    Ok(())
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len().max(1) as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (m, var.sqrt())
}

pub fn run(a: ExperimentArgs) -> anyhow::Result<()> {
    if a.seeds == 0 || a.epochs == 0 {
        anyhow::bail!("invalid value for --seeds/--epochs: must be at least 1");
    }
    let data = a.data.load()?;
    let name = format!("{:?}", a.name).to_lowercase();
    let out = a.out.join(&name);
    let vs = variants(&a)?;
    if a.jobs == 0 {
        anyhow::bail!("invalid value for --jobs: must be at least 1");
    }
    let results = run_all(&a, &data, &vs, &out)?;
    // Per-run CSV.
    let mut csv = String::from("config,model,seed,epochs,test_acc,train_acc,seconds,weight_zero_frac,nonzero_fwd,nonzero_bwd,nonzero_grad,skipped_samples,macs,ternary_macs,bytes_fp32,bytes_packed\n");
    for r in &results {
        let last = r.history.last().expect("a finished run has epochs");
        let secs: f64 = r.history.iter().map(|m| m.seconds).sum();
        let skipped: usize = r.history.iter().map(|m| m.skipped_samples).sum();
        let nz = |i: usize| last.nonzero_frac.map_or(String::new(), |f| format!("{:.4}", f[i]));
        csv.push_str(&format!(
            "{},{},{},{},{:.6},{:.6},{:.1},{},{},{},{},{},{},{},{},{}\n",
            r.label,
            r.model,
            r.seed,
            r.history.len(),
            last.test_acc,
            last.train_acc,
            secs,
            last.weight_zero_fraction.map_or(String::new(), |z| format!("{z:.4}")),
            nz(0),
            nz(1),
            nz(2),
            skipped,
            r.macs,
            r.ternary_macs,
            r.bytes_fp32,
            r.bytes_packed
        ));
    }
    tern_core::checkpoint::write_atomic(&out.join("runs.csv"), csv.as_bytes())?;
    // Summary per configuration.
    let mut table = Table::new(&[
        "config",
        "model",
        "seeds",
        "test_acc% mean",
        "± std",
        "train_acc%",
        "minutes/run",
        "w_zero%",
        "nz fwd/bwd/grad",
        "skipped%",
        "MMACs",
        "ternary%",
        "MB fp32",
        "MB packed",
    ]);
    let mut summary = String::from("config,model,seeds,test_acc_mean,test_acc_std,train_acc_mean,minutes_per_run,weight_zero_frac,nonzero_fwd,nonzero_bwd,nonzero_grad,macs,ternary_macs,bytes_fp32,bytes_packed\n");
    let mut bars = Vec::new();
    for v in &vs {
        let rs: Vec<&RunResult> = results.iter().filter(|r| r.label == v.label).collect();
        let acc: Vec<f64> = rs.iter().map(|r| 100.0 * r.history.last().unwrap().test_acc).collect();
        let tr: Vec<f64> = rs.iter().map(|r| 100.0 * r.history.last().unwrap().train_acc).collect();
        let mins: Vec<f64> = rs.iter().map(|r| r.history.iter().map(|m| m.seconds).sum::<f64>() / 60.0).collect();
        let zf: Vec<f64> = rs.iter().filter_map(|r| r.history.last().unwrap().weight_zero_fraction).collect();
        let (m, s) = mean_std(&acc);
        let r0 = rs[0];
        let zf_mean = (!zf.is_empty()).then(|| mean_std(&zf).0);
        let nzs: Vec<[f64; 3]> = rs.iter().filter_map(|r| r.history.last().unwrap().nonzero_frac).collect();
        let nz_mean = |i: usize| mean_std(&nzs.iter().map(|f| f[i]).collect::<Vec<_>>()).0;
        let seen: f64 = rs.iter().map(|r| (r.history.len() * a.train_limit.min(data.train.len())) as f64).sum();
        let skipped: f64 = rs.iter().map(|r| r.history.iter().map(|m| m.skipped_samples).sum::<usize>() as f64).sum();
        table.row(vec![
            v.label.clone(),
            v.model.clone(),
            rs.len().to_string(),
            format!("{m:.2}"),
            format!("{s:.2}"),
            format!("{:.2}", mean_std(&tr).0),
            format!("{:.1}", mean_std(&mins).0),
            zf_mean.map_or("-".into(), |z| format!("{:.1}", 100.0 * z)),
            if nzs.is_empty() { "-".into() } else { format!("{:.2}/{:.2}/{:.2}", nz_mean(0), nz_mean(1), nz_mean(2)) },
            format!("{:.1}", 100.0 * skipped / seen.max(1.0)),
            format!("{:.1}", r0.macs as f64 / 1e6),
            format!("{:.1}", 100.0 * r0.ternary_macs as f64 / r0.macs.max(1) as f64),
            format!("{:.3}", r0.bytes_fp32 as f64 / 1e6),
            format!("{:.3}", r0.bytes_packed as f64 / 1e6),
        ]);
        let nz_csv = |i: usize| if nzs.is_empty() { String::new() } else { format!("{:.4}", nz_mean(i)) };
        summary.push_str(&format!(
            "{},{},{},{m:.4},{s:.4},{:.4},{:.2},{},{},{},{},{},{},{},{}\n",
            v.label,
            v.model,
            rs.len(),
            mean_std(&tr).0,
            mean_std(&mins).0,
            zf_mean.map_or(String::new(), |z| format!("{z:.4}")),
            nz_csv(0),
            nz_csv(1),
            nz_csv(2),
            r0.macs,
            r0.ternary_macs,
            r0.bytes_fp32,
            r0.bytes_packed
        ));
        bars.push(Bar { label: v.label.clone(), value: m, error: (rs.len() > 1).then_some(s) });
    }
    tern_core::checkpoint::write_atomic(&out.join("summary.csv"), summary.as_bytes())?;
    write_curves(&out, &name, &vs, &results)?;
    let lo = bars.iter().map(|b| b.value - b.error.unwrap_or(0.0)).fold(f64::MAX, f64::min);
    let title = format!("{name}: test accuracy on {} ({} epochs, {} seeds)", data.name, a.epochs, a.seeds);
    let svg = bar_chart(&title, "top-1 test accuracy (%)", &bars, Some((lo - 2.0).floor().max(0.0)));
    tern_core::checkpoint::write_atomic(&out.join(format!("{name}.svg")), svg.as_bytes())?;
    print!("{}", table.render());
    println!(
        "-> {} (runs.csv, summary.csv, curves.csv, {name}.svg, {name}-curves.svg, one folder per run with {METRICS_FILE})",
        out.display()
    );
    Ok(())
}
