//! The training loop: epochs of SGD over shuffled, augmented batches, evaluation after each
//! epoch, an atomic checkpoint and `metrics.json` after each epoch, exact resume, and a
//! clear stop on NaN/Inf that names the step and the first layer with non-finite values.

use crate::checkpoint;
use crate::layer::Ctx;
use crate::model::{Model, ModelConfig};
use crate::models;
use crate::optim::{Sgd, SgdConfig};
use crate::recipe::Recipe;
use crate::schedule::{Schedule, ScheduleKind};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tern_core::{loss_stats, Backend, CpuBackend, Error, Result, Rng, Tensor};
use tern_data::{Augment, Batch, BatchIter, DataSplit, Dataset, LoaderConfig, Normalize, RawBatch, RawBatchIter};

pub const CHECKPOINT_FILE: &str = "model.safetensors";
pub const METRICS_FILE: &str = "metrics.json";

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch_size: usize,
    pub lr: f32,
    pub sgd: SgdConfig,
    pub schedule: ScheduleKind,
    pub seed: u64,
    pub augment: Augment,
    /// Train on the first N samples only (quick runs, tests).
    pub train_limit: Option<usize>,
    /// Evaluate on the first N test samples only.
    pub test_limit: Option<usize>,
    /// The paper's techniques (ternary weights and the rest).
    #[serde(default)]
    pub recipe: Recipe,
    /// Start from this checkpoint's weights (a trained full-precision network, §4.2).
    #[serde(default)]
    pub init_from: Option<PathBuf>,
    /// With `init_from`: adapt a checkpoint of another task (a fresh classifier for another
    /// class count, RGB stem kernels summed for grey input; `checkpoint::load_into_adapted`).
    #[serde(default)]
    pub init_adapt: bool,
    /// Every N epochs, count non-zero operands on the epoch's first training step (0: never).
    #[serde(default)]
    pub profile_every: usize,
}

