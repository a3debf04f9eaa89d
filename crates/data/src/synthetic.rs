//! A small generated data set (class prototypes plus noise) for tests, demos and benchmarks
//! that must not depend on files.

use crate::{DataSplit, Dataset};
use tern_core::Rng;

/// `n` images of `shape`, `classes` classes: each image is its class's random prototype
/// blended with per-image noise (`noise` ∈ [0, 1]: 0 = prototype only, 1 = noise only).
pub fn dataset(n: usize, shape: [usize; 3], classes: usize, noise: f32, seed: u64) -> Dataset {
    let mut rng = Rng::new(seed);
    let len: usize = shape.iter().product();
    // Prototypes come from a stream that depends on the shape and classes only, so train and
    // test sets made with different seeds share them.
    let mut proto_rng = Rng::new(0x5EED ^ (len * 31 + classes) as u64);
    let protos: Vec<Vec<f32>> = (0..classes).map(|_| (0..len).map(|_| proto_rng.uniform() * 255.0).collect()).collect();
    let mut images = Vec::with_capacity(n * len);
    let mut labels = Vec::with_capacity(n);
    for i in 0..n {
        let label = (i % classes) as u32;
        for &p in &protos[label as usize] {
            let v = (1.0 - noise) * p + noise * rng.uniform() * 255.0;
            images.push(v.round().clamp(0.0, 255.0) as u8);
        }
        labels.push(label);
    }
    Dataset { images: images.into(), labels, shape, classes }
}

/// Train and test parts with the same prototypes.
pub fn split(n_train: usize, n_test: usize, shape: [usize; 3], classes: usize, noise: f32, seed: u64) -> DataSplit {
    DataSplit {
        name: "synthetic".into(),
        train: dataset(n_train, shape, classes, noise, seed),
        test: dataset(n_test, shape, classes, noise, seed.wrapping_add(1)),
        class_names: (0..classes).map(|c| format!("class{c}")).collect(),
    }
}
