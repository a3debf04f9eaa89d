//! Batching: a deterministic order per (seed, epoch) and a producer thread that prepares the
//! next batches while the current one trains. Each sample's augmentation draws from its own
//! RNG keyed by (seed, epoch, position), so a resumed epoch sees exactly the same batches.

use crate::transform::{placement, render_placed, Augment, Normalize, Placement};
use crate::Dataset;
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::Arc;
use std::thread::JoinHandle;
use tern_core::{Error, Result, Rng, Tensor};

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub batch_size: usize,
    pub shuffle: bool,
    pub seed: u64,
    pub augment: Augment,
    pub normalize: Normalize,
    /// `[c, h, w]` the model takes; samples are padded or cropped to it.
    pub input_shape: [usize; 3],
    /// Batches prepared ahead of the consumer.
    pub prefetch: usize,
}

/// One batch: x: [n, c, h, w], labels: [n].
#[derive(Debug)]
pub struct Batch {
    pub x: Tensor,
    pub labels: Vec<u32>,
}

/// The sample order of an epoch.
pub fn epoch_order(len: usize, seed: u64, epoch: usize, shuffle: bool) -> Vec<usize> {
    let mut order: Vec<usize> = (0..len).collect();
    if shuffle {
        Rng::new(seed ^ (epoch as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15)).shuffle(&mut order);
    }
    order
}

/// One sample of a planned batch: which image, and where it lands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SamplePlan {
    pub index: usize,
    pub place: Placement,
}

