//! ONNX graphs into tern models. Every operator is checked against the set tern runs; the
//! graph is then matched, node for node, against the ONNX form of each of tern's
//! architectures that could have its input, width and classes (the exporter is the oracle:
//! same operators in the same order, same attributes, same weight shapes), and the weights
//! are copied into the match. A graph of supported operators that is no tern architecture
//! (another topology) is refused with the first node where the closest candidate differs.

use crate::export::{tensor_values, to_onnx};
use crate::proto;
use std::collections::HashMap;
use std::path::Path;
use tern_core::{Error, Result, Rng, Tensor};
use tern_train::{models, Model, ModelConfig};

/// Operators tern can import (MatMul with its bias Add becomes Gemm, a Reshape to
/// `[batch, features]` becomes Flatten, Constants feed those Reshapes).
pub const OPERATORS: [&str; 14] = [
    "MatMul",
    "Reshape",
    "Constant",
    "Conv",
    "BatchNormalization",
    "Relu",
    "ThresholdedRelu",
    "Add",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "Flatten",
    "Gemm",
    "Identity",
];

/// One node as the match compares it: operator, attributes (defaults filled in), and the
/// shapes of its weight inputs.
#[derive(Debug, PartialEq)]
struct Shape {
    op: String,
    attrs: Vec<(String, String)>,
    weights: Vec<Vec<i64>>,
}

/// Attributes with ONNX's defaults where tern's exporter writes them explicitly.
fn attributes(n: &proto::NodeProto) -> Vec<(String, String)> {
    let mut a: Vec<(String, String)> = n
        .attribute
        .iter()
        .map(|a| {
            let v = if !a.ints.is_empty() {
                format!("{:?}", a.ints)
            } else if let Some(i) = a.i {
                i.to_string()
            } else if let Some(f) = a.f {
                f.to_string()
            } else {
                String::new()
            };
            (a.name.clone().unwrap_or_default(), v)
        })
        .filter(|(k, v)| {
            // defaults that writers may leave out
            !matches!(
                (n.op_type.as_deref().unwrap_or(""), k.as_str(), v.as_str()),
                (_, "dilations", "[1, 1]")
                    | ("Conv", "group", "1")
                    | ("Gemm", "alpha", "1")
                    | ("Gemm", "beta", "1")
                    | ("Gemm", "transA", "0")
                    | ("BatchNormalization", "momentum", _)
                    | ("BatchNormalization", "training_mode", "0")
                    | ("Flatten", "axis", "1")
                    | (_, "pads", "[0, 0, 0, 0]")
                    | ("MaxPool", "ceil_mode", "0")
                    | ("AveragePool", "ceil_mode", "0")
            )
        })
        .collect();
    a.sort();
    a
}

/// The nodes of `g` as the match sees them (`Identity` nodes dropped, their outputs renamed
/// to their inputs), and, per node, the names of its weight inputs.
fn shapes(g: &proto::GraphProto) -> (Vec<Shape>, Vec<Vec<String>>) {
    let dims: HashMap<&str, &Vec<i64>> =
        g.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, &t.dims))).collect();
    let mut alias: HashMap<String, String> = HashMap::new();
    let (mut out, mut names) = (Vec::new(), Vec::new());
    for n in &g.node {
        let resolve = |v: &String| alias.get(v).cloned().unwrap_or_else(|| v.clone());
        if n.op_type.as_deref() == Some("Identity") {
            if let (Some(i), Some(o)) = (n.input.first(), n.output.first()) {
                alias.insert(o.clone(), resolve(i));
            }
            continue;
        }
        let weights: Vec<String> = n.input.iter().map(resolve).filter(|i| dims.contains_key(i.as_str())).collect();
        // a ReLU with a threshold is matched as a ReLU; `thresholds` carries the threshold
        let thresholded = n.op_type.as_deref() == Some("ThresholdedRelu");
        out.push(Shape {
            op: if thresholded { "Relu".into() } else { n.op_type.clone().unwrap_or_default() },
            attrs: if thresholded { Vec::new() } else { attributes(n) },
            weights: weights.iter().map(|w| dims[w.as_str()].clone()).collect(),
        });
        names.push(weights);
    }
    (out, names)
}