impl TrainConfig {
    pub fn validate(&self) -> Result<()> {
        if self.epochs == 0 {
            return Err(Error::invalid("--epochs", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(Error::invalid("--batch", "must be at least 1"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::invalid("--lr", format!("{}: expected a positive number", self.lr)));
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) {
            return Err(Error::invalid("--momentum", format!("{}: expected 0 <= momentum < 1", self.sgd.momentum)));
        }
        if !(self.sgd.weight_decay >= 0.0) {
            return Err(Error::invalid("--weight-decay", format!("{}: expected >= 0", self.sgd.weight_decay)));
        }
        self.recipe.validate(self.epochs)
    }
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct EpochMetrics {
    /// 1-based.
    pub epoch: usize,
    pub train_loss: f64,
    pub train_acc: f64,
    pub test_acc: f64,
    pub test_top5: f64,
    pub test_loss: f64,
    /// Rate at the end of the epoch.
    pub lr: f32,
    /// Wall time of the epoch, training and evaluation.
    pub seconds: f64,
    /// Training throughput.
    pub images_per_s: f64,
    /// Whether the epoch trained ternary weights.
    #[serde(default)]
    pub ternary: bool,
    /// Mean zero fraction of the ternary layers' weights at the end of the epoch.
    #[serde(default)]
    pub weight_zero_fraction: Option<f64>,
    /// GradUpdate: samples given zero error, and batches whose backward pass was skipped.
    #[serde(default)]
    pub skipped_samples: usize,
    #[serde(default)]
    pub skipped_batches: usize,
    /// Non-zero fraction of the multiply-adds (forward, backward, weight gradient) on the
    /// epoch's first step, when `profile_every` asks for it.
    #[serde(default)]
    pub nonzero_frac: Option<[f64; 3]>,
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct EvalResult {
    pub top1: f64,
    pub top5: f64,
    pub loss: f64,
    pub samples: usize,
}

/// Progress callbacks; the CLI draws bars from them, the library never prints.
pub trait Observer {
    fn epoch_start(&mut self, _epoch: usize, _epochs: usize, _batches: usize) {}
    fn batch_end(&mut self, _loss: f32, _correct: usize, _n: usize, _lr: f32) {}
    fn eval_start(&mut self, _batches: usize) {}
    fn eval_batch(&mut self) {}
    fn epoch_end(&mut self, _m: &EpochMetrics) {}
}

/// An observer that ignores everything.
pub struct Silent;
impl Observer for Silent {}

pub fn loader(
    normalize: &Normalize,
    input: [usize; 3],
    batch: usize,
    seed: u64,
    shuffle: bool,
    augment: Augment,
) -> LoaderConfig {
    LoaderConfig {
        batch_size: batch,
        shuffle,
        seed,
        augment,
        normalize: normalize.clone(),
        input_shape: input,
        prefetch: 2,
    }
}

/// Data sets up to this size are uploaded once to a device backend and its batches rendered
/// there (crop, flip, normalise); larger ones stream from the host loader.
pub const DEVICE_DATA_MAX_BYTES: usize = 8 << 30;

/// A data set held on a device: its pixels as bytes, and the normalisation as (mean, 1/std).
pub struct DeviceData {
    images: Tensor,
    shape: [usize; 3],
    norm: Tensor,
}

impl DeviceData {
    /// The data set on `backend`'s device, if it is a device and the data fit.
    pub fn upload(backend: &dyn Backend, ds: &Dataset, normalize: &Normalize) -> Option<DeviceData> {
        let bytes = ds.bytes().filter(|b| b.len() <= DEVICE_DATA_MAX_BYTES)?;
        if backend.device() == tern_core::Device::Cpu {
            return None;
        }
        Some(DeviceData::new(backend, bytes, ds.shape, normalize))
    }

    fn new(backend: &dyn Backend, bytes: &[u8], shape: [usize; 3], normalize: &Normalize) -> DeviceData {
        // 1/std as render_placed computes it, so the device's bits are the host's
        let inv: Vec<f32> = normalize.std.iter().map(|s| 1.0 / s).collect();
        let norm = [normalize.mean.clone(), inv].concat();
        DeviceData {
            images: backend.upload_bytes(bytes),
            shape,
            norm: backend.upload(&Tensor::from_vec(&[norm.len()], norm)),
        }
    }

    /// A streamed batch's images on `backend`'s device, to render with the batch's own plan
    /// (a quarter of the bytes of the rendered f32 batch cross the bus).
    pub fn of_batch(backend: &dyn Backend, raw: &RawBatch, shape: [usize; 3], normalize: &Normalize) -> DeviceData {
        DeviceData::new(backend, &raw.images, shape, normalize)
    }

    /// Renders the planned batch into `out: [n, c, h, w]`.
    pub fn render(&self, backend: &dyn Backend, plan: &[tern_data::SamplePlan], out: &mut Tensor) {
        let p: Vec<u32> = plan
            .iter()
            .flat_map(|s| [s.index as u32, s.place.oy as u32, s.place.ox as u32, s.place.flip as u32])
            .collect();
        let plan_t = backend.upload(&Tensor::from_u32(&[plan.len(), 4], &p));
        backend.render_batch(&self.images, self.shape, &plan_t, &self.norm, out);
    }
}

/// A batch's images and labels (an index tensor) on `backend`'s device.
pub fn upload_batch(backend: &dyn Backend, b: &Batch) -> (Tensor, Tensor) {
    (backend.upload(&b.x), backend.upload(&Tensor::from_u32(&[b.labels.len()], &b.labels)))
}

/// Top-1/top-5 accuracy and mean loss of `model` (on `backend`'s device) on `ds`.
pub fn evaluate(
    model: &mut Model,
    backend: &dyn Backend,
    ds: Arc<Dataset>,
    normalize: &Normalize,
    batch: usize,
    obs: &mut dyn Observer,
) -> Result<EvalResult> {
    let ctx = Ctx::new(backend, false);
    let cfg = loader(normalize, model.config.in_shape, batch, 0, false, Augment::default());
    let (mut c1, mut c5, mut loss, mut n) = (0usize, 0usize, 0.0f64, 0usize);
    let mut stats = backend.zeros(&[loss_stats::LEN]);
    let [c, h, w] = model.config.in_shape;
    let mut eval_batch = |x: &Tensor, labels: &[u32]| {
        let logits = model.forward(&ctx, x);
        let y = backend.upload(&Tensor::from_u32(&[labels.len()], labels));
        backend.softmax_cross_entropy(&logits, &y, 5, false, None, &mut stats);
        let s = stats.host_values();
        loss += s[loss_stats::LOSS] as f64 * labels.len() as f64;
        c1 += s[loss_stats::TOP1] as usize;
        c5 += s[loss_stats::TOPK] as usize;
        n += labels.len();
    };
    if let Some(dd) = DeviceData::upload(backend, &ds, normalize) {
        // on a device that holds the test set: batches rendered there from host-drawn plans
        let plans = tern_data::epoch_plans(&ds, &cfg, 0, false);
        obs.eval_start(plans.len());
        for plan in &plans {
            let mut x = backend.alloc_activation(&[plan.len(), c, h, w]);
            dd.render(backend, plan, &mut x);
            let labels: Vec<u32> = plan.iter().map(|s| ds.labels[s.index]).collect();
            eval_batch(&x, &labels);
            obs.eval_batch();
        }
    } else if backend.device() != tern_core::Device::Cpu {
        // a device, and a test set that streams: each batch's bytes go up and render there
        let shape = ds.shape;
        let iter = RawBatchIter::raw(ds, cfg, 0, false);
        obs.eval_start(iter.len());
        for rb in iter {
            let rb = rb?;
            let mut x = backend.alloc_activation(&[rb.plan.len(), c, h, w]);
            DeviceData::of_batch(backend, &rb, shape, normalize).render(backend, &rb.plan, &mut x);
            eval_batch(&x, &rb.labels);
            obs.eval_batch();
        }
    } else {
        let iter = BatchIter::new(ds, cfg, 0, false);
        obs.eval_start(iter.len());
        for b in iter {
            let b = b?;
            eval_batch(&b.x, &b.labels);
            obs.eval_batch();
        }
    }
    let n_f = n.max(1) as f64;
    Ok(EvalResult { top1: c1 as f64 / n_f, top5: c5 as f64 / n_f, loss: loss / n_f, samples: n })
}

/// Removes the temporary files of checkpoint and metrics writes that a kill interrupted in
/// `out_dir` (the files they would have replaced are intact).
fn remove_interrupted_writes(out_dir: &Path) {
    if let Ok(entries) = std::fs::read_dir(out_dir) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if [CHECKPOINT_FILE, METRICS_FILE].iter().any(|f| name.starts_with(&format!(".{f}.tmp-"))) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

pub struct Trainer {
    pub model: Model,
    pub sgd: Sgd,
    pub schedule: Schedule,
    pub cfg: TrainConfig,
    pub normalize: Normalize,
    pub history: Vec<EpochMetrics>,
    /// 0-based index of the next epoch to run.
    pub next_epoch: usize,
    /// Optimizer steps taken.
    pub step: u64,
    pub data_name: String,
    /// Extra metadata the caller wants in every checkpoint (e.g. where the data came from).
    pub extra_meta: serde_json::Value,
    /// Where the run trains (device, GPU, precision), for metrics.json; not part of the
    /// configuration: a run may resume on another device.
    pub device_info: serde_json::Value,
    train: Arc<Dataset>,
    test: Arc<Dataset>,
    out_dir: PathBuf,
    backend: Box<dyn Backend>,
    stepper: crate::step::Stepper,
    /// The training set on the backend's device, once uploaded.
    device_train: Option<DeviceData>,
    /// The device tuning a resumed checkpoint carried (given to the next backend).
    saved_tuning: Option<serde_json::Value>,
    /// What `--init-adapt` changed while loading the starting weights.
    pub init_notes: Vec<String>,
}

fn limit(ds: &Dataset, n: Option<usize>) -> Arc<Dataset> {
    Arc::new(match n {
        Some(n) => ds.take(n),
        None => ds.clone(),
    })
}

impl Trainer {
    /// A fresh run: builds the model from `seed`, normalises with the training set's statistics.
    pub fn new(model_cfg: &ModelConfig, data: &DataSplit, cfg: TrainConfig, out_dir: &Path) -> Result<Self> {
        cfg.validate()?;
        remove_interrupted_writes(out_dir);
        let mut rng = Rng::new(cfg.seed);
        let mut model = models::build(model_cfg, &mut rng)?;
        // A network started from a checkpoint keeps the input normalisation it was trained with.
        let mut inherited: Option<Normalize> = None;
        let mut init_notes = Vec::new();
        if let Some(path) = &cfg.init_from {
            let c = tern_core::checkpoint::load(path)?;
            if cfg.init_adapt {
                init_notes = checkpoint::load_into_adapted(path, &c, &mut model)?;
            } else {
                checkpoint::load_into(path, &c, &mut model).map_err(|e| match e {
                    Error::Checkpoint { path, what } if what.contains("has shape") => Error::Checkpoint {
                        path,
                        what: format!("{what} (--init-adapt starts from a network of another task)"),
                    },
                    e => e,
                })?;
            }
            inherited = c.meta.get("normalize").and_then(|n| serde_json::from_value(n.clone()).ok());
        }
        cfg.recipe.apply(&mut model, 0);
        let (mean, std) = match inherited {
            Some(n) if n.mean.len() == model_cfg.in_shape[0] => (n.mean, n.std),
            _ => data.train.channel_stats()?,
        };
        let schedule = Schedule::new(cfg.schedule.clone(), cfg.lr, cfg.epochs);
        Ok(Trainer {
            model,
            sgd: Sgd::new(cfg.sgd.clone()),
            schedule,
            normalize: Normalize { mean, std },
            history: Vec::new(),
            next_epoch: 0,
            step: 0,
            data_name: data.name.clone(),
            extra_meta: serde_json::json!({}),
            device_info: serde_json::json!({"device": "cpu", "precision": "fp32"}),
            train: limit(&data.train, cfg.train_limit),
            test: limit(&data.test, cfg.test_limit),
            cfg,
            out_dir: out_dir.to_path_buf(),
            backend: Box::new(CpuBackend),
            stepper: crate::step::Stepper::new(true),
            device_train: None,
            saved_tuning: None,
            init_notes,
        })
    }

    /// Continues the run saved in `out_dir`. The configuration must match the saved one,
    /// except `epochs`, which may grow.
    pub fn resume(model_cfg: &ModelConfig, data: &DataSplit, cfg: TrainConfig, out_dir: &Path) -> Result<Self> {
        let path = out_dir.join(CHECKPOINT_FILE);
        let c = tern_core::checkpoint::load(&path)?;
        let mut t = Trainer::new(model_cfg, data, cfg.clone(), out_dir)?;
        let velocity = checkpoint::load_into(&path, &c, &mut t.model)?;
        let bad = |what: String| Error::Checkpoint { path: path.clone(), what };
        let saved_model = checkpoint::model_config(&path, &c)?;
        if &saved_model != model_cfg {
            return Err(bad(format!("was trained as {saved_model:?}, but this run asks for {model_cfg:?}")));
        }
        let saved_cfg: TrainConfig = parse(&path, &c.meta, "train")?;
        if (TrainConfig { epochs: cfg.epochs, ..saved_cfg.clone() }) != cfg {
            return Err(bad(format!(
                "was trained with {saved_cfg:?}; resume with the same flags (only --epochs may change)"
            )));
        }
        fn parse<T: serde::de::DeserializeOwned>(path: &Path, meta: &serde_json::Value, k: &str) -> Result<T> {
            let v = meta.get(k).cloned().ok_or_else(|| Error::Checkpoint {
                path: path.into(),
                what: format!("metadata has no `{k}` field (not a training checkpoint)"),
            })?;
            serde_json::from_value(v)
                .map_err(|e| Error::Checkpoint { path: path.into(), what: format!("bad `{k}`: {e}") })
        }
        t.history = parse(&path, &c.meta, "history")?;
        t.schedule = parse(&path, &c.meta, "schedule")?;
        t.schedule.epochs = cfg.epochs;
        t.normalize = parse(&path, &c.meta, "normalize")?;
        t.step = parse(&path, &c.meta, "step")?;
        t.next_epoch = t.history.len();
        // the model as the last trained epoch left it (ternary after a PI warm-up, ReLU
        // thresholds), so that a finished run reloaded here reports what it trained
        t.cfg.recipe.apply_final(&mut t.model, t.next_epoch.max(1));
        t.sgd.velocity = velocity.unwrap_or_default();
        t.saved_tuning = c.meta.get("device_tuning").filter(|v| !v.is_null()).cloned();
        Ok(t)
    }

    pub fn train_set(&self) -> &Arc<Dataset> {
        &self.train
    }

    /// Runs the rest of training on `backend`: moves the model and the optimizer state to its
    /// device (checkpoints stay device-independent: they are written from host copies).
    pub fn set_backend(&mut self, backend: Box<dyn Backend>) {
        self.model.to_backend(backend.as_ref());
        for v in &mut self.sgd.velocity {
            *v = backend.upload(v);
        }
        self.device_train = None;
        if let Some(t) = &self.saved_tuning {
            // ignored by a backend of another kind (another GPU, precision, or the CPU)
            backend.load_tuning(t);
        }
        self.backend = backend;
    }

    pub fn backend(&self) -> &dyn Backend {
        self.backend.as_ref()
    }

    /// Ends the trainer and hands its backend back, for the next run to reuse (a GPU
    /// backend keeps its compiled kernels, algorithm choices and memory pool).
    pub fn into_backend(self) -> Box<dyn Backend> {
        self.backend
    }

    /// Runs the remaining epochs; returns the final test accuracy.
    pub fn run(&mut self, obs: &mut dyn Observer) -> Result<f64> {
        self.run_until(self.cfg.epochs, obs)
    }

    /// Runs epochs until `stop_after` of them are done (an interrupted run, in tests).
    pub fn run_until(&mut self, stop_after: usize, obs: &mut dyn Observer) -> Result<f64> {
        while self.next_epoch < self.cfg.epochs.min(stop_after) {
            let m = self.train_epoch(obs)?;
            obs.epoch_end(&m);
            self.history.push(m);
            self.next_epoch += 1;
            self.save()?;
        }
        Ok(self.history.last().map_or(0.0, |m| m.test_acc))
    }

    /// One epoch of training followed by evaluation.
    pub fn train_epoch(&mut self, obs: &mut dyn Observer) -> Result<EpochMetrics> {
        let epoch = self.next_epoch;
        let start = Instant::now();
        self.cfg.recipe.apply(&mut self.model, epoch);
        if let Some(f) = self.cfg.recipe.block_sparsity_at(epoch, self.cfg.epochs) {
            self.model.set_unit_masks(self.backend.as_ref(), f);
        }
        let skip_correct = self.cfg.recipe.skip_correct;
        let (mut skipped_samples, mut skipped_batches) = (0usize, 0usize);
        let profile_now = self.cfg.profile_every > 0 && (epoch + 1).is_multiple_of(self.cfg.profile_every);
        let profiler = std::cell::RefCell::new(crate::profile::Profiler::default());
        let lcfg = loader(
            &self.normalize,
            self.model.config.in_shape,
            self.cfg.batch_size,
            self.cfg.seed,
            true,
            self.cfg.augment,
        );
        // a device that holds the training set renders each batch from a host-drawn plan (the
        // same samples and draws as the host loader's); otherwise the loader thread renders them
        let resident = self
            .device_train
            .take()
            .or_else(|| DeviceData::upload(self.backend.as_ref(), &self.train, &self.normalize));
        let plans = resident.as_ref().map(|_| tern_data::epoch_plans(&self.train, &lcfg, epoch, true));
        // a device without the data set gets each batch's bytes and renders them itself
        let on_device = self.backend.device() != tern_core::Device::Cpu;
        let mut iter =
            (plans.is_none() && !on_device).then(|| BatchIter::new(self.train.clone(), lcfg.clone(), epoch, true));
        let mut raw_iter =
            (plans.is_none() && on_device).then(|| RawBatchIter::raw(self.train.clone(), lcfg.clone(), epoch, true));
        let batches = match (&plans, &iter, &raw_iter) {
            (Some(p), _, _) => p.len(),
            (_, Some(i), _) => i.len(),
            (_, _, Some(i)) => i.len(),
            _ => 0,
        };
        obs.epoch_start(epoch, self.cfg.epochs, batches);
        let (mut loss_sum, mut correct, mut seen) = (0.0f64, 0usize, 0usize);
        let mut lr = self.schedule.lr(epoch, 0.0);
        // the recipe may have changed the model: record the step afresh
        self.stepper.invalidate();
        let [c, h, w] = self.model.config.in_shape;
        for bi in 0..batches {
            lr = self.schedule.lr(epoch, bi as f64 / batches as f64);
            let prof = (profile_now && bi == 0).then_some(&profiler);
            let be = self.backend.as_ref();
            let (out, labels) = match (&plans, &resident, iter.as_mut(), raw_iter.as_mut()) {
                (Some(plans), Some(dd), _, _) => {
                    let plan = &plans[bi];
                    let labels: Vec<u32> = plan.iter().map(|s| self.train.labels[s.index]).collect();
                    let fill = &mut |be: &dyn Backend, xd: &mut Tensor| dd.render(be, plan, xd);
                    let shape = [plan.len(), c, h, w];
                    let m = &mut self.model;
                    (
                        self.stepper.step_with(be, m, &mut self.sgd, &shape, fill, &labels, lr, skip_correct, prof),
                        labels,
                    )
                }
                (_, _, Some(it), _) => {
                    let b = it.next().expect("the loader yields `batches` batches")?;
                    let m = &mut self.model;
                    (self.stepper.step(be, m, &mut self.sgd, &b.x, &b.labels, lr, skip_correct, prof), b.labels)
                }
                (_, _, _, Some(it)) => {
                    let rb = it.next().expect("the loader yields `batches` batches")?;
                    let dd = DeviceData::of_batch(be, &rb, self.train.shape, &self.normalize);
                    let fill = &mut |be: &dyn Backend, xd: &mut Tensor| dd.render(be, &rb.plan, xd);
                    let shape = [rb.plan.len(), c, h, w];
                    let m = &mut self.model;
                    (
                        self.stepper.step_with(be, m, &mut self.sgd, &shape, fill, &rb.labels, lr, skip_correct, prof),
                        rb.labels,
                    )
                }
                _ => unreachable!("plans come with resident data"),
            };
            let (loss, ok) = (out.loss, out.correct);
            if !loss.is_finite() {
                // the guarded update left the weights as the step found them
                let x = self.stepper.input().expect("a step ran").clone();
                return Err(self.non_finite(&x, loss));
            }
            if skip_correct {
                skipped_samples += ok;
            }
            skipped_batches += out.skipped_backward as usize;
            self.step += 1;
            loss_sum += loss as f64 * labels.len() as f64;
            correct += ok;
            seen += labels.len();
            obs.batch_end(loss, ok, labels.len(), lr);
        }
        self.device_train = resident;
        let train_secs = start.elapsed().as_secs_f64();
        self.model.clear_cache();
        // The last update can turn the weights non-finite with a finite loss: never evaluate
        // (NaN logits) or save such a model.
        if let Some(param) = self.model.first_non_finite_param() {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!(
                    "parameter {param} is not finite after the last update of epoch {}; {}",
                    epoch + 1,
                    self.kept_checkpoint(self.history.len())
                ),
            });
        }
        let train_acc = correct as f64 / seen.max(1) as f64;
        self.schedule.end_epoch(epoch, 1.0 - train_acc);
        let ev = evaluate(&mut self.model, self.backend.as_ref(), self.test.clone(), &self.normalize, 256, obs)?;
        let mut zf = Vec::new();
        self.model.visit_mm_layers(&mut |_, t| zf.extend(t.zero_fraction()));
        let weight_zero_fraction = (!zf.is_empty()).then(|| zf.iter().sum::<f64>() / zf.len() as f64);
        Ok(EpochMetrics {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_acc,
            test_acc: ev.top1,
            test_top5: ev.top5,
            test_loss: ev.loss,
            lr,
            seconds: start.elapsed().as_secs_f64(),
            images_per_s: seen as f64 / train_secs,
            ternary: self.cfg.recipe.ternary_at(epoch),
            weight_zero_fraction,
            skipped_samples,
            skipped_batches,
            nonzero_frac: profile_now.then(|| profiler.borrow().totals()),
        })
    }

    /// Builds the NaN/Inf error: re-runs the batch with the finite-value probe on, in train
    /// mode as the step ran it (batch statistics in BN: eval mode could name another layer).
    fn non_finite(&mut self, x: &Tensor, loss: f32) -> Error {
        let mut ctx = Ctx::new(self.backend.as_ref(), true);
        ctx.check_finite = true;
        self.model.forward(&ctx, &self.backend.upload(x));
        self.model.clear_cache();
        let layer = ctx.first_non_finite.borrow().clone();
        let param = self.model.first_non_finite_param();
        Error::NonFinite {
            step: self.step,
            what: format!(
                "loss is {loss} in epoch {}; first layer with non-finite output: {}; first non-finite parameter: {}; {}",
                self.next_epoch + 1,
                layer.unwrap_or_else(|| "none (the loss itself overflowed)".into()),
                param.unwrap_or_else(|| "none".into()),
                self.kept_checkpoint(self.history.len()),
            ),
        }
    }

    /// What is on disk after a failure: saves never write non-finite weights, so an existing
    /// checkpoint is the last good one.
    fn kept_checkpoint(&self, epochs_saved: usize) -> String {
        let kept = self.out_dir.join(CHECKPOINT_FILE);
        if kept.exists() {
            format!("the last good checkpoint (epoch {epochs_saved}) is kept at {}", kept.display())
        } else {
            "no checkpoint was written yet".into()
        }
    }

    /// The metrics document of the contract: `{"epochs": [...], "test_accuracy": ...}` and more.
    pub fn metrics_json(&mut self) -> serde_json::Value {
        let rows = self.model.summary();
        let totals = crate::summary::totals(&rows);
        serde_json::json!({
            "epochs": self.history,
            "test_accuracy": self.history.last().map_or(0.0, |m| m.test_acc),
            "test_top5": self.history.last().map_or(0.0, |m| m.test_top5),
            "model": self.model.config,
            "data": self.data_name,
            "train": self.cfg,
            "params": totals.params,
            "macs_per_image": totals.macs,
            "ternary_macs_per_image": totals.ternary_macs,
            "bytes_fp32": totals.bytes_fp32,
            "bytes_packed": totals.bytes_packed,
            "layers": rows,
            "steps": self.step,
            "lr_lowered_at_epochs": self.schedule.lowered_at,
            "device": self.device_info,
        })
    }

    /// Writes the checkpoint, then `metrics.json`, both atomically; refuses non-finite weights
    /// (the previous checkpoint stays).
    pub fn save(&mut self) -> Result<()> {
        if let Some(param) = self.model.first_non_finite_param() {
            return Err(Error::NonFinite {
                step: self.step,
                what: format!(
                    "parameter {param} is not finite; not saved; {}",
                    self.kept_checkpoint(self.history.len().saturating_sub(1))
                ),
            });
        }
        let meta = serde_json::json!({
            "train": self.cfg,
            "history": self.history,
            "schedule": self.schedule,
            "normalize": self.normalize,
            "step": self.step,
            "data": self.data_name,
            "epoch": self.history.len(),
            "extra": self.extra_meta,
            // the device's measured choices, so that a resume on it rounds the same way
            "device_tuning": self.backend.tuning().or_else(|| self.saved_tuning.clone()),
        });
        checkpoint::save(&self.out_dir.join(CHECKPOINT_FILE), &mut self.model, &self.sgd.velocity, meta)?;
        let text = serde_json::to_string_pretty(&self.metrics_json()).expect("metrics serialise");
        tern_core::checkpoint::write_atomic(&self.out_dir.join(METRICS_FILE), text.as_bytes())
    }
}