/// The plan of the batch of the given positions in `order` (position `start` onwards of the
/// epoch): each sample's augmentation draws come from its own RNG keyed by (seed, epoch,
/// position), whoever renders it.
pub fn plan_batch(
    order: &[usize],
    ds_shape: [usize; 3],
    cfg: &LoaderConfig,
    epoch: usize,
    start: usize,
    augment: bool,
) -> Vec<SamplePlan> {
    order
        .iter()
        .enumerate()
        .map(|(i, &index)| {
            let mut rng = augment.then(|| {
                Rng::new(cfg.seed ^ ((epoch as u64) << 40) ^ ((start + i) as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
            });
            SamplePlan { index, place: placement(ds_shape, cfg.input_shape, &cfg.augment, rng.as_mut()) }
        })
        .collect()
}

/// Every batch plan of an epoch, in order (for a device that holds the data set and renders
/// batches itself: the same samples and draws as [`BatchIter`]'s batches).
pub fn epoch_plans(ds: &Dataset, cfg: &LoaderConfig, epoch: usize, augment: bool) -> Vec<Vec<SamplePlan>> {
    let order = epoch_order(ds.len(), cfg.seed, epoch, cfg.shuffle);
    let bs = cfg.batch_size.max(1);
    order.chunks(bs).enumerate().map(|(b, chunk)| plan_batch(chunk, ds.shape, cfg, epoch, b * bs, augment)).collect()
}

/// Builds the batch of the given positions in `order`. A data set that streams from files
/// decodes and renders its samples on all cores (a 224-px batch is ~40 ms of rendering alone
/// on one); one held in memory renders on the producer thread, leaving the cores to training.
pub fn make_batch(
    ds: &Dataset,
    order: &[usize],
    cfg: &LoaderConfig,
    epoch: usize,
    start: usize,
    augment: bool,
) -> Result<Batch> {
    let n = order.len();
    let per = cfg.input_shape.iter().product::<usize>();
    let mut x = vec![0.0f32; n * per];
    let plan = plan_batch(order, ds.shape, cfg, epoch, start, augment);
    let render = |s: &SamplePlan, dst: &mut [f32]| -> Result<()> {
        render_placed(&ds.image(s.index)?, ds.shape, cfg.input_shape, &cfg.normalize, s.place, dst);
        Ok(())
    };
    match &ds.images {
        crate::Images::Memory(_) => plan.iter().zip(x.chunks_mut(per)).try_for_each(|(s, dst)| render(s, dst))?,
        crate::Images::Files(_) => {
            use rayon::prelude::*;
            plan.par_iter().zip(x.par_chunks_mut(per)).try_for_each(|(s, dst)| render(s, dst))?
        }
    }
    let labels = plan.iter().map(|s| ds.labels[s.index]).collect();
    let [c, h, w] = cfg.input_shape;
    Ok(Batch { x: Tensor::from_vec(&[n, c, h, w], x), labels })
}

/// A batch's images as bytes, for a device that renders batches itself: `images` holds the
/// `n` sampled images `[c, h, w]` one after another and `plan[s].index` is `s` (position in
/// `images`); the placements are the host loader's draws for the same positions.
#[derive(Debug)]
pub struct RawBatch {
    pub images: Vec<u8>,
    pub plan: Vec<SamplePlan>,
    pub labels: Vec<u32>,
}

/// Samples the batch of the given positions in `order` without rendering it: the images'
/// bytes (decoded on all cores if the data set streams from files) and their placements.
pub fn make_raw_batch(
    ds: &Dataset,
    order: &[usize],
    cfg: &LoaderConfig,
    epoch: usize,
    start: usize,
    augment: bool,
) -> Result<RawBatch> {
    let mut plan = plan_batch(order, ds.shape, cfg, epoch, start, augment);
    let indices: Vec<usize> = plan.iter().map(|s| s.index).collect();
    let images = ds.images_of(&indices)?.concat();
    let labels = indices.iter().map(|&i| ds.labels[i]).collect();
    for (pos, s) in plan.iter_mut().enumerate() {
        s.index = pos;
    }
    Ok(RawBatch { images, plan, labels })
}

/// Iterator over one epoch's batches (of [`Batch`]es, or [`RawBatch`]es), produced on a
/// background thread. A producer that fails (an unreadable file) or dies (a panic while
/// rendering a sample) ends the iteration with an error carrying its message, never with a
/// silently short epoch.
pub struct Batches<T> {
    rx: Receiver<Result<T>>,
    remaining: usize,
    producer: Option<JoinHandle<()>>,
}

/// Rendered batches: `x` as the model takes it.
pub type BatchIter = Batches<Batch>;
/// Sampled but unrendered batches (a device renders them).
pub type RawBatchIter = Batches<RawBatch>;

type MakeFn<T> = fn(&Dataset, &[usize], &LoaderConfig, usize, usize, bool) -> Result<T>;

impl<T: Send + 'static> Batches<T> {
    fn spawn(ds: Arc<Dataset>, cfg: LoaderConfig, epoch: usize, augment: bool, make: MakeFn<T>) -> Self {
        let order = epoch_order(ds.len(), cfg.seed, epoch, cfg.shuffle);
        let batches = ds.len().div_ceil(cfg.batch_size.max(1));
        let (tx, rx) = sync_channel(cfg.prefetch.max(1));
        let producer = std::thread::spawn(move || {
            for (b, chunk) in order.chunks(cfg.batch_size.max(1)).enumerate() {
                let batch = make(&ds, chunk, &cfg, epoch, b * cfg.batch_size, augment);
                let failed = batch.is_err();
                if tx.send(batch).is_err() || failed {
                    return; // consumer stopped early, or nothing more can come
                }
            }
        });
        Batches { rx, remaining: batches, producer: Some(producer) }
    }

    pub fn len(&self) -> usize {
        self.remaining
    }
    pub fn is_empty(&self) -> bool {
        self.remaining == 0
    }
}

impl BatchIter {
    /// `augment` is false for evaluation.
    pub fn new(ds: Arc<Dataset>, cfg: LoaderConfig, epoch: usize, augment: bool) -> Self {
        Batches::spawn(ds, cfg, epoch, augment, make_batch)
    }
}

impl RawBatchIter {
    /// The same samples and draws as [`BatchIter::new`]'s, left as bytes.
    pub fn raw(ds: Arc<Dataset>, cfg: LoaderConfig, epoch: usize, augment: bool) -> Self {
        Batches::spawn(ds, cfg, epoch, augment, make_raw_batch)
    }
}

impl<T> Iterator for Batches<T> {
    type Item = Result<T>;
    fn next(&mut self) -> Option<Result<T>> {
        if self.remaining == 0 {
            return None;
        }
        match self.rx.recv() {
            Ok(Ok(b)) => {
                self.remaining -= 1;
                Some(Ok(b))
            }
            Ok(Err(e)) => {
                self.remaining = 0;
                Some(Err(e))
            }
            Err(_) => {
                // The producer hung up before the last batch: it panicked.
                let left = std::mem::take(&mut self.remaining);
                let why = match self.producer.take().map(JoinHandle::join) {
                    Some(Err(payload)) => panic_message(payload.as_ref()),
                    _ => "the producer thread stopped".to_string(),
                };
                Some(Err(Error::invalid("data loader", format!("failed with {left} batches left: {why}"))))
            }
        }
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic without a message".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy(n: usize) -> Dataset {
        Dataset {
            images: (0..n * 4).map(|i| (i % 251) as u8).collect::<Vec<u8>>().into(),
            labels: (0..n as u32).map(|i| i % 3).collect(),
            shape: [1, 2, 2],
            classes: 3,
        }
    }

    fn cfg(seed: u64) -> LoaderConfig {
        LoaderConfig {
            batch_size: 4,
            shuffle: true,
            seed,
            augment: Augment { crop_pad: 1, hflip: true },
            normalize: Normalize { mean: vec![0.5], std: vec![0.25] },
            input_shape: [1, 4, 4],
            prefetch: 2,
        }
    }

    #[test]
    fn deterministic_per_seed_and_epoch_and_covers_every_sample() {
        let ds = Arc::new(toy(10));
        let all = |epoch| BatchIter::new(ds.clone(), cfg(1), epoch, true).collect::<Result<Vec<Batch>>>().unwrap();
        let (a, b, c) = (all(3), all(3), all(4));
        assert_eq!(a.len(), 3);
        assert_eq!(a.last().unwrap().labels.len(), 2);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.x, y.x);
            assert_eq!(x.labels, y.labels);
        }
        assert!(a.iter().zip(&c).any(|(x, y)| x.x != y.x));
        let mut order = epoch_order(10, 1, 3, true);
        order.sort();
        assert_eq!(order, (0..10).collect::<Vec<_>>());
        assert_eq!(a[0].x.shape(), &[4, 1, 4, 4]);
    }

    #[test]
    fn epoch_plans_rendered_on_the_host_are_the_loaders_batches() {
        let ds = Arc::new(toy(10));
        let c = cfg(5);
        let batches: Vec<Batch> = BatchIter::new(ds.clone(), c.clone(), 2, true).collect::<Result<_>>().unwrap();
        let plans = epoch_plans(&ds, &c, 2, true);
        assert_eq!(plans.len(), batches.len());
        let per = c.input_shape.iter().product::<usize>();
        for (plan, b) in plans.iter().zip(&batches) {
            let mut x = vec![0.0f32; plan.len() * per];
            for (s, dst) in plan.iter().zip(x.chunks_mut(per)) {
                render_placed(&ds.image(s.index).unwrap(), ds.shape, c.input_shape, &c.normalize, s.place, dst);
            }
            assert_eq!(x, b.x.data());
            assert_eq!(plan.iter().map(|s| ds.labels[s.index]).collect::<Vec<_>>(), b.labels);
        }
    }

    #[test]
    fn raw_batches_render_to_the_loaders_batches() {
        let ds = Arc::new(toy(11));
        let c = cfg(3);
        let host: Vec<Batch> = BatchIter::new(ds.clone(), c.clone(), 2, true).map(|b| b.unwrap()).collect();
        let raw: Vec<RawBatch> = RawBatchIter::raw(ds.clone(), c.clone(), 2, true).map(|b| b.unwrap()).collect();
        assert_eq!(host.len(), raw.len());
        let per = c.input_shape.iter().product::<usize>();
        for (h, r) in host.iter().zip(&raw) {
            assert_eq!(h.labels, r.labels);
            let mut x = vec![0.0f32; r.plan.len() * per];
            for (s, dst) in r.plan.iter().zip(x.chunks_mut(per)) {
                let img = &r.images[s.index * ds.image_len()..(s.index + 1) * ds.image_len()];
                render_placed(img, ds.shape, c.input_shape, &c.normalize, s.place, dst);
            }
            assert_eq!(x, h.x.data());
        }
    }

    #[test]
    fn a_streamed_file_that_fails_to_decode_ends_the_epoch_with_its_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut paths = Vec::new();
        for i in 0..5 {
            let p = dir.path().join(format!("{i}.png"));
            image::RgbImage::from_fn(4, 4, |x, y| image::Rgb([x as u8, y as u8, i as u8])).save(&p).unwrap();
            paths.push(p);
        }
        std::fs::write(&paths[3], b"gone bad after listing").unwrap();
        let ds = Dataset {
            images: crate::Images::Files(Arc::new(crate::ImageFiles { paths, size: 2 })),
            labels: vec![0, 1, 2, 0, 1],
            shape: [3, 2, 2],
            classes: 3,
        };
        let mut c = cfg(2);
        (c.shuffle, c.batch_size, c.augment) = (false, 2, Augment::default());
        c.input_shape = [3, 2, 2];
        c.normalize = crate::Normalize { mean: vec![0.5; 3], std: vec![0.5; 3] };
        let got: Vec<Result<Batch>> = BatchIter::new(Arc::new(ds), c, 0, false).collect();
        assert!(got[0].is_ok(), "the first batch decodes: {:?}", got[0].as_ref().err());
        let msg = got[1].as_ref().unwrap_err().to_string();
        assert!(msg.contains("3.png") && msg.contains("unreadable"), "{msg}");
        assert_eq!(got.len(), 2, "nothing after the error");
    }

    #[test]
    fn a_producer_panic_is_an_error_not_a_short_epoch() {
        // a data set whose image buffer is too short: rendering the last samples panics
        let mut ds = toy(10);
        if let crate::Images::Memory(v) = &mut ds.images {
            v.truncate(6 * 4);
        }
        let mut c = cfg(1);
        c.shuffle = false;
        let got: Vec<Result<Batch>> = BatchIter::new(Arc::new(ds), c, 0, false).collect();
        assert!(got[0].is_ok());
        let err = got.iter().find_map(|r| r.as_ref().err()).expect("an error, not a silently short epoch");
        let msg = err.to_string();
        assert!(msg.contains("data loader") && msg.contains("batches left"), "{msg}");
        assert!(got.last().unwrap().is_err());
    }
}