/// Per node as [`shapes`] lists them, the threshold of a `ThresholdedRelu` (tern's ReLU with
/// a threshold: x where x > α, else 0; ONNX's default α is 1).
fn thresholds(g: &proto::GraphProto) -> Vec<Option<f32>> {
    g.node
        .iter()
        .filter(|n| n.op_type.as_deref() != Some("Identity"))
        .map(|n| {
            (n.op_type.as_deref() == Some("ThresholdedRelu")).then(|| {
                n.attribute.iter().find(|a| a.name.as_deref() == Some("alpha")).and_then(|a| a.f).unwrap_or(1.0)
            })
        })
        .collect()
}

/// The graph with the equivalent forms tern's exporter does not write rewritten into those
/// it does: `MatMul(x, W)` (+ `Add(·, b)`) → `Gemm(x, Wᵀ, b, transB=1)`, `Reshape` to 2-D →
/// `Flatten`; the `Constant`s that fed the Reshapes go.
fn canonical(g: &proto::GraphProto) -> std::result::Result<proto::GraphProto, String> {
    let mut g = g.clone();
    // Identity nodes that alias an initializer (PyTorch shares equal weights that way): read
    // the initializer itself
    let mut alias: HashMap<String, String> = HashMap::new();
    let init_names: std::collections::HashSet<String> = g.initializer.iter().filter_map(|t| t.name.clone()).collect();
    g.node.retain(|n| {
        let (Some(i), Some(o)) = (n.input.first(), n.output.first()) else { return true };
        let src = alias.get(i).cloned().unwrap_or_else(|| i.clone());
        if n.op_type.as_deref() == Some("Identity") && init_names.contains(&src) {
            alias.insert(o.clone(), src);
            return false;
        }
        true
    });
    for n in &mut g.node {
        for i in &mut n.input {
            if let Some(src) = alias.get(i) {
                *i = src.clone();
            }
        }
    }
    let inits: HashMap<String, proto::TensorProto> =
        g.initializer.iter().filter_map(|t| Some((t.name.clone()?, t.clone()))).collect();
    let consumers = |g: &proto::GraphProto, v: &str| g.node.iter().filter(|n| n.input.iter().any(|i| i == v)).count();
    let mut out: Vec<proto::NodeProto> = Vec::new();
    let mut dropped_constants = Vec::new();
    let mut i = 0;
    while i < g.node.len() {
        let n = g.node[i].clone();
        let op = n.op_type.as_deref().unwrap_or("");
        let name = n.name.clone().unwrap_or_else(|| format!("node {i}"));
        match op {
            "MatMul" => {
                let w = n
                    .input
                    .get(1)
                    .and_then(|w| inits.get(w))
                    .ok_or(format!("{name}: a MatMul without a weight initializer"))?;
                let [d_in, d_out] = w.dims[..] else {
                    return Err(format!("{name}: a MatMul weight of shape {:?}", w.dims));
                };
                let (d_in, d_out) = (d_in as usize, d_out as usize);
                let v = tensor_values(w).map_err(|e| e.to_string())?;
                let mut t = vec![0.0f32; v.len()];
                for r in 0..d_in {
                    for c in 0..d_out {
                        t[c * d_in + r] = v[r * d_out + c];
                    }
                }
                let wt = format!("{}.T", w.name.clone().unwrap_or_default());
                g.initializer.push(crate::export::tensor_proto(&wt, &[d_out, d_in], &t));
                let mut inputs = vec![n.input[0].clone(), wt];
                let mut output = n.output.clone();
                // a bias Add right after, taking this product only
                if let Some(next) = g.node.get(i + 1) {
                    let bias = next.input.iter().find(|v| inits.get(*v).is_some_and(|b| b.dims == [d_out as i64]));
                    if next.op_type.as_deref() == Some("Add")
                        && next.input.contains(&n.output[0])
                        && consumers(&g, &n.output[0]) == 1
                    {
                        if let Some(b) = bias {
                            inputs.push(b.clone());
                            output = next.output.clone();
                            i += 1;
                        }
                    }
                }
                let attribute = vec![proto::AttributeProto {
                    name: Some("transB".into()),
                    r#type: Some(crate::proto::attribute_type::INT),
                    i: Some(1),
                    ..Default::default()
                }];
                out.push(proto::NodeProto {
                    input: inputs,
                    output,
                    name: n.name.clone(),
                    op_type: Some("Gemm".into()),
                    attribute,
                    ..Default::default()
                });
            }
            "Reshape" => {
                let target = n.input.get(1).cloned().unwrap_or_default();
                let constant = g
                    .node
                    .iter()
                    .find(|c| c.op_type.as_deref() == Some("Constant") && c.output.first() == Some(&target));
                let shape = inits.get(&target).map(int64_values).or_else(|| {
                    let a = constant?.attribute.iter().find(|a| a.name.as_deref() == Some("value"))?;
                    a.t.as_ref().map(int64_values)
                });
                // a 2-D target keeps the batch and flattens the rest (what a CNN's Reshape does)
                if shape.as_ref().is_none_or(|s| s.len() != 2) {
                    return Err(format!(
                        "{name}: a Reshape to {shape:?}: tern reads Reshapes to [batch, features] only"
                    ));
                }
                dropped_constants.push(target);
                let attribute = vec![proto::AttributeProto {
                    name: Some("axis".into()),
                    r#type: Some(crate::proto::attribute_type::INT),
                    i: Some(1),
                    ..Default::default()
                }];
                out.push(proto::NodeProto {
                    input: vec![n.input[0].clone()],
                    output: n.output.clone(),
                    name: n.name.clone(),
                    op_type: Some("Flatten".into()),
                    attribute,
                    ..Default::default()
                });
            }
            "AveragePool" | "MaxPool" if is_unit_pool(&n) => {
                // a 1x1 window with stride 1 (PyTorch's adaptive pooling to the size it has)
                out.push(proto::NodeProto { op_type: Some("Identity".into()), attribute: vec![], ..n });
            }
            _ => out.push(n),
        }
        i += 1;
    }
    out.retain(|n| {
        !(n.op_type.as_deref() == Some("Constant") && n.output.iter().any(|o| dropped_constants.contains(o)))
    });
    g.node = out;
    Ok(g)
}

