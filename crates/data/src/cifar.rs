//! CIFAR-10 binary version: records of 1 label byte + 3072 pixel bytes (3x32x32, channel-major),
//! in `data_batch_1.bin` .. `data_batch_5.bin` and `test_batch.bin`.

use crate::Dataset;
use std::path::Path;
use tern_core::{Error, Result};

pub const RECORD: usize = 1 + 3 * 32 * 32;
pub const TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub const TEST_FILE: &str = "test_batch.bin";
pub const CLASS_NAMES: [&str; 10] =
    ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"];

/// Reads and concatenates CIFAR-10 binary files.
pub fn read_cifar10(files: &[&Path]) -> Result<Dataset> {
    let mut ds = Dataset { images: Vec::new().into(), labels: Vec::new(), shape: [3, 32, 32], classes: 10 };
    for &path in files {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        parse_records(&bytes, path, &mut ds)?;
    }
    Ok(ds)
}

/// Appends the records in `bytes` (one CIFAR-10 binary file, named `path` in errors) to `ds`.
pub fn parse_records(bytes: &[u8], path: &Path, ds: &mut Dataset) -> Result<()> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return Err(Error::format(
            path,
            format!("{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated?)", bytes.len()),
        ));
    }
    let crate::Images::Memory(images) = &mut ds.images else {
        return Err(Error::invalid("CIFAR-10 reader", "records can only be added to a data set held in memory"));
    };
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return Err(Error::format(path, format!("label {} of record {i} is out of range: expected 0..10", rec[0])));
        }
        ds.labels.push(rec[0] as u32);
        images.extend_from_slice(&rec[1..]);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(labels: &[u8]) -> Vec<u8> {
        labels.iter().flat_map(|&l| std::iter::once(l).chain((0..RECORD - 1).map(move |i| (i as u8) ^ l))).collect()
    }

    #[test]
    fn reads_records_and_rejects_bad_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("data_batch_1.bin");
        let b = dir.path().join("data_batch_2.bin");
        std::fs::write(&a, records(&[3, 9])).unwrap();
        std::fs::write(&b, records(&[0])).unwrap();
        let ds = read_cifar10(&[&a, &b]).unwrap();
        assert_eq!(ds.labels, vec![3, 9, 0]);
        assert_eq!(ds.image(1).unwrap()[5], 5 ^ 9);

        std::fs::write(&b, &records(&[1])[..RECORD - 7]).unwrap();
        let e = read_cifar10(&[&a, &b]).unwrap_err().to_string();
        assert!(e.contains("data_batch_2.bin") && e.contains("truncated"), "{e}");
        std::fs::write(&b, records(&[11])).unwrap();
        let e = read_cifar10(&[&b]).unwrap_err().to_string();
        assert!(e.contains("label 11"), "{e}");
    }
}
