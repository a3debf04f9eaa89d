//! ONNX graphs that are none of tern's architectures, as `graph` models: the node graph is
//! walked from the input — a chain of supported operators, and residual blocks where a value
//! forks in two and the branches meet again at an `Add` followed by a ReLU — into a
//! [`LayerSpec`] list that tern builds, trains, profiles and exports like any model; the
//! initializers are copied into the layers they were converted into.

use crate::export::tensor_values;
use crate::proto;
use std::collections::HashMap;
use tern_core::{Rng, Tensor};
use tern_train::layers::{BatchNorm, Conv2d, Linear, Relu, Residual};
use tern_train::models::{LayerSpec, GRAPH_MODEL};
use tern_train::{Layer, Model, ModelConfig};

/// Where a converted layer's weights come from (initializer names).
#[derive(Debug)]
enum Weights {
    None,
    Conv {
        w: String,
        b: Option<String>,
    },
    Bn {
        scale: String,
        bias: String,
        mean: String,
        var: String,
    },
    Linear {
        w: String,
        b: Option<String>,
        transposed: bool,
    },
    Relu(Option<f32>),
    /// With the block ReLU's threshold (ThresholdedRelu).
    Residual {
        body: Vec<Weights>,
        shortcut: Option<Vec<Weights>>,
        relu: Option<f32>,
    },
}

type Converted = (Vec<LayerSpec>, Vec<Weights>);

struct Walk<'a> {
    g: &'a proto::GraphProto,
    /// Identity outputs → the value they copy.
    alias: HashMap<String, String>,
    consumers: HashMap<String, Vec<usize>>,
    inits: HashMap<&'a str, &'a proto::TensorProto>,
}

fn attr<'n>(n: &'n proto::NodeProto, name: &str) -> Option<&'n proto::AttributeProto> {
    n.attribute.iter().find(|a| a.name.as_deref() == Some(name))
}