/// Whether a pooling node has a 1x1 window, stride 1 and no padding: the identity.
fn is_unit_pool(n: &proto::NodeProto) -> bool {
    let get = |k: &str| n.attribute.iter().find(|a| a.name.as_deref() == Some(k)).map(|a| a.ints.clone());
    get("kernel_shape").is_some_and(|k| k.iter().all(|&v| v == 1))
        && get("strides").is_none_or(|s| s.iter().all(|&v| v == 1))
        && get("pads").is_none_or(|p| p.iter().all(|&v| v == 0))
}

/// The integers of an INT64 tensor (raw little-endian data or `int64_data`).
fn int64_values(t: &proto::TensorProto) -> Vec<i64> {
    match &t.raw_data {
        Some(raw) => raw.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect(),
        None => t.int64_data.clone(),
    }
}

/// What an import found.
#[derive(Debug, serde::Serialize)]
pub struct Report {
    pub model: ModelConfig,
    pub nodes: usize,
    pub weights: usize,
}

/// The architectures a graph with this input, first-conv width and class count could be.
fn candidates(in_shape: [usize; 3], width: usize, classes: usize) -> Vec<ModelConfig> {
    // the graph's own first-conv width first: then a match is usually among the small
    // candidates, before any network of a default (ImageNet-size) width is built
    let mut v = Vec::new();
    for w in [width, 0] {
        for name in models::MODEL_NAMES {
            for small_input in [false, true] {
                if small_input && !matches!(name, "resnet18" | "resnet34" | "resnet50" | "resnet152") {
                    continue;
                }
                v.push(ModelConfig { name: name.into(), in_shape, classes, width: w, small_input, spec: None });
            }
        }
    }
    v
}

