//! torchvision state dicts onto tern's models: the name mapping, shape checks, and a report
//! of every key that did not fit.
//!
//! torchvision → tern: `conv1`/`bn1` → `stem.conv`/`stem.bn`; in `layerL.B`, `convK`/`bnK` →
//! `layerL.B.K.conv`/`.K.bn` and `downsample.0`/`.1` → `downsample.conv`/`.bn`; `fc` → `fc`.
//! VGG-BN keeps torchvision's names (`features.i`, `classifier.j`: tern builds it that way).
//! BN's `num_batches_tracked` has no counterpart (tern's momentum is fixed) and is skipped.

use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::Path;
use tern_core::{Error, Result, Rng, Tensor};
use tern_train::{models, Model, ModelConfig};

/// The architectures whose torchvision layout tern builds.
pub const ARCHS: [&str; 8] =
    ["resnet18", "resnet34", "resnet50", "resnet152", "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn"];

/// tern's name for a torchvision state-dict key (None: no counterpart).
pub fn tern_name(key: &str) -> Option<String> {
    if key.ends_with("num_batches_tracked") {
        return None;
    }
    let parts: Vec<&str> = key.split('.').collect();
    let out = match parts.as_slice() {
        ["features" | "classifier", i, p] if i.parse::<usize>().is_ok() => format!("{}.{i}.{p}", parts[0]),
        ["conv1", p] => format!("stem.conv.{p}"),
        ["bn1", p] => format!("stem.bn.{p}"),
        ["fc", p] => format!("fc.{p}"),
        [layer, block, "downsample", "0", p] => format!("{layer}.{block}.downsample.conv.{p}"),
        [layer, block, "downsample", "1", p] => format!("{layer}.{block}.downsample.bn.{p}"),
        [layer, block, m, p] if layer.starts_with("layer") => {
            let (kind, k) = m.split_at(m.len() - 1);
            let kind = match kind {
                "conv" => "conv",
                "bn" => "bn",
                _ => return Some(format!("?{key}")),
            };
            format!("{layer}.{block}.{k}.{kind}.{p}")
        }
        _ => format!("?{key}"),
    };
    Some(out)
}

/// What an import found.
#[derive(Debug, Default, serde::Serialize)]
pub struct Report {
    pub loaded: usize,
    /// Keys skipped on purpose (`num_batches_tracked`).
    pub skipped: Vec<String>,
    /// Keys in the file with no place in the model.
    pub unmatched: Vec<String>,
    /// Model tensors the file does not provide.
    pub missing: Vec<String>,
}

/// The float tensors of a safetensors file, and the names of the integer BN counters it
/// skipped.
fn read(path: &Path) -> Result<(BTreeMap<String, Tensor>, Vec<String>)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let st = SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a safetensors file (truncated or corrupt?): {e:?}")))?;
    let (mut out, mut skipped) = (BTreeMap::new(), Vec::new());
    for name in st.names() {
        let v = st.tensor(name).map_err(|e| Error::format(path, format!("tensor {name}: {e:?}")))?;
        let data: Vec<f32> = match v.dtype() {
            Dtype::F32 => v.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
            Dtype::I64 | Dtype::I32 if name.ends_with("num_batches_tracked") => {
                skipped.push(name.to_string());
                continue;
            }
            d => {
                return Err(Error::format(
                    path,
                    format!("tensor {name} has dtype {d:?}: expected F32 (save the model in float32)"),
                ))
            }
        };
        let elements = v.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements != Some(data.len()) {
            return Err(Error::format(path, format!("tensor {name}: shape {:?} does not match its data", v.shape())));
        }
        out.insert(name.to_string(), Tensor::from_vec(v.shape(), data));
    }
    skipped.sort();
    Ok((out, skipped))
}

