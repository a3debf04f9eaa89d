//! Named data sets (`fashion-mnist`, `mnist`, `cifar10`, `folder`) and where they live.

use crate::{cifar, folder, idx, DataSplit, Dataset};
use std::path::{Path, PathBuf};
use tern_core::{Error, Result};

pub const FASHION_MNIST_DIR: &str = "/usr/share/datasets/fashion-mnist";
pub const FASHION_CLASSES: [&str; 10] =
    ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "ankle-boot"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataKind {
    FashionMnist,
    Mnist,
    Cifar10,
    Folder,
}

impl DataKind {
    pub const NAMES: [&'static str; 4] = ["fashion-mnist", "mnist", "cifar10", "folder"];

    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "fashion-mnist" => DataKind::FashionMnist,
            "mnist" => DataKind::Mnist,
            "cifar10" | "cifar-10" => DataKind::Cifar10,
            "folder" => DataKind::Folder,
            _ => {
                return Err(Error::invalid(
                    "--data",
                    format!("unknown data set `{s}`: expected one of {:?}", Self::NAMES),
                ))
            }
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            DataKind::FashionMnist => "fashion-mnist",
            DataKind::Mnist => "mnist",
            DataKind::Cifar10 => "cifar10",
            DataKind::Folder => "folder",
        }
    }
}

/// Finds `stem` or `stem.gz` in `dir`.
fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

fn missing(kind: DataKind, path: &Path, hint: &str) -> Error {
    Error::MissingDataset { name: kind.name().into(), path: path.into(), hint: hint.into() }
}

/// Loads a named data set; `path` overrides the default location (`--data-path`).
/// `image_size` is the side length image folders are resized to; folders whose decoded
/// images would take more than `in_memory_max` bytes stream from their files.
pub fn load_named(kind: DataKind, path: Option<&Path>, image_size: usize, in_memory_max: usize) -> Result<DataSplit> {
    match kind {
        DataKind::FashionMnist | DataKind::Mnist => {
            let dir = match (kind, path) {
                (_, Some(p)) => p.to_path_buf(),
                (DataKind::FashionMnist, None) => PathBuf::from(FASHION_MNIST_DIR),
                _ => {
                    return Err(missing(kind, Path::new("."), "pass --data-path DIR, a folder with the four IDX files"))
                }
            };
            load_idx_split(kind, &dir, path.is_some())
        }
        DataKind::Cifar10 => {
            let dir = path.ok_or_else(|| {
                missing(kind, Path::new("."), "pass --data-path DIR (the cifar-10-batches-bin folder)")
            })?;
            let hint = "expected data_batch_1.bin .. data_batch_5.bin and test_batch.bin (CIFAR-10 binary version)";
            let train_files: Vec<PathBuf> =
                cifar::TRAIN_FILES.iter().map(|f| dir.join(f)).filter(|p| p.is_file()).collect();
            if train_files.is_empty() {
                return Err(missing(kind, &dir.join(cifar::TRAIN_FILES[0]), hint));
            }
            let test_file = dir.join(cifar::TEST_FILE);
            if !test_file.is_file() {
                return Err(missing(kind, &test_file, hint));
            }
            let refs: Vec<&Path> = train_files.iter().map(|p| p.as_path()).collect();
            Ok(DataSplit {
                name: kind.name().into(),
                train: cifar::read_cifar10(&refs)?,
                test: cifar::read_cifar10(&[&test_file])?,
                class_names: cifar::CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
            })
        }
        DataKind::Folder => {
            let root = path.ok_or_else(|| {
                missing(kind, Path::new("."), "pass --data-path ROOT with ROOT/train/<class>/ and ROOT/val/<class>/")
            })?;
            if !root.is_dir() {
                return Err(missing(
                    kind,
                    root,
                    "expected a folder with train/ and val/ (or test/) sub-folders of classes",
                ));
            }
            let train_dir = root.join("train");
            let test_dir = ["val", "test"].iter().map(|d| root.join(d)).find(|p| p.is_dir());
            let (train_dir, test_dir) = match (train_dir.is_dir(), test_dir) {
                (true, Some(t)) => (train_dir, t),
                _ => {
                    return Err(missing(
                        kind,
                        &train_dir,
                        "expected ROOT/train/<class>/ and ROOT/val/<class>/ (or ROOT/test/)",
                    ))
                }
            };
            let classes: Vec<String> = folder::class_dirs(&train_dir)?.into_iter().map(|(n, _)| n).collect();
            let train = folder::read_folder(&train_dir, &classes, image_size, in_memory_max)?;
            let test = folder::read_folder(&test_dir, &classes, image_size, in_memory_max)?;
            Ok(DataSplit { name: kind.name().into(), train, test, class_names: classes })
        }
    }
}

