//! `tern train`: train a model, or resume a killed run, and write the run's files.

use crate::common::{parse_input_size, DataArgs};
use crate::plot::{line_charts, Panel, Series};
use crate::progress::Bars;
use crate::table::Table;
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use tern_core::quant::TernaryConfig;
use tern_data::Augment;
use tern_train::trainer::{CHECKPOINT_FILE, METRICS_FILE};
use tern_train::{EpochMetrics, ModelConfig, Recipe, ScheduleKind, SgdConfig, TrainConfig, Trainer};

#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    pub data: DataArgs,
    #[command(flatten)]
    pub device: crate::common::DeviceArgs,
    /// Model name (see `tern models`)
    #[arg(long, default_value = "vgg-small")]
    pub model: String,
    /// Base channel width (0: the model's default)
    #[arg(long, default_value_t = 0)]
    pub width: usize,
    /// ImageNet-style ResNets: 3x3 stride-1 stem without max pooling, for small images
    #[arg(long)]
    pub small_input: bool,
    /// Pad or crop images to this side length (default: the data's own size)
    #[arg(long, value_parser = parse_input_size)]
    pub input_size: Option<usize>,
    /// Epochs to train [default: 10]
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Images per SGD step
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Peak learning rate
    #[arg(long, default_value_t = 0.05)]
    pub lr: f32,
    /// Learning-rate schedule
    #[arg(long, default_value = "cosine", value_parser = ["constant", "step", "cosine", "onecycle", "plateau"])]
    pub schedule: String,
    /// step schedule: epochs between drops
    #[arg(long, default_value_t = 30)]
    pub step_every: usize,
    /// step schedule: factor per drop
    #[arg(long, default_value_t = 0.1)]
    pub step_gamma: f32,
    /// plateau schedule: epochs without train-error improvement before lowering
    #[arg(long, default_value_t = 2)]
    pub plateau_patience: usize,
    /// plateau schedule: factor per lowering
    #[arg(long, default_value_t = 0.2)]
    pub plateau_factor: f32,
    /// SGD momentum
    #[arg(long, default_value_t = 0.9)]
    pub momentum: f32,
    /// Nesterov momentum
    #[arg(long)]
    pub nesterov: bool,
    /// L2 weight decay (not applied to biases and BN parameters)
    #[arg(long, default_value_t = 5e-4)]
    pub weight_decay: f32,
    /// Augmentation: random crop after padding by this many pixels (0: off)
    #[arg(long, default_value_t = 0)]
    pub crop_pad: usize,
    /// Augmentation: random horizontal flips
    #[arg(long)]
    pub hflip: bool,
    /// Seed of the initial weights, the sample order and the augmentation
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Train on the first N training samples only
    #[arg(long)]
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test samples only
    #[arg(long)]
    pub test_limit: Option<usize>,
    /// Output folder
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue the run saved in DIR with the flags it was started with; only --epochs (to
    /// extend it), --data-path (where the same data lives here), --device, --precision,
    /// --algorithms and --quiet may be given
    #[arg(long, value_name = "DIR", conflicts_with_all = [
        "data", "image_size", "model", "width", "small_input", "input_size", "batch", "lr", "schedule",
        "step_every", "step_gamma", "plateau_patience", "plateau_factor", "momentum", "nesterov",
        "weight_decay", "crop_pad", "hflip", "seed", "train_limit", "test_limit", "out", "profile_every",
        "ternary", "ternary_threshold", "ternary_scale", "ternary_clip", "fp_first_layer", "fp_last_layer",
        "fp_warmup_epochs", "lr_plateau", "act_l1", "relu_threshold", "relu_threshold_from_epoch",
        "skip_correct", "init_from", "init_adapt",
    ])]
    pub resume: Option<PathBuf>,
    /// No progress bars
    #[arg(long)]
    pub quiet: bool,
    /// Every N epochs, log the non-zero operand fractions of the three passes (0: never)
    #[arg(long, default_value_t = 0)]
    pub profile_every: usize,

    /// Ternary weights (Eq. 1) in every conv and linear layer, straight-through gradients
    #[arg(long, help_heading = "Ternary recipe")]
    pub ternary: bool,
    /// Threshold rule: twn (0.7·mean|W|), twn:F, fixed:D, max:F (F·max|W|), zeros:F (zero fraction)
    #[arg(long, default_value = "twn", help_heading = "Ternary recipe")]
    pub ternary_threshold: String,
    /// Scale of the ternary values: none (pure -1/0/+1, as in the paper), layer (TWN's α) or channel
    #[arg(long, default_value = "layer", help_heading = "Ternary recipe", value_parser = ["none", "layer", "channel"])]
    pub ternary_scale: String,
    /// Straight-through gradient only where |w| <= this value
    #[arg(long, help_heading = "Ternary recipe")]
    pub ternary_clip: Option<f32>,
    /// SkipLayer: keep the first conv layer in full precision
    #[arg(long, help_heading = "Ternary recipe")]
    pub fp_first_layer: bool,
    /// Keep the last (classifier) layer in full precision
    #[arg(long, help_heading = "Ternary recipe")]
    pub fp_last_layer: bool,
    /// PI: train this many epochs in full precision, then switch to ternary
    #[arg(long, default_value_t = 0, help_heading = "Ternary recipe")]
    pub fp_warmup_epochs: usize,
    /// Aggressive LR lowering: the plateau schedule on the train error (= --schedule plateau)
    #[arg(long, help_heading = "Ternary recipe", conflicts_with = "schedule")]
    pub lr_plateau: bool,
    /// Reg: λ of an L1 penalty on every ReLU output (λ·Σ|a| / batch)
    #[arg(long, default_value_t = 0.0, help_heading = "Ternary recipe")]
    pub act_l1: f32,
    /// ReluT: ReLU threshold (the paper uses 0.01) ...
    #[arg(long, default_value_t = 0.0, help_heading = "Ternary recipe")]
    pub relu_threshold: f32,
    /// ... applied from this epoch on (1-based; default: from the start)
    #[arg(long, default_value_t = 1, help_heading = "Ternary recipe")]
    pub relu_threshold_from_epoch: usize,
    /// GradUpdate: zero error for correctly classified samples; skip the backward pass of an all-correct batch
    #[arg(long, help_heading = "Ternary recipe")]
    pub skip_correct: bool,
    /// Block sparsity (for `tern infer`'s skipping kernel): hold this fraction of the 16x4 weight
    /// units (16 output x 4 input channels at one tap) of every ternary conv at zero, ramped in
    /// over the first half of the ternary epochs
    #[arg(long, default_value_t = 0.0, help_heading = "Ternary recipe")]
    pub block_sparsity: f64,
    /// Start from a trained checkpoint's weights (same model) and fine-tune, e.g. ternarise a trained FP network
    #[arg(long, value_name = "CHECKPOINT", help_heading = "Ternary recipe")]
    pub init_from: Option<PathBuf>,
    /// With --init-from: start from a network of another task (e.g. an imported ImageNet
    /// ResNet): a classifier for another class count starts fresh, RGB stem kernels are summed
    /// for grey input; every other tensor must match
    #[arg(long, requires = "init_from", help_heading = "Ternary recipe")]
    pub init_adapt: bool,
}

