//! Helpers shared by the CLI's integration tests.

use std::path::Path;
use tern_data::idx::write_idx;
use tern_data::synthetic;

/// A small MNIST-shaped IDX data set (gzip-compressed) in `dir`.
pub fn write_mnist_like(dir: &Path, n_train: usize, n_test: usize) {
    let s = synthetic::split(n_train, n_test, [1, 28, 28], 10, 0.6, 5);
    for (prefix, ds) in [("train", &s.train), ("t10k", &s.test)] {
        write_idx(&dir.join(format!("{prefix}-images-idx3-ubyte.gz")), &[ds.len(), 28, 28], ds.bytes().unwrap(), true)
            .unwrap();
        let labels: Vec<u8> = ds.labels.iter().map(|&l| l as u8).collect();
        write_idx(&dir.join(format!("{prefix}-labels-idx1-ubyte.gz")), &[ds.len()], &labels, true).unwrap();
    }
}