/// Reads an ONNX file into the tern model it describes, with its weights.
pub fn import(path: &Path) -> Result<(Model, Report)> {
    use prost::Message;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let m = proto::ModelProto::decode(bytes.as_slice())
        .map_err(|e| Error::format(path, format!("not an ONNX model (truncated or corrupt?): {e}")))?;
    let g = m.graph.as_ref().ok_or_else(|| Error::format(path, "an ONNX model without a graph"))?;
    let g = &canonical(g).map_err(|what| Error::format(path, what))?;
    for (i, n) in g.node.iter().enumerate() {
        let op = n.op_type.as_deref().unwrap_or("");
        if !OPERATORS.contains(&op) || n.domain.as_deref().is_some_and(|d| !d.is_empty() && d != "ai.onnx") {
            return Err(Error::format(
                path,
                format!(
                    "node {i} ({}) is a {op}{}: tern imports {OPERATORS:?}",
                    n.name.as_deref().unwrap_or("unnamed"),
                    n.domain
                        .as_deref()
                        .filter(|d| !d.is_empty())
                        .map(|d| format!(" of domain {d}"))
                        .unwrap_or_default()
                ),
            ));
        }
    }
    let inits: HashMap<&str, &proto::TensorProto> =
        g.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect();
    let inputs: Vec<&proto::ValueInfoProto> =
        g.input.iter().filter(|v| !inits.contains_key(v.name.as_deref().unwrap_or(""))).collect();
    let [input] = inputs.as_slice() else {
        return Err(Error::format(
            path,
            format!("{} graph inputs besides the weights: expected one image batch", inputs.len()),
        ));
    };
    let dims: Vec<Option<i64>> = input
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .and_then(|t| t.shape.as_ref())
        .map(|s| s.dim.iter().map(|d| d.dim_value).collect())
        .unwrap_or_default();
    let side = |d: Option<i64>| d.and_then(|v| usize::try_from(v).ok()).filter(|&v| v > 0);
    let in_shape = match dims.as_slice() {
        [_, c, h, w] => match (side(*c), side(*h), side(*w)) {
            (Some(c), Some(h), Some(w)) => [c, h, w],
            _ => {
                return Err(Error::format(
                    path,
                    format!("input shape {dims:?}: channels, height and width must be fixed"),
                ))
            }
        },
        _ => {
            return Err(Error::format(path, format!("input shape {dims:?}: expected [batch, channels, height, width]")))
        }
    };
    let first_conv = g.node.iter().find(|n| n.op_type.as_deref() == Some("Conv"));
    let last_gemm = g.node.iter().rev().find(|n| n.op_type.as_deref() == Some("Gemm"));
    let weight_dim0 = |n: Option<&proto::NodeProto>| {
        n.and_then(|n| n.input.get(1)).and_then(|w| inits.get(w.as_str())).and_then(|t| t.dims.first().copied())
    };
    let (width, classes) = match (weight_dim0(first_conv), weight_dim0(last_gemm)) {
        (Some(w), Some(c)) if w > 0 && c > 0 => (w as usize, c as usize),
        _ => {
            return Err(Error::format(
                path,
                "no Conv and Gemm with weights among the initializers: not a CNN tern knows",
            ))
        }
    };
    let mut closest = match match_graph(path, g, in_shape, width, classes)? {
        Ok(found) => return Ok(found),
        Err(closest) => closest,
    };
    // PyTorch's default export folds each BN into the conv before it: without any BN left
    // and with conv biases, try the graph with those biases as identity BNs again
    let no_bn = !g.node.iter().any(|n| n.op_type.as_deref() == Some("BatchNormalization"));
    if no_bn && g.node.iter().any(|n| n.op_type.as_deref() == Some("Conv") && n.input.len() == 3) {
        match match_graph(path, &unfold_bn(g), in_shape, width, classes)? {
            Ok(found) => return Ok(found),
            Err(c) if c.as_ref().map(|c| c.0) > closest.as_ref().map(|c| c.0) => closest = c,
            Err(_) => {}
        }
    }
    // none of the zoo: the graph as a layer list of its own
    let input_name = input.name.clone().unwrap_or_default();
    match crate::graph::graph_model(g, &input_name, in_shape) {
        Ok((model, weights)) => {
            let report = Report { model: model.config.clone(), nodes: shapes(g).0.len(), weights };
            Ok((model, report))
        }
        Err(why) => Err(Error::format(
            path,
            format!(
                "its {} nodes ({in_shape:?} input, first conv width {width}, {classes} classes) match none of tern's architectures ({}), and as a graph of its own: {why}",
                shapes(g).0.len(),
                closest.map_or("no candidate".into(), |c| c.1)
            ),
        )),
    }
}

/// The closest candidate of a failed match: how many nodes matched, and what differed.
type Closest = Option<(usize, String)>;