const DEFAULT_EPOCHS: usize = 10;

pub fn run(a: TrainArgs) -> anyhow::Result<()> {
    let (mut trainer, out) = match &a.resume {
        Some(dir) => resume(&a, dir)?,
        None => fresh(&a)?,
    };
    for note in &trainer.init_notes {
        eprintln!("--init-adapt: {note}");
    }
    let (backend, info) = a.device.backend()?;
    trainer.set_backend(backend);
    trainer.device_info = info;
    if !a.quiet {
        let rows = trainer.model.summary();
        let t = tern_train::summary::totals(&rows);
        eprintln!(
            "{} on {} ({} train / {} test images, input {:?}): {} parameters, {:.1} M multiply-adds per image",
            trainer.model.config.name,
            trainer.data_name,
            trainer.train_set().len(),
            trainer.cfg.test_limit.map_or("all".to_string(), |n| n.to_string()),
            trainer.model.config.in_shape,
            t.params,
            t.macs as f64 / 1e6
        );
        if trainer.next_epoch > 0 {
            eprintln!("resuming after epoch {} of {}", trainer.next_epoch, trainer.cfg.epochs);
        }
    }
    let mut bars = Bars::new(a.quiet);
    let result = trainer.run(&mut bars);
    write_curves(&out, &trainer.history)?;
    let acc = result?;
    println!("{}", epoch_table(&trainer.history));
    println!("test accuracy {:.2}%  ->  {}", 100.0 * acc, out.join(METRICS_FILE).display());
    Ok(())
}

