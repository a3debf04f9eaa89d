//! Model checkpoints: parameters, BN statistics and optimizer buffers in safetensors, and the
//! model configuration plus training state as JSON metadata.

use crate::layer::Layer;
use crate::model::{Model, ModelConfig};
use crate::models;
use crate::recipe::Recipe;
use std::path::Path;
use tern_core::checkpoint::{self as ck, Checkpoint};
use tern_core::{Error, Result, Rng, Tensor};

pub const VELOCITY_PREFIX: &str = "optimizer.velocity.";

/// All named tensors of a model, as host tensors: parameters, then buffers.
pub fn named_tensors(model: &mut Model) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    model.visit_params(&mut |p| out.push((p.name.clone(), p.value.to_host())));
    model.visit_buffers(&mut |n, t| out.push((n.to_string(), t.to_host())));
    out
}

/// Saves the model, optional optimizer velocity (in parameter order), and metadata;
/// `meta` must be an object and gains the `model` field.
pub fn save(path: &Path, model: &mut Model, velocity: &[Tensor], mut meta: serde_json::Value) -> Result<()> {
    let mut tensors = named_tensors(model);
    let mut names = Vec::new();
    model.visit_params(&mut |p| names.push(p.name.clone()));
    for (name, v) in names.iter().zip(velocity) {
        tensors.push((format!("{VELOCITY_PREFIX}{name}"), v.to_host()));
    }
    meta["format"] = "tern-checkpoint-v1".into();
    meta["model"] = serde_json::to_value(&model.config).expect("config serialises");
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    ck::save(path, &refs, &meta)
}

/// Reads a checkpoint's model configuration.
pub fn model_config(path: &Path, c: &Checkpoint) -> Result<ModelConfig> {
    let m = c
        .meta
        .get("model")
        .ok_or_else(|| Error::Checkpoint { path: path.into(), what: "metadata has no `model` field".into() })?;
    serde_json::from_value(m.clone())
        .map_err(|e| Error::Checkpoint { path: path.into(), what: format!("bad `model` metadata: {e}") })
}

/// Copies the checkpoint's tensors into `model`; every parameter and buffer must be present
/// with the right shape. Returns the optimizer velocity if the checkpoint has one.
pub fn load_into(path: &Path, c: &Checkpoint, model: &mut Model) -> Result<Option<Vec<Tensor>>> {
    let cfg = model_config(path, c)?;
    if cfg.name != model.config.name {
        return Err(Error::Checkpoint {
            path: path.into(),
            what: format!("holds a `{}` model, expected `{}`", cfg.name, model.config.name),
        });
    }
    adopt_unit_masks(c, model);
    let mut err = None;
    let mut copy = |name: &str, t: &mut Tensor| {
        if err.is_some() {
            return;
        }
        match c.get(name) {
            None => err = Some(format!("tensor `{name}` is missing")),
            Some(src) if src.shape() != t.shape() => {
                err = Some(format!("tensor `{name}` has shape {:?}, the model expects {:?}", src.shape(), t.shape()))
            }
            // on the tensor's device (a model on a device stays there)
            Some(src) if t.is_host() => *t = src.clone(),
            Some(_) => err = Some(format!("tensor `{name}`: load checkpoints into a host model, then move it")),
        }
    };
    model.visit_params(&mut |p| copy(&p.name, &mut p.value));
    model.visit_buffers(&mut |n, t| copy(n, t));
    if let Some(what) = err {
        return Err(Error::Checkpoint { path: path.into(), what });
    }
    let mut velocity = Vec::new();
    model.visit_params(&mut |p| {
        if let Some(v) = c.get(&format!("{VELOCITY_PREFIX}{}", p.name)) {
            velocity.push(v.clone());
        }
    });
    Ok((!velocity.is_empty()).then_some(velocity))
}

/// Gives every mmOp layer whose block-sparsity mask the checkpoint holds that mask (the
/// masks are state a run creates, not part of a freshly built model).
fn adopt_unit_masks(c: &Checkpoint, model: &mut Model) {
    model.visit_mm_layers(&mut |name, t| {
        if let Some(m) = c.get(&format!("{name}.unit_mask")) {
            t.mask = Some(m.clone());
        }
    });
}

