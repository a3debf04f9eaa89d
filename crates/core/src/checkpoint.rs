//! Checkpoints: named f32 tensors in safetensors plus JSON metadata under the key `tern`,
//! written atomically (temporary file in the same folder, fsync, rename).

use crate::error::{Error, Result};
use crate::tensor::Tensor;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

/// The metadata key under which tern stores its JSON.
pub const META_KEY: &str = "tern";

#[derive(Debug)]
pub struct Checkpoint {
    /// In file order (sorted by name, as safetensors stores them).
    pub tensors: Vec<(String, Tensor)>,
    pub meta: serde_json::Value,
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t)
    }
}

/// Writes `bytes` to `path` so that a crash, a kill or a full disk leaves either the old file
/// or the new one: a temporary file in the same folder, fsynced, renamed over `path`, then
/// the folder fsynced so the rename itself survives a power cut. On failure the temporary
/// file is removed and the old file is untouched.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let file_name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{file_name}.tmp-{}", std::process::id()));
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    // the rename lives in the folder's entries: make it durable too
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))
}

/// Saves tensors and metadata atomically.
pub fn save(path: &Path, tensors: &[(String, &Tensor)], meta: &serde_json::Value) -> Result<()> {
    let bytes_of: Vec<Vec<u8>> =
        tensors.iter().map(|(_, t)| t.host_values().iter().flat_map(|v| v.to_le_bytes()).collect()).collect();
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .zip(&bytes_of)
        .map(|((name, t), b)| {
            let view = TensorView::new(Dtype::F32, t.shape().to_vec(), b).expect("shape matches byte length");
            (name.clone(), view)
        })
        .collect();
    let info = Some(HashMap::from([(META_KEY.to_string(), meta.to_string())]));
    let bytes = safetensors::serialize(views, &info)
        .map_err(|e| Error::Checkpoint { path: path.into(), what: format!("cannot serialise: {e}") })?;
    write_atomic(path, &bytes)
}

/// Loads every tensor and the metadata; a truncated or foreign file is a clear error.
pub fn load(path: &Path) -> Result<Checkpoint> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse(&bytes, path)
}

/// Parses the bytes of a checkpoint file (named `path` in errors).
pub fn parse(bytes: &[u8], path: &Path) -> Result<Checkpoint> {
    let bad = |what: String| Error::Checkpoint { path: path.into(), what };
    let (_, header) = SafeTensors::read_metadata(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file (truncated or corrupt?): {e:?}")))?;
    let st = SafeTensors::deserialize(bytes)
        .map_err(|e| bad(format!("not a valid safetensors file (truncated or corrupt?): {e:?}")))?;
    let meta_text = header
        .metadata()
        .as_ref()
        .and_then(|m| m.get(META_KEY).cloned())
        .ok_or_else(|| bad(format!("no `{META_KEY}` metadata: not written by tern")))?;
    let meta: serde_json::Value =
        serde_json::from_str(&meta_text).map_err(|e| bad(format!("metadata is not valid JSON: {e}")))?;
    let mut names: Vec<String> = st.names().into_iter().cloned().collect();
    names.sort();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| bad(format!("tensor {name}: {e:?}")))?;
        if view.dtype() != Dtype::F32 {
            return Err(bad(format!("tensor {name} has dtype {:?}, expected F32", view.dtype())));
        }
        let elements = view.shape().iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if elements != Some(view.data().len() / 4) || view.data().len() % 4 != 0 {
            return Err(bad(format!(
                "tensor {name}: shape {:?} does not match its {} bytes",
                view.shape(),
                view.data().len()
            )));
        }
        let data: Vec<f32> =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.push((name, Tensor::from_vec(view.shape(), data)));
    }
    Ok(Checkpoint { tensors, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_and_truncation_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.safetensors");
        let a = Tensor::from_vec(&[2, 3], vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let b = Tensor::from_vec(&[1], vec![-1.5]);
        let meta = serde_json::json!({"model": "lenet5", "epoch": 3});
        save(&path, &[("b".into(), &b), ("a".into(), &a)], &meta).unwrap();
        let ck = load(&path).unwrap();
        assert_eq!(ck.meta, meta);
        assert_eq!(ck.get("a").unwrap(), &a);
        assert_eq!(ck.get("b").unwrap(), &b);
        // no temporary files are left behind
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 5]).unwrap();
        let err = load(&path).unwrap_err().to_string();
        assert!(err.contains("m.safetensors") && err.contains("truncated"), "{err}");
    }
}