/// Matches `g` against every candidate architecture: the model with the file's weights, or
/// the closest candidate (the longest common prefix of nodes).
fn match_graph(
    path: &Path,
    g: &proto::GraphProto,
    in_shape: [usize; 3],
    width: usize,
    classes: usize,
) -> Result<std::result::Result<(Model, Report), Closest>> {
    let inits: HashMap<&str, &proto::TensorProto> =
        g.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect();
    let (want, names) = shapes(g);
    let mut closest: Closest = None;
    for cfg in candidates(in_shape, width, classes) {
        let Ok(mut model) = models::build(&cfg, &mut Rng::new(0)) else { continue };
        let ours = to_onnx(&mut model, &[])?;
        let (have, our_names) = shapes(ours.graph.as_ref().expect("the exporter writes a graph"));
        let same = have.iter().zip(&want).take_while(|(a, b)| a == b).count();
        if same == have.len() && have.len() == want.len() {
            let n = load_weights(path, &mut model, &inits, &our_names, &names)?;
            // the file's ReLU thresholds onto the matching ReLU layers (by the exporter's names)
            let ours_nodes = ours.graph.as_ref().expect("a graph").node.iter();
            let relu_names: Vec<Option<&str>> =
                ours_nodes.filter(|n| n.op_type.as_deref() != Some("Identity")).map(|n| n.name.as_deref()).collect();
            for (t, name) in thresholds(g).into_iter().zip(relu_names) {
                let (Some(t), Some(name)) = (t, name) else { continue };
                if !(t >= 0.0) {
                    return Err(Error::format(path, format!("ThresholdedRelu {name}: alpha {t} (tern needs ≥ 0)")));
                }
                tern_train::Layer::visit_leaves(&mut model.net, &mut |l| {
                    if l.name() == name {
                        if let Some(r) = l.as_any_mut().downcast_mut::<tern_train::layers::Relu>() {
                            r.threshold = t;
                        }
                    }
                });
            }
            return Ok(Ok((model, Report { model: cfg, nodes: want.len(), weights: n })));
        }
        if closest.as_ref().is_none_or(|(s, _)| same > *s) {
            let at = want
                .get(same)
                .map_or("the end of the graph".into(), |s| format!("node {same} ({} {:?})", s.op, s.attrs));
            let theirs = have.get(same).map_or("ends there".into(), |s| format!("has {} {:?}", s.op, s.attrs));
            closest = Some((same, format!("closest: {} (width {}) — at {at} it {theirs}", cfg.name, cfg.width)));
        }
    }
    Ok(Err(closest))
}

/// `g` with every biased Conv split into the bias-free Conv and a BN that adds the bias (γ = 1,
/// β = bias, mean 0, variance 1 − ε): the form of a network whose BNs an exporter folded.
fn unfold_bn(g: &proto::GraphProto) -> proto::GraphProto {
    const EPS: f32 = 1e-5;
    let mut g = g.clone();
    let dims: HashMap<String, Vec<i64>> =
        g.initializer.iter().filter_map(|t| Some((t.name.clone()?, t.dims.clone()))).collect();
    let mut nodes = Vec::new();
    for (i, mut n) in std::mem::take(&mut g.node).into_iter().enumerate() {
        let bias = (n.op_type.as_deref() == Some("Conv") && n.input.len() == 3).then(|| n.input[2].clone());
        let Some(c) = bias.as_ref().and_then(|b| dims.get(b)).and_then(|d| d.first().copied()) else {
            nodes.push(n);
            continue;
        };
        let c = c as usize;
        let bias = n.input.pop().expect("three inputs");
        let (out, mid) = (n.output[0].clone(), format!("{}:unfolded:{i}", n.output[0]));
        n.output[0] = mid.clone();
        let name = |what: &str| format!("unfolded.{i}.{what}");
        for (what, v) in [("scale", 1.0), ("mean", 0.0), ("var", 1.0 - EPS)] {
            g.initializer.push(crate::export::tensor_proto(&name(what), &[c], &vec![v; c]));
        }
        let bn = proto::NodeProto {
            input: vec![mid, name("scale"), bias, name("mean"), name("var")],
            output: vec![out],
            op_type: Some("BatchNormalization".into()),
            attribute: vec![proto::AttributeProto {
                name: Some("epsilon".into()),
                r#type: Some(crate::proto::attribute_type::FLOAT),
                f: Some(EPS),
                ..Default::default()
            }],
            ..Default::default()
        };
        nodes.push(n);
        nodes.push(bn);
    }
    g.node = nodes;
    g
}