/// Copies a checkpoint of another task into `model` (the §4.2 path for a network trained on
/// other data): every tensor must match, except that a classifier (the last linear layer)
/// with another number of classes keeps its fresh initialisation, and a first convolution
/// over 3 input channels feeding a 1-channel model gets its kernels summed over the colours
/// (what it computed on a grey image repeated in R, G and B). Returns what was adapted.
pub fn load_into_adapted(path: &Path, c: &Checkpoint, model: &mut Model) -> Result<Vec<String>> {
    let cfg = model_config(path, c)?;
    if cfg.name != model.config.name {
        return Err(Error::Checkpoint {
            path: path.into(),
            what: format!("holds a `{}` model, expected `{}`", cfg.name, model.config.name),
        });
    }
    let mut last_linear = None;
    model.net.visit_leaves(&mut |l| {
        if l.kind() == "linear" {
            last_linear = Some(l.name().to_string());
        }
    });
    let mut first_conv = None;
    model.net.visit_leaves(&mut |l| {
        if first_conv.is_none() && l.kind() == "conv" {
            first_conv = Some(l.name().to_string());
        }
    });
    // block-sparsity masks stay behind: the new task's run sets its own (if any)
    let (mut notes, mut err) = (Vec::new(), None);
    let mut copy = |name: &str, t: &mut Tensor| {
        if err.is_some() {
            return;
        }
        let Some(src) = c.get(name) else {
            err = Some(format!("tensor `{name}` is missing"));
            return;
        };
        let layer = name.rsplit_once('.').map_or(name, |(l, _)| l);
        if src.shape() == t.shape() {
            *t = src.clone();
        } else if Some(layer) == last_linear.as_deref() && src.shape()[1..] == t.shape()[1..] {
            notes.push(format!(
                "{name}: {} classes in the checkpoint, {} here: freshly initialised",
                src.dim(0),
                t.dim(0)
            ));
        } else if Some(layer) == first_conv.as_deref()
            && src.shape().len() == 4
            && src.dim(1) == 3
            && t.dim(1) == 1
            && src.dim(0) == t.dim(0)
            && src.shape()[2..] == t.shape()[2..]
        {
            let (k, rs) = (src.dim(0), src.dim(2) * src.dim(3));
            let s = src.data();
            let summed: Vec<f32> =
                (0..k * rs).map(|i| (0..3).map(|ch| s[(i / rs * 3 + ch) * rs + i % rs]).sum()).collect();
            *t = Tensor::from_vec(t.shape(), summed);
            notes.push(format!("{name}: RGB kernels summed for 1-channel input"));
        } else {
            err = Some(format!("tensor `{name}` has shape {:?}, the model expects {:?}", src.shape(), t.shape()));
        }
    };
    model.visit_params(&mut |p| copy(&p.name, &mut p.value));
    model.visit_buffers(&mut |n, t| copy(n, t));
    match err {
        Some(what) => Err(Error::Checkpoint { path: path.into(), what }),
        None => Ok(notes),
    }
}

/// Builds the model a checkpoint describes, loads its weights, and puts it in the state its
/// last training epoch used (which layers are ternary, ReLU thresholds).
pub fn load_model(path: &Path) -> Result<(Model, Checkpoint)> {
    let c = ck::load(path)?;
    let cfg = model_config(path, &c)?;
    let mut model = models::build(&cfg, &mut Rng::new(0))?;
    load_into(path, &c, &mut model)?;
    if let Some(r) = c.meta.get("train").and_then(|t| t.get("recipe")) {
        let recipe: Recipe = serde_json::from_value(r.clone())
            .map_err(|e| Error::Checkpoint { path: path.into(), what: format!("bad `train.recipe` metadata: {e}") })?;
        let epochs = c.meta.get("epoch").and_then(|e| e.as_u64()).unwrap_or(1) as usize;
        recipe.apply_final(&mut model, epochs);
    } else if let Some(t) = c.meta.get("relu_threshold").and_then(|t| t.as_f64()) {
        // an imported model's ReLU threshold (ONNX ThresholdedRelu)
        model.set_relu(t as f32, 0.0);
    }
    Ok((model, c))
}
