//! `Dataset`: images as bytes `[len, c, h, w]` plus labels; `DataSplit`: train and test.

use tern_core::{Error, Result};

#[derive(Clone, Debug)]
pub struct Dataset {
    /// Row-major `[len, c, h, w]`, one byte per value (0-255).
    pub images: Vec<u8>,
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
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.image_len();
        &self.images[i * n..(i + 1) * n]
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
        Dataset {
            images: self.images[..n * self.image_len()].to_vec(),
            labels: self.labels[..n].to_vec(),
            shape: self.shape,
            classes: self.classes,
        }
    }
    /// Per-channel mean and standard deviation of the values scaled to [0, 1].
    pub fn channel_stats(&self) -> (Vec<f32>, Vec<f32>) {
        let [c, h, w] = self.shape;
        let hw = h * w;
        let mut s = vec![0.0f64; c];
        let mut ss = vec![0.0f64; c];
        for img in self.images.chunks(c * hw) {
            for ch in 0..c {
                for &v in &img[ch * hw..(ch + 1) * hw] {
                    let v = v as f64 / 255.0;
                    s[ch] += v;
                    ss[ch] += v * v;
                }
            }
        }
        let m = (self.len() * hw).max(1) as f64;
        let mean: Vec<f32> = s.iter().map(|v| (v / m) as f32).collect();
        let std: Vec<f32> = (0..c).map(|i| ((ss[i] / m - (s[i] / m).powi(2)).max(1e-12)).sqrt() as f32).collect();
        (mean, std)
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

/// A named data set's training and test parts, with human-readable class names.
#[derive(Clone, Debug)]
pub struct DataSplit {
    pub name: String,
    pub train: Dataset,
    pub test: Dataset,
    pub class_names: Vec<String>,
}