/// The four IDX files of (Fashion-)MNIST in `dir`; `user_given`: the folder came from --data-path.
fn load_idx_split(kind: DataKind, dir: &Path, user_given: bool) -> Result<DataSplit> {
    let hint = if kind == DataKind::FashionMnist && !user_given {
        "install it with `apt-get install -y dataset-fashion-mnist`, or pass --data-path DIR"
    } else {
        "expected train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"
    };
    if !dir.is_dir() {
        return Err(missing(kind, dir, hint));
    }
    let f = |stem: &str| find_idx(dir, stem).ok_or_else(|| missing(kind, &dir.join(stem), hint));
    let train = idx::read_idx_pair(&f("train-images-idx3-ubyte")?, &f("train-labels-idx1-ubyte")?, 10)?;
    let test = idx::read_idx_pair(&f("t10k-images-idx3-ubyte")?, &f("t10k-labels-idx1-ubyte")?, 10)?;
    let class_names = if kind == DataKind::FashionMnist {
        FASHION_CLASSES.iter().map(|s| s.to_string()).collect()
    } else {
        (0..10).map(|i| i.to_string()).collect()
    };
    check_shapes(&train, &test, dir)?;
    Ok(DataSplit { name: kind.name().into(), train, test, class_names })
}

fn check_shapes(train: &Dataset, test: &Dataset, dir: &Path) -> Result<()> {
    if train.shape != test.shape {
        return Err(Error::format(
            dir,
            format!("train images are {:?} but test images are {:?}", train.shape, test.shape),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_and_missing_data_sets_explain_themselves() {
        assert!(DataKind::parse("imagenet").unwrap_err().to_string().contains("--data"));
        let dir = tempfile::tempdir().unwrap();
        let e = load_named(DataKind::Mnist, Some(dir.path()), 32, usize::MAX).unwrap_err().to_string();
        assert!(e.contains("train-images-idx3-ubyte"), "{e}");
        let e =
            load_named(DataKind::FashionMnist, Some(&dir.path().join("nope")), 32, usize::MAX).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        let e = load_idx_split(DataKind::FashionMnist, &dir.path().join("absent"), false).unwrap_err().to_string();
        assert!(e.contains("apt-get install -y dataset-fashion-mnist") && e.contains("--data-path"), "{e}");
        let e = load_named(DataKind::Cifar10, Some(dir.path()), 32, usize::MAX).unwrap_err().to_string();
        assert!(e.contains("data_batch_1.bin"), "{e}");
        let e = load_named(DataKind::Folder, Some(dir.path()), 32, usize::MAX).unwrap_err().to_string();
        assert!(e.contains("train"), "{e}");
    }

    #[test]
    fn real_fashion_mnist_when_installed() {
        if !Path::new(FASHION_MNIST_DIR).is_dir() {
            eprintln!("skipping: {FASHION_MNIST_DIR} not installed");
            return;
        }
        let s = load_named(DataKind::FashionMnist, None, 32, usize::MAX).unwrap();
        assert_eq!((s.train.len(), s.test.len(), s.train.shape), (60_000, 10_000, [1, 28, 28]));
        assert!(s.train.counts_per_class().iter().all(|&c| c == 6000));
        assert!(s.test.counts_per_class().iter().all(|&c| c == 1000));
    }
}