fn ints(n: &proto::NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn int(n: &proto::NodeProto, name: &str, default: i64) -> i64 {
    attr(n, name).and_then(|a| a.i).unwrap_or(default)
}

/// A square window with equal strides and equal padding on every side: (k, stride, pad).
fn window(n: &proto::NodeProto, what: &str) -> Result<(usize, usize, usize), String> {
    let k = ints(n, "kernel_shape").unwrap_or_default();
    let s = ints(n, "strides").unwrap_or(vec![1, 1]);
    let p = ints(n, "pads").unwrap_or(vec![0, 0, 0, 0]);
    let d = ints(n, "dilations").unwrap_or(vec![1, 1]);
    let auto = attr(n, "auto_pad").and_then(|a| a.s.clone()).unwrap_or_default();
    let ok = k.len() == 2
        && k[0] == k[1]
        && k[0] > 0
        && s.len() == 2
        && s[0] == s[1]
        && s[0] > 0
        && p.len() == 4
        && p.iter().all(|&v| v == p[0] && v >= 0)
        && d.iter().all(|&v| v == 1)
        && (auto.is_empty() || auto == b"NOTSET")
        && int(n, "ceil_mode", 0) == 0;
    if !ok {
        return Err(format!(
            "{what}: kernel {k:?}, strides {s:?}, pads {p:?}, dilations {d:?}: tern takes square windows with equal strides and padding"
        ));
    }
    Ok((k[0] as usize, s[0] as usize, p[0] as usize))
}

impl<'a> Walk<'a> {
    fn new(g: &'a proto::GraphProto) -> Walk<'a> {
        let inits: HashMap<&str, &proto::TensorProto> =
            g.initializer.iter().filter_map(|t| Some((t.name.as_deref()?, t))).collect();
        let mut alias = HashMap::new();
        let mut consumers: HashMap<String, Vec<usize>> = HashMap::new();
        for (i, n) in g.node.iter().enumerate() {
            let resolve =
                |v: &String, alias: &HashMap<String, String>| alias.get(v).cloned().unwrap_or_else(|| v.clone());
            if n.op_type.as_deref() == Some("Identity") {
                if let (Some(x), Some(y)) = (n.input.first(), n.output.first()) {
                    let r = resolve(x, &alias);
                    alias.insert(y.clone(), r);
                }
                continue;
            }
            for x in &n.input {
                let r = resolve(x, &alias);
                if !inits.contains_key(r.as_str()) {
                    consumers.entry(r).or_default().push(i);
                }
            }
        }
        Walk { g, alias, consumers, inits }
    }

    fn resolve(&self, v: &str) -> String {
        self.alias.get(v).cloned().unwrap_or_else(|| v.to_string())
    }

    fn node_name(&self, i: usize) -> String {
        let n = &self.g.node[i];
        format!("node {i} ({} {})", n.op_type.as_deref().unwrap_or("?"), n.name.as_deref().unwrap_or("unnamed"))
    }

    /// An initializer input of node `i` (by position), checked to exist.
    fn weight(&self, i: usize, pos: usize) -> Result<String, String> {
        let n = &self.g.node[i];
        let v = n.input.get(pos).map(|v| self.resolve(v)).filter(|v| self.inits.contains_key(v.as_str()));
        v.ok_or_else(|| format!("{}: input {pos} is not a weight (initializer)", self.node_name(i)))
    }

    fn dims(&self, name: &str) -> &[i64] {
        &self.inits[name].dims
    }

    /// The layers from value `v` on, until the graph's end or until `v` is consumed only by
    /// the `Add` node `until` (the end of a residual branch). Returns them and the last value.
    fn chain(&self, mut v: String, until: Option<usize>) -> Result<(Converted, String), String> {
        let (mut specs, mut weights) = (Vec::new(), Vec::new());
        loop {
            let cons = self.consumers.get(&v).cloned().unwrap_or_default();
            if cons.is_empty() || (until.is_some() && cons == [until.unwrap()]) {
                return Ok(((specs, weights), v));
            }
            match cons.as_slice() {
                [i] => {
                    let (spec, w) = self.layer(*i)?;
                    specs.push(spec);
                    weights.push(w);
                    v = self.resolve(self.g.node[*i].output.first().ok_or("a node without output")?);
                }
                [a, b] => {
                    let (spec, w, out) = self.residual(&v, *a, *b)?;
                    specs.push(spec);
                    weights.push(w);
                    v = out;
                }
                _ => return Err(format!("value {v} feeds {} nodes; tern's residual blocks fork in two", cons.len())),
            }
        }
    }

    /// The first `Add` reached from node `i` along single-consumer values (node i itself if
    /// it is one).
    fn first_add(&self, mut i: usize) -> Option<usize> {
        for _ in 0..self.g.node.len() {
            if self.g.node[i].op_type.as_deref() == Some("Add") {
                return Some(i);
            }
            let out = self.resolve(self.g.node[i].output.first()?);
            match self.consumers.get(&out).map(|c| c.as_slice()) {
                Some([j]) => i = *j,
                _ => return None,
            }
        }
        None
    }

    /// A residual block: `v` forks into nodes `a` and `b`; both branches must reach one `Add`,
    /// and a ReLU must follow it.
    fn residual(&self, v: &str, a: usize, b: usize) -> Result<(LayerSpec, Weights, String), String> {
        let join = match (self.first_add(a), self.first_add(b)) {
            (Some(x), Some(y)) if x == y => x,
            _ => return Err(format!("the two branches from value {v} do not meet at one Add")),
        };
        let add = &self.g.node[join];
        if add.input.len() != 2 {
            return Err(format!("{}: an Add of {} inputs", self.node_name(join), add.input.len()));
        }
        // a branch: the layers from the fork to the Add (none for the identity)
        let branch = |start: usize| -> Result<Converted, String> {
            if start == join {
                return Ok((Vec::new(), Vec::new()));
            }
            let (spec, w) = self.layer(start)?;
            let out = self.resolve(self.g.node[start].output.first().ok_or("a node without output")?);
            let ((mut specs, mut ws), _) = self.chain(out, Some(join))?;
            specs.insert(0, spec);
            ws.insert(0, w);
            Ok((specs, ws))
        };
        let (ba, bb) = (branch(a)?, branch(b)?);
        // the body is the longer branch (the sum does not care; ResNets' shortcut is the
        // identity or a projection), the one feeding the Add's first input on a tie
        let a_first = a != join && self.resolve(&add.input[0]) == self.branch_end(a, join);
        let a_body = ba.0.len() > bb.0.len() || (ba.0.len() == bb.0.len() && a_first);
        let ((body, body_w), (short, short_w)) = if a_body { (ba, bb) } else { (bb, ba) };
        let out = self.resolve(add.output.first().ok_or("an Add without output")?);
        let relu = match self.consumers.get(&out).map(|c| c.as_slice()) {
            Some([r]) if matches!(self.g.node[*r].op_type.as_deref(), Some("Relu") | Some("ThresholdedRelu")) => *r,
            _ => {
                return Err(format!(
                    "{}: a residual Add must be followed by its ReLU alone (tern's blocks end in one)",
                    self.node_name(join)
                ))
            }
        };
        let threshold = self.relu_threshold(relu)?;
        let shortcut = (!short.is_empty()).then_some(short);
        let short_w = shortcut.as_ref().map(|_| short_w);
        let spec = LayerSpec::Residual { body, shortcut };
        let w = Weights::Residual { body: body_w, shortcut: short_w, relu: threshold };
        let relu_out = self.resolve(self.g.node[relu].output.first().ok_or("a ReLU without output")?);
        Ok((spec, w, relu_out))
    }

    /// The last value of the branch that starts at node `start` and ends at the Add `join`.
    fn branch_end(&self, mut i: usize, join: usize) -> String {
        loop {
            let out = self.resolve(self.g.node[i].output.first().map(|s| s.as_str()).unwrap_or(""));
            match self.consumers.get(&out).map(|c| c.as_slice()) {
                Some([j]) if *j == join => return out,
                Some([j]) => i = *j,
                _ => return out,
            }
        }
    }

    fn relu_threshold(&self, i: usize) -> Result<Option<f32>, String> {
        let n = &self.g.node[i];
        if n.op_type.as_deref() != Some("ThresholdedRelu") {
            return Ok(None);
        }
        let t = attr(n, "alpha").and_then(|a| a.f).unwrap_or(1.0);
        if !(t >= 0.0) {
            return Err(format!("{}: alpha {t} (tern needs ≥ 0)", self.node_name(i)));
        }
        Ok(Some(t))
    }

    /// One node as a layer.
    fn layer(&self, i: usize) -> Result<(LayerSpec, Weights), String> {
        let n = &self.g.node[i];
        let what = self.node_name(i);
        Ok(match n.op_type.as_deref().unwrap_or("") {
            "Conv" => {
                let (k, stride, pad) = window(n, &what)?;
                if int(n, "group", 1) != 1 {
                    return Err(format!("{what}: grouped convolution (group {})", int(n, "group", 1)));
                }
                let w = self.weight(i, 1)?;
                let d = self.dims(&w);
                if d.len() != 4 || d[2] != k as i64 || d[3] != k as i64 || d[0] <= 0 {
                    return Err(format!("{what}: weight dims {d:?} for a {k}x{k} kernel"));
                }
                let b = if n.input.len() > 2 { Some(self.weight(i, 2)?) } else { None };
                let spec = LayerSpec::Conv { c_out: d[0] as usize, k, stride, pad, bias: b.is_some() };
                (spec, Weights::Conv { w, b })
            }
            "BatchNormalization" => {
                let eps = attr(n, "epsilon").and_then(|a| a.f).unwrap_or(1e-5);
                let w = Weights::Bn {
                    scale: self.weight(i, 1)?,
                    bias: self.weight(i, 2)?,
                    mean: self.weight(i, 3)?,
                    var: self.weight(i, 4)?,
                };
                (LayerSpec::BatchNorm { eps }, w)
            }
            "Relu" | "ThresholdedRelu" => (LayerSpec::Relu, Weights::Relu(self.relu_threshold(i)?)),
            "MaxPool" => {
                let (k, stride, pad) = window(n, &what)?;
                (LayerSpec::MaxPool { k, stride, pad }, Weights::None)
            }
            "AveragePool" => {
                let (k, stride, pad) = window(n, &what)?;
                if pad > 0 && int(n, "count_include_pad", 0) == 0 {
                    return Err(format!("{what}: padding not counted in the average (tern counts it)"));
                }
                (LayerSpec::AvgPool { k, stride, pad }, Weights::None)
            }
            "GlobalAveragePool" => (LayerSpec::GlobalAvgPool, Weights::None),
            "Flatten" if int(n, "axis", 1) == 1 => (LayerSpec::Flatten, Weights::None),
            "Gemm" => {
                let ok = attr(n, "alpha").and_then(|a| a.f).unwrap_or(1.0) == 1.0
                    && attr(n, "beta").and_then(|a| a.f).unwrap_or(1.0) == 1.0
                    && int(n, "transA", 0) == 0;
                if !ok {
                    return Err(format!("{what}: only y = x·Wᵀ + b or x·W + b (alpha = beta = 1, no transA)"));
                }
                let transposed = int(n, "transB", 0) == 0;
                let w = self.weight(i, 1)?;
                let d = self.dims(&w);
                if d.len() != 2 {
                    return Err(format!("{what}: weight dims {d:?}"));
                }
                let d_out = if transposed { d[1] } else { d[0] } as usize;
                let b = if n.input.len() > 2 { Some(self.weight(i, 2)?) } else { None };
                (LayerSpec::Linear { d_out, bias: b.is_some() }, Weights::Linear { w, b, transposed })
            }
            op => return Err(format!("{what}: a {op} here has no tern layer")),
        })
    }
}

/// Copies each converted layer's initializers into the built layers, in order.
fn assign(
    layers: &mut [Box<dyn Layer>],
    weights: &[Weights],
    inits: &HashMap<&str, &proto::TensorProto>,
) -> Result<usize, String> {
    let values = |name: &str, len: usize| -> Result<Vec<f32>, String> {
        let v = tensor_values(inits[name]).map_err(|e| e.to_string())?;
        if v.len() != len {
            return Err(format!("initializer {name}: {} values where the layer holds {len}", v.len()));
        }
        Ok(v)
    };
    let set = |t: &mut Tensor, name: &str| -> Result<(), String> {
        *t = Tensor::from_vec(t.shape(), values(name, t.len())?);
        Ok(())
    };
    let mut copied = 0;
    for (l, w) in layers.iter_mut().zip(weights) {
        let any = l.as_any_mut();
        match w {
            Weights::Conv { w, b } => {
                let c = any.downcast_mut::<Conv2d>().ok_or("layer order")?;
                set(&mut c.weight.value, w)?;
                if let (Some(b), Some(p)) = (b, c.bias.as_mut()) {
                    set(&mut p.value, b)?;
                }
                copied += 1 + b.is_some() as usize;
            }
            Weights::Bn { scale, bias, mean, var } => {
                let bn = any.downcast_mut::<BatchNorm>().ok_or("layer order")?;
                set(&mut bn.gamma.value, scale)?;
                set(&mut bn.beta.value, bias)?;
                set(&mut bn.running_mean, mean)?;
                set(&mut bn.running_var, var)?;
                copied += 4;
            }
            Weights::Linear { w, b, transposed } => {
                let lin = any.downcast_mut::<Linear>().ok_or("layer order")?;
                let (d_out, d_in) = (lin.d_out, lin.d_in);
                let mut v = values(w, d_out * d_in)?;
                if *transposed {
                    // stored [d_in, d_out]
                    v = (0..d_out * d_in).map(|i| v[(i % d_in) * d_out + i / d_in]).collect();
                }
                lin.weight.value = Tensor::from_vec(&[d_out, d_in], v);
                if let (Some(b), Some(p)) = (b, lin.bias.as_mut()) {
                    set(&mut p.value, b)?;
                }
                copied += 1 + b.is_some() as usize;
            }
            Weights::Relu(t) => {
                if let (Some(t), Some(r)) = (t, any.downcast_mut::<Relu>()) {
                    r.threshold = *t;
                }
            }
            Weights::Residual { body, shortcut, relu } => {
                let r = any.downcast_mut::<Residual>().ok_or("layer order")?;
                copied += assign(&mut r.body.layers, body, inits)?;
                if let (Some(sc), Some(w)) = (r.shortcut.as_mut(), shortcut) {
                    copied += assign(&mut sc.layers, w, inits)?;
                }
                if let Some(t) = relu {
                    r.relu.threshold = *t;
                }
            }
            Weights::None => {}
        }
    }
    Ok(copied)
}

/// `g` (in the importer's canonical form) as a `graph` model with its weights, and the
/// number of tensors copied; an error says which node does not fit.
pub fn graph_model(g: &proto::GraphProto, input: &str, in_shape: [usize; 3]) -> Result<(Model, usize), String> {
    let walk = Walk::new(g);
    let ((spec, weights), _) = walk.chain(walk.resolve(input), None)?;
    let classes = match spec.iter().rev().find_map(|s| match s {
        LayerSpec::Linear { d_out, .. } => Some(*d_out),
        _ => None,
    }) {
        Some(c) => c,
        None => return Err("no Gemm/MatMul classifier at the end".into()),
    };
    let cfg =
        ModelConfig { name: GRAPH_MODEL.into(), in_shape, classes, width: 0, small_input: false, spec: Some(spec) };
    let mut model = tern_train::models::build(&cfg, &mut Rng::new(0)).map_err(|e| e.to_string())?;
    let copied = assign(&mut model.net.layers, &weights, &walk.inits)?;
    Ok((model, copied))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::import::import;
    use prost::Message;
    use tern_core::CpuBackend;
    use tern_train::Ctx;

    /// A network none of the zoo's architectures is: a biased stem, a residual block with a
    /// 1x1 projection, one with an identity shortcut, average pooling, two classifier layers.
    fn spec() -> Vec<LayerSpec> {
        use LayerSpec::*;
        vec![
            Conv { c_out: 6, k: 5, stride: 1, pad: 2, bias: true },
            Relu,
            MaxPool { k: 2, stride: 2, pad: 0 },
            Residual {
                body: vec![
                    Conv { c_out: 10, k: 3, stride: 2, pad: 1, bias: false },
                    BatchNorm { eps: 1e-3 },
                    Relu,
                    Conv { c_out: 10, k: 3, stride: 1, pad: 1, bias: false },
                    BatchNorm { eps: 1e-5 },
                ],
                shortcut: Some(vec![Conv { c_out: 10, k: 1, stride: 2, pad: 0, bias: false }, BatchNorm { eps: 1e-5 }]),
            },
            Residual {
                body: vec![Conv { c_out: 10, k: 3, stride: 1, pad: 1, bias: true }, BatchNorm { eps: 1e-5 }],
                shortcut: None,
            },
            AvgPool { k: 2, stride: 2, pad: 0 },
            Flatten,
            Linear { d_out: 12, bias: true },
            Relu,
            Linear { d_out: 5, bias: false },
        ]
    }

    fn model() -> Model {
        let cfg = ModelConfig {
            name: GRAPH_MODEL.into(),
            in_shape: [3, 16, 16],
            classes: 5,
            width: 0,
            small_input: false,
            spec: Some(spec()),
        };
        let mut m = tern_train::models::build(&cfg, &mut Rng::new(4)).unwrap();
        let mut i = 0;
        m.visit_buffers(&mut |n, t| {
            i += 1;
            let v = (0..t.len())
                .map(|j| if n.ends_with("var") { 0.6 + 0.01 * j as f32 } else { 0.03 * (i + j) as f32 })
                .collect();
            *t = Tensor::from_vec(t.shape(), v);
        });
        m.set_relu(0.02, 0.0);
        m
    }

    fn logits(m: &mut Model, x: &Tensor) -> Vec<f32> {
        m.forward(&Ctx::new(&CpuBackend, false), x).into_data()
    }

    fn roundtrip(edit: &dyn Fn(&mut proto::ModelProto)) -> tern_core::Result<(Model, Model)> {
        let dir = tempfile::tempdir().unwrap();
        let mut m = model();
        let mut onnx = crate::export::to_onnx(&mut m, &[]).unwrap();
        edit(&mut onnx);
        let p = dir.path().join("g.onnx");
        std::fs::write(&p, onnx.encode_to_vec()).unwrap();
        let (back, _) = import(&p)?;
        Ok((m, back))
    }

    #[test]
    fn a_graph_of_no_known_architecture_imports_with_its_logits() {
        // as exported, then with each Add's inputs swapped (the shortcut first, as some
        // exporters write) and the classifier as Gemm without transB (W stored [in, out])
        let swap = |m: &mut proto::ModelProto| {
            let g = m.graph.as_mut().unwrap();
            for n in &mut g.node {
                if n.op_type.as_deref() == Some("Add") {
                    n.input.swap(0, 1);
                }
            }
            let last = g.node.iter_mut().rev().find(|n| n.op_type.as_deref() == Some("Gemm")).unwrap();
            last.attribute.retain(|a| a.name.as_deref() != Some("transB"));
            let w = last.input[1].clone();
            let t = g.initializer.iter_mut().find(|t| t.name.as_deref() == Some(w.as_str())).unwrap();
            let (o, i) = (t.dims[0] as usize, t.dims[1] as usize);
            let v = tensor_values(t).unwrap();
            let tv: Vec<f32> = (0..o * i).map(|k| v[(k % o) * i + k / o]).collect();
            *t = crate::export::tensor_proto(&w, &[i, o], &tv);
        };
        for edit in [&(|_: &mut proto::ModelProto| {}) as &dyn Fn(&mut proto::ModelProto), &swap] {
            let (mut m, mut back) = roundtrip(edit).unwrap();
            assert_eq!(back.config.name, GRAPH_MODEL);
            assert_eq!(back.config.spec.as_deref(), Some(&spec()[..]));
            let x = Tensor::randn(&[3, 3, 16, 16], 1.0, &mut Rng::new(2));
            let (a, b) = (logits(&mut m, &x), logits(&mut back, &x));
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * (1.0 + u.abs()), "{u} vs {v}");
            }
        }
    }

    #[test]
    fn graphs_tern_cannot_hold_are_refused_naming_the_node() {
        let err = |edit: &dyn Fn(&mut proto::ModelProto)| roundtrip(edit).err().expect("refused").to_string();
        // a residual Add without its ReLU
        let e = err(&|m| {
            let g = m.graph.as_mut().unwrap();
            let i = g.node.iter().position(|n| n.op_type.as_deref() == Some("Add")).unwrap();
            let relu_out = g.node[i + 1].output[0].clone();
            g.node[i].output[0] = relu_out;
            g.node.remove(i + 1);
        });
        assert!(e.contains("Add") && e.contains("ReLU"), "{e}");
        // a grouped convolution
        let e = err(&|m| {
            let g = m.graph.as_mut().unwrap();
            let c = g.node.iter_mut().filter(|n| n.op_type.as_deref() == Some("Conv")).nth(1).unwrap();
            c.attribute.retain(|a| a.name.as_deref() != Some("group"));
            c.attribute.push(proto::AttributeProto {
                name: Some("group".into()),
                r#type: Some(proto::attribute_type::INT),
                i: Some(2),
                ..Default::default()
            });
        });
        assert!(e.contains("group"), "{e}");
    }
}