/// Copies the file's weights into `model`: node by node, the file's k-th weight input into
/// the tensor tern's export names there. Returns the number of tensors copied.
fn load_weights(
    path: &Path,
    model: &mut Model,
    inits: &HashMap<&str, &proto::TensorProto>,
    ours: &[Vec<String>],
    theirs: &[Vec<String>],
) -> Result<usize> {
    let mut values: HashMap<&str, Vec<f32>> = HashMap::new();
    for (a, b) in ours.iter().zip(theirs) {
        for (tern_name, file_name) in a.iter().zip(b) {
            let v = tensor_values(inits[file_name.as_str()]).map_err(|e| Error::format(path, e.to_string()))?;
            values.insert(tern_name.as_str(), v);
        }
    }
    let mut copied = 0;
    let mut take = |name: &str, t: &mut Tensor| {
        if let Some(v) = values.remove(name) {
            *t = Tensor::from_vec(t.shape(), v);
            copied += 1;
        }
    };
    model.visit_params(&mut |p| take(&p.name, &mut p.value));
    model.visit_buffers(&mut |n, t| take(n, t));
    if !values.is_empty() {
        let mut left: Vec<&str> = values.keys().copied().collect();
        left.sort();
        return Err(Error::format(path, format!("weights with no place in the model: {left:?}")));
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::quant::TernaryConfig;
    use tern_core::CpuBackend;
    use tern_train::Ctx;

    fn write(m: &mut Model, dir: &Path) -> std::path::PathBuf {
        let p = dir.join("m.onnx");
        crate::export::write_onnx(&p, m, &[]).unwrap();
        p
    }

    fn logits(m: &mut Model, x: &Tensor) -> Vec<f32> {
        m.forward(&Ctx::new(&CpuBackend, false), x).into_data()
    }

    #[test]
    fn exported_models_come_back_with_the_same_logits() {
        let dir = tempfile::tempdir().unwrap();
        for (name, width, shape, ternary) in [
            ("vgg-small", 8, [1, 16, 16], false),
            ("resnet20", 4, [3, 12, 12], true),
            ("resnet18", 8, [3, 32, 32], false),
        ] {
            let cfg =
                ModelConfig { name: name.into(), in_shape: shape, classes: 7, width, small_input: false, spec: None };
            let mut m = models::build(&cfg, &mut Rng::new(9)).unwrap();
            if ternary {
                m.set_ternary(Some(TernaryConfig::default()), true, false);
                // raised ReLU thresholds leave as ThresholdedRelu and must come back
                m.set_relu(0.05, 0.0);
            }
            // BN statistics that are not the initial ones
            m.visit_buffers(&mut |n, t| {
                let k = t.len();
                let v =
                    (0..k).map(|i| if n.ends_with("var") { 0.5 + i as f32 * 0.01 } else { i as f32 * 0.02 }).collect();
                *t = Tensor::from_vec(t.shape(), v);
            });
            let p = write(&mut m, dir.path());
            let (mut back, report) = import(&p).unwrap();
            assert_eq!(report.model.name, name);
            let mut n = vec![2];
            n.extend_from_slice(&shape);
            let x = Tensor::randn(&n, 1.0, &mut Rng::new(1));
            let (a, b) = (logits(&mut m, &x), logits(&mut back, &x));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{name}: {u} vs {v}");
            }
        }
    }

    #[test]
    fn matmul_add_and_reshape_graphs_import_as_gemm_and_flatten() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig {
            name: "vgg-small".into(),
            in_shape: [1, 16, 16],
            classes: 6,
            width: 8,
            small_input: false,
            spec: None,
        };
        let mut m = models::build(&cfg, &mut Rng::new(4)).unwrap();
        let mut p = to_onnx(&mut m, &[]).unwrap();
        let g = p.graph.as_mut().unwrap();
        // Flatten -> Constant [0, -1] + Reshape
        let f = g.node.iter().position(|n| n.op_type.as_deref() == Some("Flatten")).unwrap();
        let (fi, fo) = (g.node[f].input[0].clone(), g.node[f].output[0].clone());
        let shape =
            proto::TensorProto { dims: vec![2], data_type: Some(7), int64_data: vec![0, -1], ..Default::default() };
        let constant = proto::NodeProto {
            output: vec!["shape".into()],
            op_type: Some("Constant".into()),
            attribute: vec![proto::AttributeProto {
                name: Some("value".into()),
                r#type: Some(4),
                t: Some(shape),
                ..Default::default()
            }],
            ..Default::default()
        };
        let reshape = proto::NodeProto {
            input: vec![fi, "shape".into()],
            output: vec![fo],
            op_type: Some("Reshape".into()),
            ..Default::default()
        };
        g.node.splice(f..=f, [constant, reshape]);
        // Gemm(x, W, b, transB) -> MatMul(x, Wᵀ) + Add(·, b)
        let k = g.node.iter().position(|n| n.op_type.as_deref() == Some("Gemm")).unwrap();
        let gemm = g.node[k].clone();
        let w = g.initializer.iter().find(|t| t.name.as_ref() == Some(&gemm.input[1])).unwrap().clone();
        let (d_out, d_in) = (w.dims[0] as usize, w.dims[1] as usize);
        let v = tensor_values(&w).unwrap();
        let t: Vec<f32> = (0..d_in * d_out).map(|i| v[(i % d_out) * d_in + i / d_out]).collect();
        g.initializer.push(crate::export::tensor_proto("w_in_out", &[d_in, d_out], &t));
        let matmul = proto::NodeProto {
            input: vec![gemm.input[0].clone(), "w_in_out".into()],
            output: vec!["prod".into()],
            op_type: Some("MatMul".into()),
            ..Default::default()
        };
        let add = proto::NodeProto {
            input: vec!["prod".into(), gemm.input[2].clone()],
            output: gemm.output.clone(),
            op_type: Some("Add".into()),
            ..Default::default()
        };
        g.node.splice(k..=k, [matmul, add]);
        g.initializer.retain(|t| t.name != w.name);
        let f = dir.path().join("mm.onnx");
        std::fs::write(&f, prost::Message::encode_to_vec(&p)).unwrap();
        let (mut back, _) = import(&f).unwrap();
        let x = Tensor::randn(&[2, 1, 16, 16], 1.0, &mut Rng::new(2));
        let (a, b) = (logits(&mut m, &x), logits(&mut back, &x));
        for (u, v) in a.iter().zip(&b) {
            assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
        }
    }

    #[test]
    fn unknown_operators_and_broken_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = ModelConfig {
            name: "vgg-small".into(),
            in_shape: [1, 16, 16],
            classes: 10,
            width: 8,
            small_input: false,
            spec: None,
        };
        let mut m = models::build(&cfg, &mut Rng::new(9)).unwrap();
        let mut p = to_onnx(&mut m, &[]).unwrap();
        let g = p.graph.as_mut().unwrap();
        g.node[2].op_type = Some("Sigmoid".into());
        let f = dir.path().join("sig.onnx");
        std::fs::write(&f, prost::Message::encode_to_vec(&p)).unwrap();
        let e = import(&f).err().expect("refused").to_string();
        assert!(e.contains("sig.onnx") && e.contains("Sigmoid") && e.contains("node 2"), "{e}");
        // a topology tern does not build: a pool taken out
        let mut p = to_onnx(&mut m, &[]).unwrap();
        let g = p.graph.as_mut().unwrap();
        let pool = g.node.iter().position(|n| n.op_type.as_deref() == Some("MaxPool")).unwrap();
        let (i, o) = (g.node[pool].input[0].clone(), g.node[pool].output[0].clone());
        g.node[pool] = proto::NodeProto {
            input: vec![i],
            output: vec![o],
            op_type: Some("Identity".into()),
            ..Default::default()
        };
        std::fs::write(&f, prost::Message::encode_to_vec(&p)).unwrap();
        let e = import(&f).err().expect("refused").to_string();
        assert!(e.contains("match none") && e.contains("closest: vgg-small"), "{e}");
        // truncated
        let bytes = crate::export::to_onnx(&mut m, &[]).map(|p| prost::Message::encode_to_vec(&p)).unwrap();
        std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
        let e = import(&f).err().expect("refused").to_string();
        assert!(e.contains("sig.onnx") && e.contains("not an ONNX model"), "{e}");
        // a weight of the wrong size
        let mut p = to_onnx(&mut m, &[]).unwrap();
        let w = &mut p.graph.as_mut().unwrap().initializer[0];
        w.raw_data.as_mut().unwrap().truncate(8);
        std::fs::write(&f, prost::Message::encode_to_vec(&p)).unwrap();
        let e = import(&f).err().expect("refused").to_string();
        assert!(e.contains("values for dimensions"), "{e}");
    }
}
