//! `Dataset`: images as bytes `[len, c, h, w]` (held in memory, or image files decoded when a
//! batch needs them) plus labels; `DataSplit`: train and test.

use rayon::prelude::*;
use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use tern_core::{Error, Result};

/// Where a data set's images are.
#[derive(Clone, Debug)]
pub enum Images {
    /// Decoded: row-major `[len, c, h, w]`, one byte per value (0-255).
    Memory(Vec<u8>),
    /// Image files, decoded (to `[3, size, size]`) each time a batch needs them: an
    /// ImageNet-scale folder does not fit in memory decoded (1.28 M × 150 KB).
    Files(Arc<ImageFiles>),
}

#[derive(Debug)]
pub struct ImageFiles {
    pub paths: Vec<PathBuf>,
    /// Side length the images are resized and centre-cropped to.
    pub size: usize,
}

impl From<Vec<u8>> for Images {
    fn from(v: Vec<u8>) -> Self {
        Images::Memory(v)
    }
}

#[derive(Clone, Debug)]
pub struct Dataset {
    pub images: Images,
    pub labels: Vec<u32>,
    /// `[c, h, w]` of one image.
    pub shape: [usize; 3],
    pub classes: usize,
}

impl Dataset {
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    pub fn image_len(&self) -> usize {
        self.shape.iter().product()
    }
    /// Image `i`'s bytes `[c, h, w]` (decoded now if the data set streams from files).
    pub fn image(&self, i: usize) -> Result<Cow<'_, [u8]>> {
        match &self.images {
            Images::Memory(v) => {
                let n = self.image_len();
                Ok(Cow::Borrowed(&v[i * n..(i + 1) * n]))
            }
            Images::Files(f) => crate::folder::load_image(&f.paths[i], f.size).map(Cow::Owned),
        }
    }
    /// The images of `indices`, decoded on all cores if the data set streams from files.
    pub fn images_of(&self, indices: &[usize]) -> Result<Vec<Cow<'_, [u8]>>> {
        match &self.images {
            Images::Memory(_) => indices.iter().map(|&i| self.image(i)).collect(),
            Images::Files(_) => indices.par_iter().map(|&i| self.image(i)).collect(),
        }
    }
    /// Every image's bytes, when the data set holds them in memory.
    pub fn bytes(&self) -> Option<&[u8]> {
        match &self.images {
            Images::Memory(v) => Some(v),
            Images::Files(_) => None,
        }
    }
    pub fn counts_per_class(&self) -> Vec<usize> {
        let mut c = vec![0; self.classes];
        for &l in &self.labels {
            c[l as usize] += 1;
        }
        c
    }
    /// The first `n` samples (all if fewer).
    pub fn take(&self, n: usize) -> Dataset {
        let n = n.min(self.len());
        let images = match &self.images {
            Images::Memory(v) => Images::Memory(v[..n * self.image_len()].to_vec()),
            Images::Files(f) => Images::Files(Arc::new(ImageFiles { paths: f.paths[..n].to_vec(), size: f.size })),
        };
        Dataset { images, labels: self.labels[..n].to_vec(), shape: self.shape, classes: self.classes }
    }
    /// Per-channel mean and standard deviation of the values scaled to [0, 1]: over every
    /// image, or over [`STATS_SAMPLE`] evenly spaced ones of a data set that streams.
    pub fn channel_stats(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let mut s = vec![0.0f64; c];
        let mut ss = vec![0.0f64; c];
        let picked: Vec<usize> = match &self.images {
            Images::Memory(_) => (0..self.len()).collect(),
            Images::Files(_) => {
                let k = self.len().min(STATS_SAMPLE);
                (0..k).map(|j| j * self.len() / k.max(1)).collect()
            }
        };
        for img in self.images_of(&picked)? {
            for ch in 0..c {
                for &v in &img[ch * hw..(ch + 1) * hw] {
                    let v = v as f64 / 255.0;
                    s[ch] += v;
                    ss[ch] += v * v;
                }
            }
        }
        let m = (picked.len() * hw).max(1) as f64;
        let mean: Vec<f32> = s.iter().map(|v| (v / m) as f32).collect();
        let std: Vec<f32> = (0..c).map(|i| ((ss[i] / m - (s[i] / m).powi(2)).max(1e-12)).sqrt() as f32).collect();
        Ok((mean, std))
    }
    /// Checks every label is below `classes`; `source` names the file for the error.
    pub fn validate_labels(&self, source: &std::path::Path) -> Result<()> {
        if let Some((i, &l)) = self.labels.iter().enumerate().find(|(_, &l)| l as usize >= self.classes) {
            return Err(Error::format(
                source,
                format!("label {l} of sample {i} is out of range: expected 0..{}", self.classes),
            ));
        }
        Ok(())
    }
}

/// Images a streamed data set's channel statistics are taken from.
pub const STATS_SAMPLE: usize = 2048;

/// A named data set's training and test parts, with human-readable class names.
#[derive(Clone, Debug)]
pub struct DataSplit {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
    pub class_names: Vec<String>,
}