/// Builds `arch` from a torchvision state dict at `path` for `[channels, side, side]` input:
/// the base width comes from `conv1`, the classes from `fc`; every tensor's shape is checked.
/// Errors name the file and list every unmatched and missing key.
pub fn import(arch: &str, path: &Path, side: usize) -> Result<(Model, Report)> {
    if !ARCHS.contains(&arch) {
        return Err(Error::invalid("--arch", format!("`{arch}`: expected one of {ARCHS:?}")));
    }
    let (file, counters) = read(path)?;
    let need = |k: &str| {
        file.get(k).ok_or_else(|| Error::format(path, format!("no `{k}`: not a torchvision {arch} state dict")))
    };
    let vgg = arch.starts_with("vgg");
    let conv1 = need(if vgg { "features.0.weight" } else { "conv1.weight" })?;
    let fc = need(if vgg { "classifier.6.weight" } else { "fc.weight" })?;
    let (width, channels, classes) = (conv1.dim(0), conv1.dim(1), fc.dim(0));
    let cfg = ModelConfig {
        name: arch.into(),
        in_shape: [channels, side, side],
        classes,
        width,
        small_input: false,
        spec: None,
    };
    let mut model = models::build(&cfg, &mut Rng::new(0))?;
    let mut report = Report { skipped: counters, ..Default::default() };
    let mut used = std::collections::BTreeSet::new();
    let mut by_tern: BTreeMap<String, &str> = BTreeMap::new();
    for key in file.keys() {
        match tern_name(key) {
            None => report.skipped.push(key.clone()),
            Some(t) => {
                by_tern.insert(t, key);
            }
        }
    }
    let mut bad_shapes = Vec::new();
    let mut take = |name: &str, t: &mut Tensor| match by_tern.get(name) {
        Some(&key) => {
            let src = &file[key];
            if src.shape() != t.shape() {
                bad_shapes.push(format!("{key}: {:?} in the file, {:?} in {arch}", src.shape(), t.shape()));
            } else {
                *t = src.clone();
                used.insert(key.to_string());
            }
        }
        None => report.missing.push(name.to_string()),
    };
    model.visit_params(&mut |p| take(&p.name, &mut p.value));
    model.visit_buffers(&mut |n, t| take(n, t));
    report.loaded = used.len();
    report.unmatched = file.keys().filter(|k| !used.contains(*k) && tern_name(k).is_some()).cloned().collect();
    if !bad_shapes.is_empty() || !report.missing.is_empty() || !report.unmatched.is_empty() {
        return Err(Error::format(
            path,
            format!(
                "does not fit {arch} (width {width}, {classes} classes): wrong shapes {bad_shapes:?}; keys with no place in the model {:?}; model tensors not in the file {:?}",
                report.unmatched, report.missing
            ),
        ));
    }
    Ok((model, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_onto_terns_layers() {
        assert_eq!(tern_name("conv1.weight").unwrap(), "stem.conv.weight");
        assert_eq!(tern_name("bn1.running_var").unwrap(), "stem.bn.running_var");
        assert_eq!(tern_name("layer2.0.conv1.weight").unwrap(), "layer2.0.1.conv.weight");
        assert_eq!(tern_name("layer4.1.bn3.bias").unwrap(), "layer4.1.3.bn.bias");
        assert_eq!(tern_name("layer3.0.downsample.0.weight").unwrap(), "layer3.0.downsample.conv.weight");
        assert_eq!(tern_name("layer3.0.downsample.1.running_mean").unwrap(), "layer3.0.downsample.bn.running_mean");
        assert_eq!(tern_name("fc.bias").unwrap(), "fc.bias");
        assert_eq!(tern_name("layer1.0.bn1.num_batches_tracked"), None);
        assert_eq!(tern_name("classifier.6.weight").unwrap(), "classifier.6.weight");
        assert_eq!(tern_name("features.1.running_mean").unwrap(), "features.1.running_mean");
        assert!(tern_name("features.x.weight").unwrap().starts_with('?'));
    }
}
