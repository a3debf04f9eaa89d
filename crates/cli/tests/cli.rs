//! The `tern` binary end to end: the train/eval contract, and clear errors for bad input.

mod common;
use common::write_mnist_like;
use std::path::Path;
use std::process::{Command, Output};
use tern_data::idx::write_idx;

fn tern(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tern")).args(args).output().expect("runs tern")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn train_then_eval_follow_the_contract_and_resume_extends() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 200, 50);
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let dp = data.path().to_str().unwrap();
    let r = run.to_str().unwrap();
    let o = tern(&[
        "train",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "lenet5",
        "--epochs",
        "2",
        "--seed",
        "3",
        "--out",
        r,
        "--batch",
        "32",
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    let epochs = m["epochs"].as_array().unwrap();
    assert_eq!(epochs.len(), 2);
    for k in ["epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds", "images_per_s"] {
        assert!(epochs[1][k].is_number(), "metrics.json epochs[1].{k}");
    }
    let acc = m["test_accuracy"].as_f64().unwrap();
    let svg = std::fs::read_to_string(run.join("curves.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("</svg>"));

    let ck = run.join("model.safetensors");
    let o = tern(&["eval", "--checkpoint", ck.to_str().unwrap(), "--data", "mnist", "--data-path", dp, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!((e["test_accuracy"].as_f64().unwrap() - acc).abs() < 1e-9, "eval agrees with training's last evaluation");
    assert!(e["top5"].as_f64().unwrap() >= e["test_accuracy"].as_f64().unwrap());

    // Profile the trained network: exact counts, tables, workload and masks.
    let prof = out.path().join("prof");
    let o = tern(&[
        "profile",
        "--checkpoint",
        ck.to_str().unwrap(),
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--batches",
        "2",
        "--batch",
        "16",
        "--out",
        prof.to_str().unwrap(),
        "--masks",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(prof.join("sparsity.csv")).unwrap();
    assert!(csv.starts_with(
        "layer,kind,pass,k,crs,pq,macs,nonzero_macs,nonzero_frac,weight_zero_frac,input_zero_frac,grad_zero_frac,ms\n"
    ));
    // the first layer's input gradient never runs, so it has no row and no DLAC op
    assert_eq!(csv.lines().count(), 1 + 5 * 3 - 1, "5 mmOp layers x 3 passes, less one");
    let js: serde_json::Value = serde_json::from_slice(&std::fs::read(prof.join("sparsity.json")).unwrap()).unwrap();
    for pass in ["forward", "backward", "weight_grad"] {
        let f = js["totals"][pass].as_f64().unwrap();
        assert!(f > 0.0 && f <= 1.0, "{pass}: {f}");
    }
    let wl: serde_json::Value = serde_json::from_slice(&std::fs::read(prof.join("workload.json")).unwrap()).unwrap();
    assert_eq!(wl["mm_ops"].as_array().unwrap().len(), 14);
    for f in ["fig1.svg", "layers.svg", "table.txt", "workload.csv"] {
        assert!(prof.join(f).is_file(), "{f}");
    }
    let masks = tern_core::masks::read(&prof.join("masks.bin")).unwrap();
    assert_eq!(masks.len(), 15);
    // GradUpdate's zero errors: the same forward, and the classifier's backward work shrinks
    // (correct samples' rows of its output gradient are zero)
    let skip = out.path().join("prof-skip");
    let mut args: Vec<&str> = vec!["profile", "--checkpoint", ck.to_str().unwrap(), "--data", "mnist"];
    args.extend(["--data-path", dp, "--batches", "2", "--batch", "16", "--skip-correct"]);
    args.extend(["--out", skip.to_str().unwrap()]);
    let o = tern(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows = |dir: &std::path::Path| -> Vec<(String, String, u64)> {
        std::fs::read_to_string(dir.join("sparsity.csv"))
            .unwrap()
            .lines()
            .skip(1)
            .map(|l| {
                let f: Vec<&str> = l.split(',').collect();
                (f[0].to_string(), f[2].to_string(), f[7].parse().unwrap())
            })
            .collect()
    };
    let (plain, skipped) = (rows(&prof), rows(&skip));
    let (last_plain, last_skip) = (plain.last().unwrap(), skipped.last().unwrap());
    assert_eq!(last_plain.1, "weight_grad");
    assert!(last_skip.2 < last_plain.2, "classifier weight gradient: {last_skip:?} vs {last_plain:?}");
    for (a, b) in plain.iter().zip(&skipped).filter(|(a, _)| a.1 == "forward") {
        assert_eq!(a, b);
    }

    // The profiler's workload runs through the DLAC simulator.
    let wl = prof.join("workload.json");
    let (wls, masks) = (wl.to_str().unwrap().to_string(), prof.join("masks.bin").to_str().unwrap().to_string());
    let sim_with = |args: &[&str]| tern(&[&["sim", "--workload", wls.as_str()][..], args].concat());
    let sim = out.path().join("sim");
    let o = sim_with(&["--config", "dlac-fp16-infer", "--pass", "forward", "--out", sim.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let layers = std::fs::read_to_string(sim.join("layers.csv")).unwrap();
    assert!(layers
        .starts_with("layer,pass,k,crs,pq,weight_zero_pct,ifm_zero_pct,cycles,flops_per_cycle,speedup,utilisation"));
    assert_eq!(layers.lines().count(), 1 + 5);
    assert!(std::fs::read_to_string(sim.join("flops_per_cycle.svg")).unwrap().contains("</svg>"));
    let o = sim_with(&["--config", "no-such-preset"]);
    assert!(!o.status.success() && stderr(&o).contains("--config"));
    let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(sim.join("summary.json")).unwrap()).unwrap();
    for k in ["tflops_at_clock", "area_mm2", "tflops_per_mm2", "speedup", "flops_per_cycle_max"] {
        assert!(summary[k].as_f64().unwrap() > 0.0, "summary.json {k}");
    }

    // ... and on the real zeros the profiler saved
    let simm = out.path().join("sim-masks");
    let o = sim_with(&["--masks", &masks, "--out", simm.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(simm.join("layers.csv")).unwrap().lines().count(), 1 + 14);
    // the event engine on the same masks: the same contract, and its name in the summary
    let sime = out.path().join("sim-event");
    let o = sim_with(&["--masks", &masks, "--engine", "event", "--max-tiles", "0", "--out", sime.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let summary_of = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(dir.join("summary.json")).unwrap()).unwrap()
    };
    let (fast, event) = (summary_of(&simm), summary_of(&sime));
    assert_eq!((fast["engine"].as_str(), event["engine"].as_str()), (Some("fast"), Some("event")));
    for s in [&fast, &event] {
        for k in ["energy_pj_per_image", "pj_per_flop", "dram_bytes_per_image"] {
            assert!(s[k].as_f64().is_some_and(|v| v > 0.0), "summary.json {k}: {}", s[k]);
        }
    }
    let header = std::fs::read_to_string(sime.join("layers.csv")).unwrap();
    let header = header.lines().next().unwrap().to_string();
    assert!(header.contains(",dram_bytes,") && header.contains(",energy_pj,"), "{header}");
    let o = sim_with(&["--engine", "exact"]);
    assert!(!o.status.success() && stderr(&o).contains("--engine"), "{}", stderr(&o));
    let o = sim_with(&["--masks", wl_missing(&out)]);
    assert!(!o.status.success() && stderr(&o).contains("nowhere.bin"), "{}", stderr(&o));

    // The design-space sweep: every valid combination, one CSV row each, and a plot.
    let sweep = out.path().join("sweep");
    let o = tern(&[
        "sim",
        "--workload",
        wl.to_str().unwrap(),
        "--sweep",
        "rows=4,8",
        "--sweep",
        "units=1,2",
        "--sweep",
        "out_buffers=1,2",
        "--sweep",
        "precision=fp32,fp16",
        "--out",
        sweep.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let csv = std::fs::read_to_string(sweep.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 12, "16 combinations, 4 with 2 units on 1 buffer are invalid:\n{csv}");
    assert!(String::from_utf8_lossy(&o.stdout).contains("skipped 4 invalid"));
    assert!(std::fs::read_to_string(sweep.join("sweep.svg")).unwrap().contains("</svg>"));
    for (bad, why) in [
        ("depth=3", "unknown axis"),
        ("rows=a", "whole number"),
        ("rows", "AXIS=V1"),
        ("precision=fp8", "fp32 or fp16"),
        ("orientation=diagonal", "larger-along-longer"),
    ] {
        let o = tern(&["sim", "--workload", wl.to_str().unwrap(), "--sweep", bad]);
        assert!(
            !o.status.success() && stderr(&o).contains("--sweep") && stderr(&o).contains(why),
            "{bad}: {}",
            stderr(&o)
        );
    }

    // Training again into the same folder is refused; --resume extends the run.
    let o = tern(&["train", "--data", "mnist", "--data-path", dp, "--model", "lenet5", "--out", r, "--quiet"]);
    assert!(!o.status.success() && stderr(&o).contains("--resume"), "{}", stderr(&o));
    let o = tern(&["train", "--resume", r, "--epochs", "3", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(run.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(m["epochs"].as_array().unwrap().len(), 3);
}

#[test]
fn bad_input_gets_a_clear_error_and_a_nonzero_exit() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 20, 10);
    let dp = data.path().to_str().unwrap();
    let out = tempfile::tempdir().unwrap();
    let o_dir = out.path().join("x");
    let od = o_dir.to_str().unwrap();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["train", "--data", "mnist", "--data-path", dp, "--model", "alexnet", "--out", od],
            "unknown model `alexnet`",
        ),
        (vec!["train", "--data", "imagenet", "--out", od], "--data"),
        (vec!["train", "--data", "mnist", "--data-path", "/no/such/dir", "--out", od], "/no/such/dir"),
        (vec!["train", "--data", "mnist", "--data-path", dp, "--lr=-1", "--out", od], "--lr"),
        (vec!["train", "--data", "mnist", "--data-path", dp, "--batch", "0", "--out", od], "--batch"),
        (vec!["train", "--data", "mnist", "--data-path", dp, "--schedule", "linear", "--out", od], "--schedule"),
        (vec!["train", "--data", "mnist", "--data-path", dp, "--model", "resnet18", "--out", od], "too small"),
        (vec!["train", "--data", "mnist", "--data-path", dp, "--epochs", "zero", "--out", od], "--epochs"),
        (vec!["train", "--resume", "/no/such/run"], "/no/such/run"),
        (
            vec!["eval", "--checkpoint", "/no/such.safetensors", "--data", "mnist", "--data-path", dp],
            "/no/such.safetensors",
        ),
        (vec!["--threads", "0", "models"], "--threads"),
    ];
    for (args, needle) in cases {
        let o = tern(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: stderr lacks `{needle}`:\n{}", stderr(&o));
    }

    // Corrupt files: truncated gzip, wrong magic, label out of range.
    let img = data.path().join("t10k-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&img).unwrap();
    std::fs::write(&img, &bytes[..bytes.len() / 2]).unwrap();
    let o = tern(&["data", "--data", "mnist", "--data-path", dp]);
    assert!(
        !o.status.success() && stderr(&o).contains("t10k-images-idx3-ubyte.gz") && stderr(&o).contains("gzip"),
        "{}",
        stderr(&o)
    );
    write_idx(&img, &[10, 28, 28], &[0; 7840], true).unwrap();
    let lab = data.path().join("t10k-labels-idx1-ubyte.gz");
    write_idx(&lab, &[10], &[0, 1, 2, 3, 4, 5, 6, 7, 8, 12], true).unwrap();
    let o = tern(&["data", "--data", "mnist", "--data-path", dp]);
    assert!(!o.status.success() && stderr(&o).contains("label 12"), "{}", stderr(&o));
    std::fs::write(&lab, b"\x01\x02\x08\x01\x00\x00\x00\x01\x00").unwrap();
    let o = tern(&["data", "--data", "mnist", "--data-path", dp]);
    assert!(!o.status.success() && stderr(&o).contains("magic"), "{}", stderr(&o));
}

#[test]
fn models_and_data_commands() {
    let o = tern(&["models"]);
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stdout).contains("resnet152"));
    let o = tern(&["models", "resnet34", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["totals"]["params"].as_u64().unwrap(), 21_289_802); // 10 classes
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 30, 10);
    let grid = data.path().join("grid.png");
    let o = tern(&[
        "data",
        "--data",
        "mnist",
        "--data-path",
        data.path().to_str().unwrap(),
        "--grid",
        grid.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let img = image::open(&grid).unwrap();
    assert_eq!((img.width(), img.height()), (8 * 30 + 2, 10 * 30 + 2));
}

fn wl_missing(dir: &tempfile::TempDir) -> &'static str {
    Box::leak(dir.path().join("nowhere.bin").to_str().unwrap().to_string().into_boxed_str())
}

#[test]
fn run_quick_writes_a_complete_report_and_resumes() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 160, 40);
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let (dp, r) = (data.path().to_str().unwrap(), run.to_str().unwrap());
    let args = ["run", "--quick", "--data", "mnist", "--data-path", dp, "--out", r, "--quiet"];
    let o = tern(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(run.join("report.md")).unwrap();
    let html = std::fs::read_to_string(run.join("report.html")).unwrap();
    for section in [
        "## Summary",
        "## Accuracy, compute and size",
        "## Sparsity (Table 1 and Fig. 1)",
        "## DLAC simulation (Fig. 5)",
        "dlac-fp32-train",
        "dlac-fp16-infer",
        "TFLOP/s/mm²",
        "| ternary, real zero masks | dlac-fp32-train |",
        "## CPU inference (tern-infer)",
        "tern u8 engine (ternary.tern)",
        "tern infer --checkpoint",
        "## Reproduce",
        "tern train --data mnist",
        "tern profile --checkpoint",
        "tern sim --workload",
        "quick mode",
    ] {
        assert!(md.contains(section), "report.md lacks `{section}`");
    }
    assert!(!md.contains("NaN"), "report.md has NaN:\n{md}");
    // every referenced figure exists and is an SVG document; the HTML inlines each one
    let figures: Vec<&str> =
        md.lines().filter_map(|l| l.strip_prefix("![")).map(|l| &l[l.find("](").unwrap() + 2..l.len() - 1]).collect();
    assert!(figures.len() >= 6, "{figures:?}");
    for f in &figures {
        let svg = std::fs::read_to_string(run.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert!(svg.trim_start().starts_with("<svg") && svg.trim_end().ends_with("</svg>"), "{f} is not an SVG");
    }
    assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
    assert_eq!(html.matches("<svg").count(), figures.len(), "the HTML inlines every figure");
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"), "the HTML must not need the network");

    // a second call keeps the trained models; other settings into the same folder are refused
    let o = tern(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("already trained"), "{}", stderr(&o));
    let o = tern(&["run", "--quick", "--data", "mnist", "--data-path", dp, "--out", r, "--seed", "9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("other settings"), "{}", stderr(&o));

    // --full trains with augmentation and says so; it cannot be combined with --quick
    let full = out.path().join("full");
    let f = full.to_str().unwrap();
    let o = tern(&[
        "run",
        "--full",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "lenet5",
        "--fp-epochs",
        "1",
        "--ternary-epochs",
        "1",
        "--train-limit",
        "64",
        "--test-limit",
        "32",
        "--out",
        f,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(full.join("report.md")).unwrap();
    assert!(md.contains("full-length run") && md.contains("--crop-pad 2 --hflip"), "{md}");
    let o = tern(&["run", "--full", "--quick", "--data", "mnist", "--data-path", dp, "--out", f]);
    assert!(!o.status.success() && stderr(&o).contains("--quick"), "{}", stderr(&o));
}

#[test]
fn run_stops_with_the_data_errors_of_train() {
    let out = tempfile::tempdir().unwrap();
    let missing = out.path().join("nowhere");
    let r = out.path().join("run");
    let o = tern(&[
        "run",
        "--quick",
        "--data",
        "mnist",
        "--data-path",
        missing.to_str().unwrap(),
        "--out",
        r.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let t = tern(&["train", "--data", "mnist", "--data-path", missing.to_str().unwrap(), "--out", r.to_str().unwrap()]);
    let last = |s: String| s.lines().last().unwrap_or("").rsplit(": ").next().unwrap().to_string();
    assert_eq!(last(stderr(&o)), last(stderr(&t)), "run: {}\ntrain: {}", stderr(&o), stderr(&t));

    // a truncated image file
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 20, 10);
    let f = data.path().join("train-images-idx3-ubyte.gz");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let r2 = out.path().join("run2");
    let o = tern(&[
        "run",
        "--quick",
        "--data",
        "mnist",
        "--data-path",
        data.path().to_str().unwrap(),
        "--out",
        r2.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("train-images-idx3-ubyte.gz"), "{}", stderr(&o));
}

#[test]
fn run_quick_works_on_cifar_binaries_and_image_folders() {
    // CIFAR-10 binary: 1 label byte + 3072 pixel bytes per record
    let cifar = tempfile::tempdir().unwrap();
    let record = |i: usize| {
        let mut r = vec![(i % 10) as u8];
        r.extend((0..3072).map(|p| ((p * 7 + i * 13) % 251) as u8));
        r
    };
    for name in [
        "data_batch_1.bin",
        "data_batch_2.bin",
        "data_batch_3.bin",
        "data_batch_4.bin",
        "data_batch_5.bin",
        "test_batch.bin",
    ] {
        let bytes: Vec<u8> = (0..8).flat_map(record).collect();
        std::fs::write(cifar.path().join(name), bytes).unwrap();
    }
    // image folder: train/ and val/ with two classes of PNGs
    let folder = tempfile::tempdir().unwrap();
    for split in ["train", "val"] {
        for (c, class) in ["cat", "dog"].iter().enumerate() {
            let d = folder.path().join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            for i in 0..4 {
                let img = image::RgbImage::from_fn(20, 18, |x, y| {
                    image::Rgb([(x * 9) as u8, (y * 11) as u8, (c * 200 + i * 10) as u8])
                });
                img.save(d.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let out = tempfile::tempdir().unwrap();
    for (data, path, extra) in
        [("cifar10", cifar.path(), vec![]), ("folder", folder.path(), vec!["--image-size", "16"])]
    {
        let run = out.path().join(data);
        let mut args = vec![
            "run",
            "--quick",
            "--data",
            data,
            "--data-path",
            path.to_str().unwrap(),
            "--out",
            run.to_str().unwrap(),
            "--quiet",
        ];
        args.extend(extra);
        let o = tern(&args);
        assert!(o.status.success(), "{data}: {}", stderr(&o));
        let md = std::fs::read_to_string(run.join("report.md")).unwrap();
        assert!(md.contains(&format!("on {data}")) && md.contains("## DLAC simulation"), "{data}:\n{md}");
    }
}

#[test]
fn flags_that_would_be_ignored_are_refused() {
    for (args, culprit) in [
        (&["train", "--resume", "runs/x", "--lr", "0.1"][..], "--lr"),
        (&["train", "--resume", "runs/x", "--ternary"][..], "--ternary"),
        (&["train", "--lr-plateau", "--schedule", "step"][..], "--schedule"),
        (&["train", "--schedule", "bogus"][..], "possible values"),
        (&["profile", "--checkpoint", "c.safetensors", "--input-size", "32"][..], "--input-size"),
        (&["sim", "--workload", "w.json", "--sweep", "rows=16", "--masks", "m.bin"][..], "--masks"),
        (&["train", "--precision", "tf32"][..], "tf32 needs --device cuda"),
        (&["train", "--device", "gpu"][..], "--device"),
        (&["train", "--block-sparsity", "0.5"][..], "--block-sparsity"),
        (&["train", "--ternary", "--block-sparsity", "1.0"][..], "--block-sparsity"),
        (&["experiment", "ablation", "--block-sparsities", "0.5"][..], "--block-sparsities"),
        (&["bench", "infer", "--model", "lenet5", "--block-sparsity", "0.5"][..], "--ternary"),
    ] {
        let o = tern(args);
        assert!(!o.status.success(), "{args:?} was accepted");
        assert!(stderr(&o).contains(culprit), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn a_missing_gpu_is_a_clear_error() {
    // CI machines have no NVIDIA driver; where one exists this test has nothing to check
    let o = tern(&["bench", "train", "--device", "cuda", "--steps", "1"]);
    if o.status.success() {
        return;
    }
    let e = stderr(&o);
    assert!(e.contains("cuda:0") && !e.contains("panicked"), "{e}");
}

/// `tern import` of the committed width-8 torchvision ResNet-18 fixture into `dir` (asserted
/// to succeed).
fn import_fixture_resnet18(dir: &Path) -> Output {
    let w = Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx/tests/fixtures/resnet18_w8.safetensors");
    let (w, d) = (w.to_str().unwrap(), dir.to_str().unwrap());
    let o = tern(&[
        "import",
        "--format",
        "torchvision",
        "--arch",
        "resnet18",
        "--weights",
        w,
        "--input-size",
        "32",
        "--out",
        d,
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

#[test]
fn an_imported_torchvision_resnet_is_a_tern_checkpoint() {
    let out = tempfile::tempdir().unwrap();
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("../onnx/tests/fixtures");
    let w = fixtures.join("resnet18_w8.safetensors");
    let dir = out.path().join("imported");
    let o = import_fixture_resnet18(&dir);
    assert!(String::from_utf8_lossy(&o.stdout).contains("20 skipped"), "{}", String::from_utf8_lossy(&o.stdout));
    // the checkpoint loads as any tern checkpoint and computes PyTorch's logits
    let (mut model, c) = tern_train::checkpoint::load_model(&dir.join("model.safetensors")).unwrap();
    assert_eq!(c.meta["import"]["arch"], "resnet18");
    let f: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures.join("resnet18_w8.json")).unwrap()).unwrap();
    let v = |k: &str| f[k].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect::<Vec<f32>>();
    let be = tern_core::CpuBackend;
    let got =
        model.forward(&tern_train::Ctx::new(&be, false), &tern_core::Tensor::from_vec(&[2, 3, 32, 32], v("input")));
    let want = v("logits");
    for (a, b) in got.data().iter().zip(&want) {
        assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "{a} vs {b}");
    }
    let o = tern(&[
        "import",
        "--format",
        "torchvision",
        "--arch",
        "resnet34",
        "--weights",
        w.to_str().unwrap(),
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(!o.status.success() && stderr(&o).contains("resnet18_w8.safetensors"), "{}", stderr(&o));
}

#[test]
fn an_imported_imagenet_resnet_fine_tunes_on_grey_data_with_init_adapt() {
    let out = tempfile::tempdir().unwrap();
    let imp = out.path().join("imported");
    import_fixture_resnet18(&imp);
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 64, 16);
    let ckpt = imp.join("model.safetensors");
    let args = |adapt: bool, dir: &str| {
        let mut v = vec![
            "train",
            "--data",
            "mnist",
            "--data-path",
            data.path().to_str().unwrap(),
            "--model",
            "resnet18",
            "--width",
            "8",
            "--input-size",
            "32",
            "--epochs",
            "1",
            "--batch",
            "32",
            "--quiet",
            "--init-from",
            ckpt.to_str().unwrap(),
            "--ternary",
            "--fp-first-layer",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        v.extend(["--out".to_string(), out.path().join(dir).display().to_string()]);
        if adapt {
            v.push("--init-adapt".into());
        }
        v
    };
    let run = |a: Vec<String>| Command::new(env!("CARGO_BIN_EXE_tern")).args(a).output().unwrap();
    // 3 colours and 5 classes do not fit 1-channel, 10-class data without --init-adapt
    let o = run(args(false, "plain"));
    assert!(!o.status.success() && stderr(&o).contains("--init-adapt"), "{}", stderr(&o));
    let o = run(args(true, "adapted"));
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("RGB kernels summed") && e.contains("5 classes in the checkpoint, 10 here"), "{e}");
}

#[test]
fn an_exported_onnx_graph_holds_the_checkpoints_layers_and_weights() {
    use prost::Message;
    let out = tempfile::tempdir().unwrap();
    let dir = out.path().join("imported");
    import_fixture_resnet18(&dir);
    let ckpt = dir.join("model.safetensors");
    let onnx = out.path().join("r18.onnx");
    let o = tern(&["export", "--checkpoint", ckpt.to_str().unwrap(), "--onnx", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p = tern_onnx::proto::ModelProto::decode(std::fs::read(&onnx).unwrap().as_slice()).unwrap();
    let g = p.graph.unwrap();
    let count = |op: &str| g.node.iter().filter(|n| n.op_type.as_deref() == Some(op)).count();
    // ResNet-18: 20 convolutions (3 projections), a BN each, 8 residual adds, max pool, FC
    assert_eq!((count("Conv"), count("BatchNormalization"), count("Add")), (20, 20, 8));
    assert_eq!((count("MaxPool"), count("Gemm")), (1, 1));
    assert!(p.metadata_props.iter().any(|e| e.key.as_deref() == Some("tern.normalize")));
    // the weights are the checkpoint's, bit for bit
    let (mut model, _) = tern_train::checkpoint::load_model(&ckpt).unwrap();
    let mut checked = 0;
    model.visit_params(&mut |prm| {
        if let Some(t) = g.initializer.iter().find(|t| t.name.as_deref() == Some(prm.name.as_str())) {
            assert_eq!(tern_onnx::export::tensor_values(t).unwrap(), prm.value.data(), "{}", prm.name);
            checked += 1;
        }
    });
    assert_eq!(checked, 62, "every parameter is an initializer");
    // a checkpoint that is not there is named
    let o = tern(&["export", "--checkpoint", "/nonexistent/model.safetensors", "--onnx", onnx.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("/nonexistent/model.safetensors"), "{}", stderr(&o));
}

#[test]
fn experiment_runs_in_parallel_give_the_results_of_one_at_a_time() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 160, 40);
    let out = tempfile::tempdir().unwrap();
    let dp = data.path().to_str().unwrap();
    let csv = |jobs: &str| {
        let o_dir = out.path().join(format!("jobs{jobs}"));
        let o = tern(&[
            "experiment",
            "fp-vs-ternary",
            "--data",
            "mnist",
            "--data-path",
            dp,
            "--models",
            "lenet5",
            "--epochs",
            "1",
            "--seeds",
            "2",
            "--batch",
            "32",
            "--jobs",
            jobs,
            "--out",
            o_dir.to_str().unwrap(),
            "--quiet",
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let text = std::fs::read_to_string(o_dir.join("fpvsternary").join("runs.csv")).unwrap();
        // every column but the wall time
        let rows: Vec<Vec<String>> = text
            .lines()
            .map(|l| l.split(',').enumerate().filter(|(i, _)| *i != 6).map(|(_, v)| v.to_string()).collect())
            .collect();
        rows
    };
    let (one, two) = (csv("1"), csv("2"));
    assert_eq!(one.len(), 5, "a header and 2 configurations × 2 seeds");
    assert_eq!(one, two);
    // results shipped without their checkpoints are reused as they are, not trained again
    let runs_dir = out.path().join("jobs1").join("fpvsternary");
    let metrics: Vec<std::path::PathBuf> = std::fs::read_dir(&runs_dir)
        .unwrap()
        .flat_map(|c| std::fs::read_dir(c.unwrap().path()).into_iter().flatten())
        .map(|s| s.unwrap().path())
        .filter(|p| p.is_dir())
        .inspect(|run| std::fs::remove_file(run.join("model.safetensors")).unwrap())
        .map(|run| run.join("metrics.json"))
        .collect();
    assert_eq!(metrics.len(), 4);
    let before: Vec<String> = metrics.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert_eq!(csv("1"), one);
    let after: Vec<String> = metrics.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect();
    assert_eq!(before, after, "reused runs are not retrained");
    assert!(metrics.iter().all(|p| !p.with_file_name("model.safetensors").exists()));
    let o = tern(&["experiment", "fp-vs-ternary", "--data", "mnist", "--data-path", dp, "--jobs", "0"]);
    assert!(!o.status.success() && stderr(&o).contains("--jobs"), "{}", stderr(&o));
}

#[test]
fn the_lowering_experiment_fine_tunes_each_seeds_fp_run() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 128, 32);
    let out = tempfile::tempdir().unwrap();
    let (dp, od) = (data.path().to_str().unwrap(), out.path().to_str().unwrap());
    let o = tern(&[
        "experiment",
        "lowering",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "lenet5",
        "--width",
        "0",
        "--epochs",
        "2",
        "--finetune-epochs",
        "1",
        "--seeds",
        "2",
        "--batch",
        "32",
        "--jobs",
        "2",
        "--out",
        od,
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let dir = out.path().join("lowering");
    let runs = std::fs::read_to_string(dir.join("runs.csv")).unwrap();
    let lowered: Vec<&str> = runs.lines().filter(|l| l.starts_with("lenet5 lowered,")).collect();
    assert_eq!(lowered.len(), 2, "{runs}");
    for l in lowered {
        let cols: Vec<&str> = l.split(',').collect();
        assert_eq!(cols[3], "1", "one fine-tuning epoch: {l}");
        assert!(!cols[7].is_empty(), "the lowered net has ternary weights: {l}");
    }
    // each lowered run started from its own seed's FP weights
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("lenet5_lowered/seed1/metrics.json")).unwrap()).unwrap();
    assert!(m.to_string().contains("lenet5_fp32/seed1/model.safetensors"), "{m}");
    let curves = std::fs::read_to_string(dir.join("curves.csv")).unwrap();
    assert_eq!(curves.lines().count(), 1 + 2 + 1, "{curves}");
    assert!(std::fs::read_to_string(dir.join("lowering-curves.svg")).unwrap().contains("</svg>"));
}

#[test]
fn infer_runs_a_checkpoint_on_the_u8_engine_and_reports_both_accuracies() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 160, 40);
    let out = tempfile::tempdir().unwrap();
    let run = out.path().join("run");
    let dp = data.path().to_str().unwrap();
    let o = tern(&[
        "train",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "vgg-small",
        "--width",
        "8",
        "--epochs",
        "1",
        "--ternary",
        "--fp-first-layer",
        "--batch",
        "32",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = run.join("model.safetensors");
    let args = ["infer", "--checkpoint", ck.to_str().unwrap(), "--data", "mnist", "--data-path", dp];
    let o = tern(&[&args[..], &["--bench", "5", "--batch", "2", "--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    for k in [
        "test_accuracy",
        "top5",
        "test_accuracy_u8",
        "test_accuracy_fp32",
        "agreement",
        "latency_ms_u8",
        "latency_ms_p50",
        "latency_ms_p90",
        "latency_ms_p99",
        "images_per_s",
        "latency_ms_fp32",
        "speedup",
    ] {
        assert!(r[k].as_f64().is_some(), "`{k}` in {r}");
    }
    let f = |k: &str| r[k].as_f64().unwrap();
    assert!(f("top5") >= f("test_accuracy") && f("latency_ms_p90") >= f("latency_ms_p50"), "{r}");
    assert!((f("images_per_s") - 2.0 * 1e3 / f("latency_ms_p50")).abs() < 1e-6 * f("images_per_s"), "{r}");
    // random weights of a chosen zero fraction, timed without data
    let o = tern(&["bench", "infer", "--model", "lenet5", "--size", "28", "--channels", "1", "--classes", "10"]);
    let o2 = tern(&["bench", "infer", "--model", "lenet5", "--size", "28", "--channels", "1", "--ternary", "--json"]);
    for o in [&o, &o2] {
        assert!(o.status.success(), "{}", stderr(o));
        let last = String::from_utf8_lossy(&o.stdout).lines().last().unwrap().to_string();
        let b: serde_json::Value = serde_json::from_str(&last).unwrap();
        for k in ["ms_median", "ms_p90", "images_per_s"] {
            assert!(b[k].as_f64().is_some_and(|v| v > 0.0), "`{k}` in {b}");
        }
    }
    let bad = tern(&["bench", "infer", "--model", "lenet5", "--size", "28", "--ternary", "--weight-zeros", "1.5"]);
    assert!(!bad.status.success() && stderr(&bad).contains("--weight-zeros"), "{}", stderr(&bad));
    // block-sparse weights: the kernel per conv chosen by timing, reported
    let lenet = ["bench", "infer", "--model", "lenet5", "--size", "28", "--channels", "1", "--ternary"];
    let o = tern(&[&lenet[..], &["--block-sparsity", "0.5", "--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let b: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(b["block_sparsity"] == 0.5 && b["convs"].as_u64() == Some(2) && b["skipping_convs"].is_u64(), "{b}");
    let bad = tern(&[&lenet[..], &["--block-sparsity", "1"]].concat());
    assert!(!bad.status.success() && stderr(&bad).contains("--block-sparsity"), "{}", stderr(&bad));
    // each convolution's kernel was chosen by timing both
    let kernels = r["kernels"].as_array().unwrap();
    assert!(kernels.len() >= 5 && kernels.iter().all(|k| k["dense_ms"].as_f64().unwrap() > 0.0), "{r}");
    assert_eq!(r["samples"], 40);
    assert!(r["agreement"].as_f64().unwrap() >= 0.9, "the u8 engine mostly predicts as the FP32 model: {r}");
    // the FP32 side is `tern eval`'s accuracy
    let e = tern(&["eval", "--checkpoint", ck.to_str().unwrap(), "--data", "mnist", "--data-path", dp, "--json"]);
    let e: serde_json::Value = serde_json::from_slice(&e.stdout).unwrap();
    assert!((e["test_accuracy"].as_f64().unwrap() - r["test_accuracy_fp32"].as_f64().unwrap()).abs() < 1e-9);
    let o = tern(&[&args[..], &["--calibrate", "0"]].concat());
    assert!(!o.status.success() && stderr(&o).contains("--calibrate"), "{}", stderr(&o));

    // the packed file: written, read back, verified, and the same predictions
    let packed = out.path().join("m.tern");
    let pk = packed.to_str().unwrap();
    let o =
        tern(&["export", "--checkpoint", ck.to_str().unwrap(), "--packed", pk, "--data", "mnist", "--data-path", dp]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("FP32 weights"));
    let o = tern(&["infer", "--model", pk, "--verify", "--data", "mnist", "--data-path", dp, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let p: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(p["test_accuracy_u8"], r["test_accuracy_u8"], "the file runs as the plan it was made from");
    let mut bytes = std::fs::read(&packed).unwrap();
    bytes.truncate(bytes.len() - 100);
    std::fs::write(&packed, &bytes).unwrap();
    let o = tern(&["infer", "--model", pk, "--data", "mnist", "--data-path", dp]);
    assert!(!o.status.success() && stderr(&o).contains("m.tern") && stderr(&o).contains("truncated"), "{}", stderr(&o));
    let o = tern(&["export", "--checkpoint", ck.to_str().unwrap()]);
    assert!(!o.status.success() && stderr(&o).contains("--packed"), "{}", stderr(&o));
}

#[test]
fn an_exported_thresholded_relu_net_comes_back_through_onnx_with_the_same_loss() {
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 96, 40);
    let out = tempfile::tempdir().unwrap();
    let (dp, run) = (data.path().to_str().unwrap(), out.path().join("run"));
    let o = tern(&[
        "train",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "resnet20",
        "--width",
        "4",
        "--epochs",
        "1",
        "--ternary",
        "--fp-first-layer",
        "--relu-threshold",
        "0.05",
        "--batch",
        "32",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = run.join("model.safetensors");
    let onnx = out.path().join("r20.onnx");
    let o = tern(&["export", "--checkpoint", ck.to_str().unwrap(), "--onnx", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let back = out.path().join("back");
    let o = tern(&["import", "--format", "onnx", "--weights", onnx.to_str().unwrap(), "--out", back.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let eval = |c: &Path| {
        let o = tern(&["eval", "--checkpoint", c.to_str().unwrap(), "--data", "mnist", "--data-path", dp, "--json"]);
        assert!(o.status.success(), "{}", stderr(&o));
        serde_json::from_slice::<serde_json::Value>(&o.stdout).unwrap()
    };
    let (a, b) = (eval(&ck), eval(&back.join("model.safetensors")));
    let (la, lb) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
    assert!((la - lb).abs() <= 1e-5 * la.abs().max(1.0), "loss {la} vs {lb} after the round trip");
}

#[test]
fn an_onnx_cnn_of_no_known_architecture_imports_trains_and_runs_everywhere() {
    use tern_train::models::{LayerSpec::*, GRAPH_MODEL};
    let data = tempfile::tempdir().unwrap();
    write_mnist_like(data.path(), 96, 40);
    let out = tempfile::tempdir().unwrap();
    let dp = data.path().to_str().unwrap();
    // a small CNN none of tern's architectures is, written as ONNX by tern's exporter
    let spec = vec![
        Conv { c_out: 8, k: 3, stride: 1, pad: 1, bias: true },
        Relu,
        MaxPool { k: 2, stride: 2, pad: 0 },
        Residual {
            body: vec![
                Conv { c_out: 8, k: 3, stride: 1, pad: 1, bias: false },
                BatchNorm { eps: 1e-5 },
                Relu,
                Conv { c_out: 8, k: 3, stride: 1, pad: 1, bias: false },
                BatchNorm { eps: 1e-5 },
            ],
            shortcut: None,
        },
        GlobalAvgPool,
        Linear { d_out: 10, bias: true },
    ];
    let cfg = tern_train::ModelConfig {
        name: GRAPH_MODEL.into(),
        in_shape: [1, 28, 28],
        classes: 10,
        width: 0,
        small_input: false,
        spec: Some(spec),
    };
    let mut m = tern_train::models::build(&cfg, &mut tern_core::Rng::new(1)).unwrap();
    let onnx = out.path().join("custom.onnx");
    tern_onnx::export::write_onnx(&onnx, &mut m, &[]).unwrap();
    let imported = out.path().join("imported");
    let o =
        tern(&["import", "--format", "onnx", "--weights", onnx.to_str().unwrap(), "--out", imported.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("graph"), "{}", String::from_utf8_lossy(&o.stdout));
    let ck = imported.join("model.safetensors");
    let c = ck.to_str().unwrap();
    let run = out.path().join("tuned");
    let o = tern(&[
        "train",
        "--data",
        "mnist",
        "--data-path",
        dp,
        "--model",
        "graph",
        "--init-from",
        c,
        "--ternary",
        "--fp-first-layer",
        "--epochs",
        "1",
        "--batch",
        "32",
        "--out",
        run.to_str().unwrap(),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let tuned = run.join("model.safetensors");
    let t = tuned.to_str().unwrap();
    for args in [
        vec!["eval", "--checkpoint", c, "--data", "mnist", "--data-path", dp],
        vec![
            "profile",
            "--checkpoint",
            t,
            "--data",
            "mnist",
            "--data-path",
            dp,
            "--batches",
            "1",
            "--batch",
            "8",
            "--out",
        ],
        vec!["infer", "--checkpoint", t, "--data", "mnist", "--data-path", dp],
    ] {
        let mut args: Vec<String> = args.into_iter().map(String::from).collect();
        if args[0] == "profile" {
            args.push(out.path().join("prof").display().to_string());
        }
        let args: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        let o = tern(&args);
        assert!(o.status.success(), "tern {}: {}", args[0], stderr(&o));
    }
    let o = tern(&["train", "--data", "mnist", "--data-path", dp, "--model", "graph", "--out", t]);
    assert!(!o.status.success() && stderr(&o).contains("--init-from"), "{}", stderr(&o));
}
