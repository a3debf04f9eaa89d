//! `tern run`: the paper's story in one command. Train an FP network, lower it to ternary and
//! fine-tune it with the recipe, profile both, simulate both on DLAC, and write
//! DIR/report.md + DIR/report.html. Every stage is an ordinary `tern` command run in-process,
//! so the report's "reproduce" commands are exactly what ran. A killed run resumes: finished
//! training stages are kept, an unfinished one continues from its checkpoint.

use crate::common::DataArgs;
use crate::plot::{grouped_bars, line_charts, Panel, Series};
use crate::report::Doc;
use anyhow::Context;
use clap::Args;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tern_core::checkpoint::write_atomic;

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub data: DataArgs,
    /// Model name (see `tern models`)
    #[arg(long, default_value = "vgg-small")]
    pub model: String,
    /// Output folder (report.md, report.html and one folder per stage)
    #[arg(long, default_value = "runs/run")]
    pub out: PathBuf,
    /// A ≤ 3 minute version: a training subset and fewer epochs (the report says so)
    #[arg(long)]
    pub quick: bool,
    /// The full-length schedule behind the accuracy targets: 15 FP + 5 ternary epochs with
    /// crop and flip augmentation, all images (20 training epochs instead of 9)
    #[arg(long, conflicts_with = "quick")]
    pub full: bool,
    /// Full-precision epochs [default: 6; --quick: 2; --full: 15]
    #[arg(long)]
    pub fp_epochs: Option<usize>,
    /// Ternary fine-tuning epochs [default: 3; --quick: 1; --full: 5]
    #[arg(long)]
    pub ternary_epochs: Option<usize>,
    /// Train on the first N training images [default: all; --quick: 10000]
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test images [default: all; --quick: 2000]
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Seed of both trainings (weights, sample order, augmentation)
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// No progress bars
    #[arg(long)]
    pub quiet: bool,
}

/// What a run does; stored as DIR/run.json so that a resumed run cannot silently change it.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Plan {
    data: String,
    data_path: Option<PathBuf>,
    image_size: usize,
    model: String,
    quick: bool,
    /// The full-length schedule (augmented training); absent from plans written before it.
    #[serde(default)]
    full: bool,
    fp_epochs: usize,
    ternary_epochs: usize,
    train_limit: Option<usize>,
    test_limit: Option<usize>,
    seed: u64,
    profile_batches: usize,
    profile_batch: usize,
}

impl Plan {
    fn new(a: &RunArgs) -> anyhow::Result<Plan> {
        let p = Plan {
            data: a.data.data.clone(),
            data_path: a.data.data_path.clone(),
            image_size: a.data.image_size,
            model: a.model.clone(),
            quick: a.quick,
            full: a.full,
            fp_epochs: a.fp_epochs.unwrap_or(if a.quick {
                2
            } else if a.full {
                15
            } else {
                6
            }),
            ternary_epochs: a.ternary_epochs.unwrap_or(if a.quick {
                1
            } else if a.full {
                5
            } else {
                3
            }),
            train_limit: a.train_limit.or(a.quick.then_some(10000)),
            test_limit: a.test_limit.or(a.quick.then_some(2000)),
            seed: a.seed,
            profile_batches: if a.quick { 2 } else { 4 },
            profile_batch: 64,
        };
        if p.fp_epochs == 0 || p.ternary_epochs == 0 {
            anyhow::bail!("invalid value for --fp-epochs/--ternary-epochs: must be at least 1");
        }
        Ok(p)
    }

    /// The data flags every stage shares.
    fn data_flags(&self) -> Vec<String> {
        let mut v = vec!["--data".to_string(), self.data.clone()];
        if let Some(p) = &self.data_path {
            v.extend(["--data-path".into(), p.display().to_string()]);
        }
        if self.image_size != 64 {
            v.extend(["--image-size".into(), self.image_size.to_string()]);
        }
        v
    }