fn fresh(a: &TrainArgs) -> anyhow::Result<(Trainer, PathBuf)> {
    let data = a.data.load()?;
    let [c, h, w] = data.train.shape;
    let side = a.input_size;
    // a `graph` model (imported from ONNX, none of the zoo's architectures) takes its
    // layers from the checkpoint it starts from
    let spec = if a.model == tern_train::models::GRAPH_MODEL {
        let Some(p) = &a.init_from else {
            anyhow::bail!("--model graph takes its layers from --init-from (a checkpoint `tern import` wrote)");
        };
        if a.init_adapt {
            anyhow::bail!("--init-adapt does not apply to --model graph (its layers come with the checkpoint)");
        }
        let c = tern_core::checkpoint::load(p)?;
        let spec = tern_train::checkpoint::model_config(p, &c)?.spec;
        if spec.is_none() {
            anyhow::bail!("{}: not a graph model (train it with its own --model name)", p.display());
        }
        spec
    } else {
        None
    };
    let model = ModelConfig {
        name: a.model.clone(),
        in_shape: [c, side.unwrap_or(h), side.unwrap_or(w)],
        classes: data.class_names.len(),
        width: a.width,
        small_input: a.small_input,
        spec,
    };
    let schedule_name = if a.lr_plateau { "plateau" } else { a.schedule.as_str() };
    let schedule =
        ScheduleKind::parse(schedule_name, a.step_every, a.step_gamma, a.plateau_patience, a.plateau_factor)?;
    if a.relu_threshold_from_epoch == 0 {
        anyhow::bail!("invalid value for --relu-threshold-from-epoch: epochs count from 1");
    }
    let recipe = Recipe {
        ternary: if a.ternary {
            Some(TernaryConfig::parse(&a.ternary_threshold, &a.ternary_scale, a.ternary_clip)?)
        } else {
            None
        },
        fp_first_layer: a.fp_first_layer,
        fp_last_layer: a.fp_last_layer,
        fp_warmup_epochs: a.fp_warmup_epochs,
        act_l1: a.act_l1,
        relu_threshold: a.relu_threshold,
        relu_threshold_from_epoch: a.relu_threshold_from_epoch - 1,
        skip_correct: a.skip_correct,
        block_sparsity: a.block_sparsity,
    };
    let cfg = TrainConfig {
        epochs: a.epochs.unwrap_or(DEFAULT_EPOCHS),
        batch_size: a.batch,
        lr: a.lr,
        sgd: SgdConfig { momentum: a.momentum, nesterov: a.nesterov, weight_decay: a.weight_decay },
        schedule,
        seed: a.seed,
        augment: Augment { crop_pad: a.crop_pad, hflip: a.hflip },
        train_limit: a.train_limit,
        test_limit: a.test_limit,
        recipe,
        init_from: a.init_from.clone(),
        init_adapt: a.init_adapt,
        profile_every: a.profile_every,
    };
    if a.out.join(CHECKPOINT_FILE).exists() {
        anyhow::bail!(
            "{} already holds a run: pass --resume {} to continue it, or choose another --out",
            a.out.display(),
            a.out.display()
        );
    }
    let mut t = Trainer::new(&model, &data, cfg, &a.out)?;
    t.extra_meta = serde_json::json!({
        "data": a.data.data,
        "data_path": a.data.data_path,
        "image_size": a.data.image_size,
    });
    Ok((t, a.out.clone()))
}