    fn train_flags(&self, epochs: usize, out: &Path) -> Vec<String> {
        let mut v = vec!["train".to_string()];
        v.extend(self.data_flags());
        v.extend(["--model".into(), self.model.clone(), "--epochs".into(), epochs.to_string()]);
        v.extend(["--seed".into(), self.seed.to_string(), "--out".into(), out.display().to_string()]);
        if let Some(n) = self.train_limit {
            v.extend(["--train-limit".into(), n.to_string()]);
        }
        if let Some(n) = self.test_limit {
            v.extend(["--test-limit".into(), n.to_string()]);
        }
        if self.full {
            v.extend(["--crop-pad", "2", "--hflip"].map(String::from));
        }
        v
    }
}

/// `--device`/`--precision` as given (none on the CPU): where the stages run is not part of
/// the plan, so a run may resume on another device.
fn device_flags(d: &crate::common::DeviceArgs) -> Vec<String> {
    let mut v = Vec::new();
    if d.device != "cpu" {
        v.extend(["--device".to_string(), d.device.clone()]);
    }
    if let Some(p) = d.precision {
        v.extend(["--precision".to_string(), p.name().to_string()]);
    }
    if d.algorithms == crate::common::AlgorithmsArg::Fastest {
        v.extend(["--algorithms".to_string(), "fastest".to_string()]);
    }
    v
}

/// A `tern` command line, as run and as printed in the report.
struct Stage {
    title: String,
    argv: Vec<String>,
}