fn resume(a: &TrainArgs, dir: &Path) -> anyhow::Result<(Trainer, PathBuf)> {
    let path = dir.join(CHECKPOINT_FILE);
    let c = tern_core::checkpoint::load(&path).with_context(|| format!("--resume {}", dir.display()))?;
    let model = tern_train::checkpoint::model_config(&path, &c)?;
    let mut cfg: TrainConfig = serde_json::from_value(c.meta["train"].clone())
        .with_context(|| format!("{}: not a training checkpoint (no `train` metadata)", path.display()))?;
    if let Some(e) = a.epochs {
        cfg.epochs = e;
    }
    let extra = &c.meta["extra"];
    let data = crate::common::DataArgs {
        data: extra["data"].as_str().unwrap_or(&a.data.data).to_string(),
        // --data-path says where the same data lives on this machine
        data_path: a.data.data_path.clone().or(extra["data_path"].as_str().map(PathBuf::from)),
        image_size: extra["image_size"].as_u64().map_or(a.data.image_size, |v| v as usize),
        // streaming changes where images are decoded, not which: this machine may choose
        stream: a.data.stream,
    };
    let split = data.load()?;
    let mut t = Trainer::resume(&model, &split, cfg, dir)?;
    t.extra_meta = extra.clone();
    Ok((t, dir.to_path_buf()))
}

pub fn epoch_table(h: &[EpochMetrics]) -> String {
    let mut t = Table::new(&[
        "epoch",
        "train_loss",
        "train_acc%",
        "test_acc%",
        "top5%",
        "lr",
        "seconds",
        "img/s",
        "nz fwd/bwd/grad",
        "weights",
        "w_zero%",
        "skipped",
    ]);
    for m in h {
        t.row(vec![
            m.epoch.to_string(),
            format!("{:.4}", m.train_loss),
            format!("{:.2}", 100.0 * m.train_acc),
            format!("{:.2}", 100.0 * m.test_acc),
            format!("{:.2}", 100.0 * m.test_top5),
            format!("{:.5}", m.lr),
            format!("{:.1}", m.seconds),
            format!("{:.0}", m.images_per_s),
            m.nonzero_frac.map_or("-".into(), |f| format!("{:.2}/{:.2}/{:.2}", f[0], f[1], f[2])),
            if m.ternary { "ternary" } else { "fp32" }.to_string(),
            m.weight_zero_fraction.map_or("-".into(), |z| format!("{:.1}", 100.0 * z)),
            m.skipped_samples.to_string(),
        ]);
    }
    t.render()
}

/// DIR/curves.svg: loss and accuracy per epoch.
pub fn write_curves(out: &Path, h: &[EpochMetrics]) -> anyhow::Result<()> {
    if h.is_empty() {
        return Ok(());
    }
    let pts = |f: &dyn Fn(&EpochMetrics) -> f64| h.iter().map(|m| (m.epoch as f64, f(m))).collect::<Vec<_>>();
    let svg = line_charts(&[
        Panel {
            title: "Loss".into(),
            x_label: "epoch".into(),
            y_label: "cross-entropy".into(),
            series: vec![
                Series { name: "train".into(), points: pts(&|m| m.train_loss) },
                Series { name: "test".into(), points: pts(&|m| m.test_loss) },
            ],
        },
        Panel {
            title: "Accuracy".into(),
            x_label: "epoch".into(),
            y_label: "top-1 accuracy (%)".into(),
            series: vec![
                Series { name: "train".into(), points: pts(&|m| 100.0 * m.train_acc) },
                Series { name: "test".into(), points: pts(&|m| 100.0 * m.test_acc) },
            ],
        },
    ]);
    tern_core::checkpoint::write_atomic(&out.join("curves.svg"), svg.as_bytes())?;
    Ok(())
}