impl Stage {
    fn new(title: impl Into<String>, argv: Vec<String>) -> Stage {
        Stage { title: title.into(), argv }
    }
    fn shell(&self) -> String {
        let quote = |a: &String| {
            if a.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,".contains(c)) {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        };
        format!("tern {}", self.argv.iter().map(quote).collect::<Vec<_>>().join(" "))
    }
}

pub fn run(a: RunArgs) -> anyhow::Result<()> {
    let plan = Plan::new(&a)?;
    let out = a.out.clone();
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let plan_file = out.join("run.json");
    // A plan only binds once a model has been trained under it (a run that failed on its
    // data can be retried with corrected flags).
    if plan_file.exists() && out.join("fp").join("model.safetensors").exists() {
        let old: Plan = serde_json::from_slice(&std::fs::read(&plan_file)?)
            .with_context(|| format!("{}: not a `tern run` plan", plan_file.display()))?;
        if old != plan {
            anyhow::bail!(
                "{} holds a `tern run` with other settings ({}); choose another --out or delete it",
                out.display(),
                plan_file.display()
            );
        }
        eprintln!("continuing the run in {}", out.display());
    } else {
        write_atomic(&plan_file, serde_json::to_string_pretty(&plan)?.as_bytes())?;
    }

    let fp_dir = out.join("fp");
    let tern_dir = out.join("ternary");
    let mut fp_train = plan.train_flags(plan.fp_epochs, &fp_dir);
    fp_train.extend(["--lr".into(), "0.05".into(), "--schedule".into(), "cosine".into()]);
    let mut tern_train = plan.train_flags(plan.ternary_epochs, &tern_dir);
    tern_train.extend(
        [
            "--init-from",
            &fp_dir.join("model.safetensors").display().to_string(),
            "--ternary",
            "--fp-first-layer",
            "--relu-threshold",
            "0.01",
            "--lr",
            "0.01",
            "--schedule",
            "cosine",
        ]
        .map(String::from),
    );
    fp_train.extend(device_flags(&a.device));
    tern_train.extend(device_flags(&a.device));
    if a.quiet {
        fp_train.push("--quiet".into());
        tern_train.push("--quiet".into());
    }
    let mut stages = vec![
        Stage::new(format!("train full precision ({})", epochs(plan.fp_epochs)), fp_train),
        Stage::new(format!("lower to ternary and fine-tune ({})", epochs(plan.ternary_epochs)), tern_train),
    ];
    for (name, dir) in [("fp", &fp_dir), ("ternary", &tern_dir)] {
        let mut v =
            vec!["profile".to_string(), "--checkpoint".into(), dir.join("model.safetensors").display().to_string()];
        v.extend(plan.data_flags());
        v.extend([
            "--batches".into(),
            plan.profile_batches.to_string(),
            "--batch".into(),
            plan.profile_batch.to_string(),
            "--masks".into(),
        ]);
        v.extend(["--out".into(), out.join(format!("profile-{name}")).display().to_string()]);
        v.extend(device_flags(&a.device));
        stages.push(Stage::new(format!("profile {name} (forward, backward, weight gradient)"), v));
    }
    for name in ["fp", "ternary"] {
        let workload = out.join(format!("profile-{name}")).join("workload.json").display().to_string();
        for (cfg, pass, tag) in [("dlac-fp32-train", None, "train"), ("dlac-fp16-infer", Some("forward"), "infer")] {
            let mut v = vec!["sim".to_string(), "--workload".into(), workload.clone(), "--config".into(), cfg.into()];
            if let Some(p) = pass {
                v.extend(["--pass".into(), p.into()]);
            }
            v.extend(["--out".into(), out.join(format!("sim-{name}-{tag}")).display().to_string()]);
            stages.push(Stage::new(format!("simulate {name} on {cfg}"), v));
        }
    }

    let prof_t = out.join("profile-ternary");
    stages.push(Stage::new(
        "simulate ternary on dlac-fp32-train, real zero masks",
        [
            "sim",
            "--workload",
            &prof_t.join("workload.json").display().to_string(),
            "--masks",
            &prof_t.join("masks.bin").display().to_string(),
            "--config",
            "dlac-fp32-train",
            "--out",
            &out.join("sim-ternary-train-masks").display().to_string(),
        ]
        .map(String::from)
        .to_vec(),
    ));
    // the ternary model on the CPU inference engine: packed, then run against its FP32 forward
    let packed = out.join("ternary.tern");
    let mut v =
        vec!["export".to_string(), "--checkpoint".into(), tern_dir.join("model.safetensors").display().to_string()];
    v.extend(["--packed".into(), packed.display().to_string()]);
    v.extend(plan.data_flags());
    stages.push(Stage::new("pack ternary for the CPU inference engine", v));
    let mut v =
        vec!["infer".to_string(), "--checkpoint".into(), tern_dir.join("model.safetensors").display().to_string()];
    v.extend(plan.data_flags());
    if let Some(n) = plan.test_limit {
        v.extend(["--limit".into(), n.to_string()]);
    }
    v.extend(["--bench".into(), if plan.quick { "50" } else { "200" }.into(), "--json".into()]);
    v.extend(["--out".into(), out.join("infer-ternary.json").display().to_string()]);
    stages.push(Stage::new("run ternary on the CPU inference engine (u8, VNNI)", v));

    let mut seconds = Vec::new();
    // how each stage came about: the report must not claim a kept stage ran now
    let mut how = Vec::new();
    for (i, st) in stages.iter().enumerate() {
        eprintln!("\n── stage {}/{}: {} ──\n$ {}", i + 1, stages.len(), st.title, st.shell());
        let t0 = Instant::now();
        let is_train = st.argv[0] == "train";
        if is_train {
            let dir = PathBuf::from(&st.argv[st.argv.iter().position(|a| a == "--out").unwrap() + 1]);
            let want = if i == 0 { plan.fp_epochs } else { plan.ternary_epochs };
            match epochs_done(&dir) {
                Some(n) if n >= want => {
                    eprintln!("already trained ({n} epochs in {}): kept", dir.display());
                    // its time is the one the training took, from its metrics
                    seconds.push(training_seconds(&dir));
                    how.push("kept from an earlier run");
                    continue;
                }
                Some(_) => {
                    let mut resume: Vec<String> =
                        ["train", "--resume", &dir.display().to_string(), "--epochs", &want.to_string()]
                            .map(String::from)
                            .to_vec();
                    resume.extend(device_flags(&a.device));
                    crate::execute(&resume).with_context(|| format!("stage {}: {}", i + 1, st.title))?;
                    // all its epochs, the ones before the interruption included
                    seconds.push(training_seconds(&dir));
                    how.push("resumed (`tern train --resume`)");
                    continue;
                }
                None => crate::execute(&st.argv).with_context(|| format!("stage {}: {}", i + 1, st.title))?,
            }
        } else {
            crate::execute(&st.argv).with_context(|| format!("stage {}: {}", i + 1, st.title))?;
        }
        seconds.push(t0.elapsed().as_secs_f64());
        how.push("ran");
    }
    let total: f64 = seconds.iter().sum();
    let doc = build_report(&plan, &out, &stages, &seconds, &how, total)?;
    for f in doc.figures() {
        anyhow::ensure!(out.join(f).is_file(), "report figure {} was not written", out.join(f).display());
    }
    write_atomic(&out.join("report.md"), doc.markdown().as_bytes())?;
    write_atomic(&out.join("report.html"), doc.html(&out)?.as_bytes())?;
    eprintln!("\nstage times:");
    for (st, s) in stages.iter().zip(&seconds) {
        eprintln!("  {:>8.1} s  {}", s, st.title);
    }
    println!(
        "done in {:.1} min -> {} and {}",
        total / 60.0,
        out.join("report.md").display(),
        out.join("report.html").display()
    );
    Ok(())
}

/// Loss and test accuracy of both stages on one epoch axis (ternary epochs follow the FP ones).
fn curves(fp: &Value, tn: &Value) -> String {
    let ep = |m: &Value| m["epochs"].as_array().cloned().unwrap_or_default();
    let (fe, te) = (ep(fp), ep(tn));
    let pts = |rows: &[Value], offset: usize, key: &str, scale: f64| -> Vec<(f64, f64)> {
        rows.iter().enumerate().map(|(i, e)| ((offset + i + 1) as f64, scale * f(&e[key]))).collect()
    };
    let series = |key: &str, scale: f64, what: &str| {
        vec![
            Series { name: format!("FP {what}"), points: pts(&fe, 0, key, scale) },
            Series { name: format!("ternary {what}"), points: pts(&te, fe.len(), key, scale) },
        ]
    };
    let mut loss = series("train_loss", 1.0, "train");
    loss.extend(series("test_loss", 1.0, "test"));
    line_charts(&[
        Panel { title: "Loss".into(), x_label: "epoch".into(), y_label: "cross-entropy".into(), series: loss },
        Panel {
            title: "Test accuracy".into(),
            x_label: "epoch".into(),
            y_label: "top-1 accuracy (%)".into(),
            series: series("test_acc", 100.0, "test"),
        },
    ])
}

fn epochs(n: usize) -> String {
    format!("{n} epoch{}", if n == 1 { "" } else { "s" })
}

/// Wall time of a finished training run, summed over its epochs.
fn training_seconds(dir: &Path) -> f64 {
    std::fs::read(dir.join("metrics.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .and_then(|m| m["epochs"].as_array().map(|e| e.iter().map(|x| f(&x["seconds"])).sum()))
        .unwrap_or(0.0)
}

/// Epochs a training folder has finished (None: no checkpoint yet).
fn epochs_done(dir: &Path) -> Option<usize> {
    if !dir.join("model.safetensors").is_file() {
        return None;
    }
    let m: Value = serde_json::from_slice(&std::fs::read(dir.join("metrics.json")).ok()?).ok()?;
    Some(m["epochs"].as_array().map_or(0, |e| e.len()))
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("{}: not JSON", path.display()))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn pct(v: f64) -> String {
    format!("{:.2}", 100.0 * v)
}

fn build_report(
    plan: &Plan,
    out: &Path,
    stages: &[Stage],
    seconds: &[f64],
    how: &[&str],
    total: f64,
) -> anyhow::Result<Doc> {
    let fp = read_json(&out.join("fp/metrics.json"))?;
    let tn = read_json(&out.join("ternary/metrics.json"))?;
    let prof =
        [read_json(&out.join("profile-fp/sparsity.json"))?, read_json(&out.join("profile-ternary/sparsity.json"))?];
    let sims: Vec<(String, String, Value)> = [
        ("fp", "train", "fp"),
        ("fp", "infer", "fp"),
        ("ternary", "train", "ternary"),
        ("ternary", "infer", "ternary"),
        ("ternary", "train-masks", "ternary, real zero masks"),
    ]
    .iter()
    .map(|(m, t, label)| {
        Ok((label.to_string(), t.to_string(), read_json(&out.join(format!("sim-{m}-{t}/summary.json")))?))
    })
    .collect::<anyhow::Result<_>>()?;
    let inf = read_json(&out.join("infer-ternary.json"))?;
    let (fp_acc, tn_acc) = (f(&fp["test_accuracy"]), f(&tn["test_accuracy"]));
    let mode = if plan.quick {
        format!(
            "**quick mode**: {} FP + {} ternary epochs on the first {} training images, evaluated on {} test images; accuracies are far from converged",
            plan.fp_epochs,
            plan.ternary_epochs,
            plan.train_limit.map_or("all".into(), |n| n.to_string()),
            plan.test_limit.map_or("all".into(), |n| n.to_string())
        )
    } else if plan.full {
        format!(
            "full-length run: {} FP + {} ternary epochs on {} training images, random crops (pad 2) and flips",
            plan.fp_epochs,
            plan.ternary_epochs,
            plan.train_limit.map_or("all".into(), |n| n.to_string())
        )
    } else {
        format!(
            "default run: {} FP + {} ternary epochs on {} training images (a shortened schedule; the full-length one is under Reproduce)",
            plan.fp_epochs,
            plan.ternary_epochs,
            plan.train_limit.map_or("all".into(), |n| n.to_string())
        )
    };
    // where the training ran, as its metrics recorded it
    let dev = &fp["device"];
    let ran_on = match dev["device"].as_str() {
        Some(d) if d.starts_with("cuda") => format!(
            "{d} ({}, {} convolutions, {} algorithms)",
            dev["gpu"].as_str().unwrap_or("GPU"),
            dev["precision"].as_str().unwrap_or("?"),
            dev["algorithms"].as_str().unwrap_or("?")
        ),
        Some(d) => format!("{d} ({} threads)", dev["threads"].as_u64().map_or("?".into(), |t| t.to_string())),
        None => "not recorded".into(),
    };
    let mut d = Doc {
        title: format!("tern run: {} on {}", plan.model, fp["data"].as_str().unwrap_or(&plan.data)),
        ..Default::default()
    };
    d.p(format!(
        "{mode}. Trained on {ran_on}. Wall time {:.1} min. Written by `tern run` ({}).",
        total / 60.0,
        env!("CARGO_PKG_VERSION")
    ));

    d.h(1, "Summary");
    let tern_sim = &sims[2].2;
    d.list(vec![
        format!(
            "Test accuracy: full precision **{}%**, ternary **{}%** ({:+.2} points).",
            pct(fp_acc),
            pct(tn_acc),
            100.0 * (tn_acc - fp_acc)
        ),
        format!(
            "Ternary weights carry {:.1}% of the multiply-adds; the model packs into {:.1} KiB instead of {:.1} KiB ({:.1}x smaller).",
            100.0 * f(&tn["ternary_macs_per_image"]) / f(&tn["macs_per_image"]),
            f(&tn["bytes_packed"]) / 1024.0,
            f(&tn["bytes_fp32"]) / 1024.0,
            f(&tn["bytes_fp32"]) / f(&tn["bytes_packed"])
        ),
        format!(
            "Multiply-adds with two non-zero operands (ternary): forward {:.2}, backward {:.2}, weight gradient {:.2} (FP: {:.2} / {:.2} / {:.2}; paper, ResNet-34: 0.16 / 0.37 / 0.37).",
            f(&prof[1]["totals"]["forward"]),
            f(&prof[1]["totals"]["backward"]),
            f(&prof[1]["totals"]["weight_grad"]),
            f(&prof[0]["totals"]["forward"]),
            f(&prof[0]["totals"]["backward"]),
            f(&prof[0]["totals"]["weight_grad"])
        ),
        format!(
            "DLAC (dlac-fp32-train) trains the ternary model at {:.0} equivalent FLOP/cycle, {:.2} TFLOP/s at 500 MHz, {:.2}x faster than without zero-skipping, {:.2} TFLOP/s/mm² on {:.2} mm².",
            f(&tern_sim["flops_per_cycle_overall"]),
            f(&tern_sim["tflops_at_clock"]),
            f(&tern_sim["speedup"]),
            f(&tern_sim["tflops_per_mm2"]),
            f(&tern_sim["area_mm2"])
        ),
        format!(
            "On this CPU the ternary model runs in {:.3} ms per image on tern's u8 engine at {}% top-1 (the FP32 forward through tern's training kernels: {:.3} ms; against ONNX Runtime see BENCHMARKS.md).",
            f(&inf["latency_ms_u8"]),
            pct(f(&inf["test_accuracy_u8"])),
            f(&inf["latency_ms_fp32"])
        ),
    ]);

    d.h(1, "Accuracy, compute and size");
    let row = |name: &str, m: &Value| {
        let epochs = m["epochs"].as_array().cloned().unwrap_or_default();
        let secs: f64 = epochs.iter().map(|e| f(&e["seconds"])).sum();
        let wz = epochs.last().and_then(|e| e["weight_zero_fraction"].as_f64());
        vec![
            name.to_string(),
            pct(f(&m["test_accuracy"])),
            pct(f(&m["test_top5"])),
            epochs.len().to_string(),
            format!("{:.1}", secs / 60.0),
            format!("{:.1}", f(&m["macs_per_image"]) / 1e6),
            format!("{:.1}", 100.0 * f(&m["ternary_macs_per_image"]) / f(&m["macs_per_image"])),
            wz.map_or("-".into(), |z| format!("{:.1}", 100.0 * z)),
            format!("{:.1}", f(&m["params"]) / 1e6),
            format!("{:.1}", f(&m["bytes_packed"]) / 1024.0),
        ]
    };
    d.table(
        &[
            "model",
            "test top-1 %",
            "top-5 %",
            "epochs",
            "train min",
            "M MACs/image",
            "ternary MACs %",
            "zero weights %",
            "M params",
            "size KiB",
        ],
        vec![row("full precision", &fp), row("ternary", &tn)],
    );
    d.p("The ternary model starts from the trained FP weights (Eq. 1 thresholds, TWN scale), keeps the first layer in full precision (SkipLayer), uses the ReLU threshold 0.01 (ReluT) and fine-tunes with straight-through gradients on full-precision shadow weights. Size counts ternary weights at 2 bits.");
    write_atomic(&out.join("curves.svg"), curves(&fp, &tn).as_bytes())?;
    d.figure(
        "curves.svg",
        "Loss and test accuracy per epoch: full-precision training, then ternary fine-tuning from its weights.",
    );

    d.h(1, "Sparsity (Table 1 and Fig. 1)");
    d.p("Fraction of each layer's multiply-adds whose two operands are both non-zero, counted exactly over the profiled training batches: forward (weights x input), backward (weights x output gradient) and weight gradient (output gradient x input).");
    let layers = |p: &Value| p["layers"].as_array().cloned().unwrap_or_default();
    let (lf, lt) = (layers(&prof[0]), layers(&prof[1]));
    let mut rows = Vec::new();
    for (i, (a, b)) in lf.iter().zip(&lt).enumerate() {
        // null: the pass never ran (the first layer's input gradient)
        let nz = |l: &Value, k: usize| l["nonzero_frac"][k].as_f64().map_or("-".into(), |v| format!("{v:.2}"));
        rows.push(vec![
            (i + 1).to_string(),
            a["name"].as_str().unwrap_or("").to_string(),
            nz(a, 0),
            nz(a, 1),
            nz(a, 2),
            nz(b, 0),
            nz(b, 1),
            nz(b, 2),
            format!("{:.1}", 100.0 * f(&b["weight_zero_frac"])),
        ]);
    }
    let tot = |p: &Value, k: &str| format!("{:.2}", f(&p["totals"][k]));
    rows.push(vec![
        "all".into(),
        String::new(),
        tot(&prof[0], "forward"),
        tot(&prof[0], "backward"),
        tot(&prof[0], "weight_grad"),
        tot(&prof[1], "forward"),
        tot(&prof[1], "backward"),
        tot(&prof[1], "weight_grad"),
        String::new(),
    ]);
    d.table(
        &[
            "#",
            "layer",
            "FP fwd",
            "FP bwd",
            "FP grad",
            "ternary fwd",
            "ternary bwd",
            "ternary grad",
            "ternary zero weights %",
        ],
        rows,
    );
    let series = |name: &str, p: &Value| Series {
        name: name.into(),
        points: ["forward", "backward", "weight_grad"]
            .iter()
            .enumerate()
            .map(|(i, k)| (i as f64, f(&p["totals"][k])))
            .collect(),
    };
    let fig1 = grouped_bars(
        "Multiply-adds on two non-zero operands",
        "non-zero fraction",
        &["forward".into(), "backward".into(), "weight gradient".into()],
        &[series("full precision", &prof[0]), series("ternary", &prof[1])],
    );
    write_atomic(&out.join("fig1.svg"), fig1.as_bytes())?;
    d.figure("fig1.svg", "Fig. 1 analogue: non-zero fraction of the multiply-adds per pass, FP vs ternary.");
    d.figure("profile-ternary/layers.svg", "Ternary model: non-zero fraction per layer and pass.");

    d.h(1, "DLAC simulation (Fig. 5)");
    d.p("Each conv and linear layer of each pass is an mmOp on DLAC's PE grid; the cycle engine skips every multiply-add with a zero operand (operand masks drawn from the profiled zero fractions). `dlac-fp32-train` runs the three training passes, `dlac-fp16-infer` the forward pass. FLOP/cycle counts the dense layer's 2·K·CRS·PQ over the simulated cycles. The column with ptWiseOps adds the cycles of the forward program's BN (one mul-add), ReLU (one `?:`) and residual adds on the output buffers. The last row runs the same training workload on the real zeros of one profiled image (spatial structure included) instead of independent draws. Energy per image comes from cited per-operation and per-access energies scaled to 14 nm, off-chip traffic included (DLAC.md, \"Energy model\").");
    let mut rows = Vec::new();
    for (m, t, s) in &sims {
        rows.push(vec![
            m.clone(),
            s["config"]["name"].as_str().unwrap_or(t).to_string(),
            f(&s["ops"]).to_string(),
            format!("{:.0}", f(&s["flops_per_cycle_overall"])),
            if f(&s["pointwise_cycles"]) > 0.0 {
                format!("{:.0}", f(&s["flops_per_cycle_with_pointwise"]))
            } else {
                "-".into()
            },
            format!("{:.0}", f(&s["flops_per_cycle_mean_of_layers"])),
            format!("{:.0}", f(&s["flops_per_cycle_max"])),
            format!("{:.0}", f(&s["dense_flops_per_cycle"])),
            format!("{:.2}", f(&s["tflops_at_clock"])),
            format!("{:.2}", f(&s["area_mm2"])),
            format!("{:.2}", f(&s["tflops_per_mm2"])),
            format!("{:.2}", f(&s["speedup"])),
            format!("{:.2}–{:.2}", f(&s["speedup_min"]), f(&s["speedup_max"])),
            format!("{:.0}", f(&s["energy_pj_per_image"]) * 1e-6),
            format!("{:.2}", f(&s["pj_per_flop"])),
            format!("{:.0}", f(&s["energy_saved_pct"])),
        ]);
    }
    d.table(
        &[
            "model",
            "config",
            "mmOps",
            "FLOP/cycle",
            "with ptWiseOps",
            "mean per op",
            "max",
            "peak w/o skipping",
            "TFLOP/s",
            "area mm²",
            "TFLOP/s/mm²",
            "speedup",
            "per-op speedup",
            "µJ / image",
            "pJ / useful FLOP",
            "energy saved %",
        ],
        rows,
    );
    d.p("Paper (ResNet-34 on ImageNet, dlac-fp32-train): ~2.7K FLOP/cycle on average, up to ~5K, ~1.3 TFLOP/s at 500 MHz, 2.2 mm², ~0.6 TFLOP/s/mm², 1.8–5x over no skipping. The area comes from tern's area model (DLAC.md).");
    let csv_rows = |path: &Path| -> anyhow::Result<Vec<Vec<String>>> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(text
            .lines()
            .skip(1)
            .map(|l| {
                let c: Vec<&str> = l.split(',').collect();
                // layer,pass,k,crs,pq,weight_zero_pct,ifm_zero_pct,cycles,flops_per_cycle,speedup,utilisation
                let num = |i: usize, dp: usize| {
                    c.get(i).and_then(|v| v.parse::<f64>().ok()).map_or("-".into(), |v| format!("{v:.dp$}"))
                };
                vec![
                    c[0].to_string(),
                    c[1].to_string(),
                    c[2].to_string(),
                    c[3].to_string(),
                    c[4].to_string(),
                    num(5, 1),
                    num(6, 1),
                    num(7, 0),
                    num(8, 0),
                    num(9, 2),
                    c.get(10).and_then(|v| v.parse::<f64>().ok()).map_or("-".into(), |v| format!("{:.1}", 100.0 * v)),
                ]
            })
            .collect())
    };
    d.p("Operands: in the forward pass the row operand is the weights and the column operand the input; backward: weights and output gradient; weight gradient: output gradient and input. Batch norm makes the output gradients of conv layers dense, which caps the backward-pass gain.");
    let header =
        ["layer", "pass", "K", "CRS", "PQ", "row zero %", "col zero %", "cycles", "FLOP/cycle", "speedup", "util %"];
    d.h(2, "Ternary model on dlac-fp32-train (training)");
    d.table(&header, csv_rows(&out.join("sim-ternary-train/layers.csv"))?);
    d.figure(
        "sim-ternary-train/flops_per_cycle.svg",
        "Fig. 5 analogue: ternary model, equivalent FLOP/cycle per layer and pass against the no-skipping peak.",
    );
    d.h(2, "Ternary model on dlac-fp16-infer (inference)");
    d.table(&header, csv_rows(&out.join("sim-ternary-infer/layers.csv"))?);
    d.figure("sim-ternary-infer/flops_per_cycle.svg", "Ternary model, forward pass on the FP16 inference instance.");
    d.figure("sim-fp-train/flops_per_cycle.svg", "For comparison: the full-precision model on dlac-fp32-train.");

    d.h(1, "CPU inference (tern-infer)");
    let packed_kib = std::fs::metadata(out.join("ternary.tern")).map(|m| m.len() as f64 / 1024.0).unwrap_or(f64::NAN);
    d.p(format!(
        "The ternary model as tern's CPU engine runs it: BN folded, ReLU and residuals fused into each convolution, u8 activations calibrated on {} training images, ternary weights as 2-bit codes, the `{}` kernel on {} threads; batch 1, median of {} test images. Its predictions match the FP32 forward's on {:.2}% of the {} test images.",
        inf["calibration_images"],
        inf["kernel"].as_str().unwrap_or("?"),
        inf["threads"],
        inf["timed_images"],
        100.0 * f(&inf["agreement"]),
        inf["samples"]
    ));
    d.table(
        &["engine", "test top-1 %", "latency ms", "model file KiB"],
        vec![
            vec![
                "tern u8 engine (ternary.tern)".into(),
                pct(f(&inf["test_accuracy_u8"])),
                format!("{:.3}", f(&inf["latency_ms_u8"])),
                format!("{packed_kib:.1}"),
            ],
            vec![
                "tern FP32 forward (training kernels, batch 1)".into(),
                pct(f(&inf["test_accuracy_fp32"])),
                format!("{:.3}", f(&inf["latency_ms_fp32"])),
                format!("{:.1}", f(&tn["bytes_fp32"]) / 1024.0),
            ],
        ],
    );
    d.p("How it compares with ONNX Runtime (FP32 and int8) on the same machine: `python3 bench/infer_vs_ort.py --checkpoint ternary/model.safetensors` (BENCHMARKS.md).");

    d.h(1, "Reproduce");
    d.p("The command of every stage (each writes into its own folder under the run's folder); the table says which ran now and which an earlier, interrupted run had finished (a training stage's seconds are those of all its epochs):");
    d.code(stages.iter().map(|s| s.shell()).collect::<Vec<_>>().join("\n"));
    d.table(
        &["stage", "how", "seconds"],
        stages
            .iter()
            .zip(seconds)
            .zip(how)
            .map(|((s, t), h)| vec![s.title.clone(), h.to_string(), format!("{t:.1}")])
            .collect(),
    );
    if !plan.full {
        d.p("The full-length schedule behind the accuracy targets (FP vgg-small ≥ 93.0% on Fashion-MNIST, the ternary twin close to it; results and times in EXPERIMENTS.md) is `tern run --full`, with the same --device flags to run it on a GPU.");
    }
    Ok(d)
}
