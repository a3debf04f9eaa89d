//! tern models as ONNX graphs (opset 13) for ONNX Runtime and other engines: every layer of
//! tern's model zoo maps onto one or two standard operators, ternary weights leave as their
//! dequantised values (±α or 0, what tern's forward multiplies by), BN with its running
//! statistics (inference semantics), ReLU thresholds as `ThresholdedRelu`.

use crate::proto::{self, attribute_type, data_type};
use tern_core::{Error, Result};
use tern_train::layers::Sequential;
use tern_train::layers::{AvgPool2d, BatchNorm, Conv2d, Flatten, GlobalAvgPool, Linear, MaxPool2d, Relu, Residual};
use tern_train::{Layer, Model};

/// The opset the exported graphs declare.
pub const OPSET: i64 = 13;
/// Names of the graph's input and output.
pub const INPUT: &str = "input";
pub const OUTPUT: &str = "logits";

/// The graph being written: nodes, weights, and a counter for fresh value names.
#[derive(Default)]
struct Graph {
    nodes: Vec<proto::NodeProto>,
    weights: Vec<proto::TensorProto>,
    values: usize,
}

fn ints(name: &str, v: &[usize]) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INTS),
        ints: v.iter().map(|&x| x as i64).collect(),
        ..Default::default()
    }
}

fn int(name: &str, v: i64) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::INT),
        i: Some(v),
        ..Default::default()
    }
}

fn float(name: &str, v: f32) -> proto::AttributeProto {
    proto::AttributeProto {
        name: Some(name.into()),
        r#type: Some(attribute_type::FLOAT),
        f: Some(v),
        ..Default::default()
    }
}

/// A float tensor as an initializer (little-endian raw data, as ONNX Runtime writes them).
pub fn tensor_proto(name: &str, shape: &[usize], values: &[f32]) -> proto::TensorProto {
    proto::TensorProto {
        dims: shape.iter().map(|&d| d as i64).collect(),
        data_type: Some(data_type::FLOAT),
        name: Some(name.into()),
        raw_data: Some(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        ..Default::default()
    }
}

impl Graph {
    fn fresh(&mut self, hint: &str) -> String {
        self.values += 1;
        format!("{hint}:{}", self.values)
    }

    fn weight(&mut self, name: &str, shape: &[usize], values: &[f32]) -> String {
        self.weights.push(tensor_proto(name, shape, values));
        name.to_string()
    }

    /// Appends a node; returns its output's name.
    fn node(&mut self, op: &str, name: &str, inputs: Vec<String>, attrs: Vec<proto::AttributeProto>) -> String {
        let out = self.fresh(name);
        self.nodes.push(proto::NodeProto {
            input: inputs,
            output: vec![out.clone()],
            name: Some(name.into()),
            op_type: Some(op.into()),
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    fn relu(&mut self, r: &Relu, x: String) -> String {
        if r.threshold == 0.0 {
            self.node("Relu", r.name(), vec![x], vec![])
        } else {
            // tern's ReLU with threshold t: x where x > t, else 0 — ONNX's ThresholdedRelu
            self.node("ThresholdedRelu", r.name(), vec![x], vec![float("alpha", r.threshold)])
        }
    }

    /// Emits `layer` applied to value `x`; returns the output value.
    fn layer(&mut self, layer: &mut dyn Layer, x: String) -> Result<String> {
        let (name, kind) = (layer.name().to_string(), layer.kind());
        let any = layer.as_any_mut();
        if let Some(s) = any.downcast_mut::<Sequential>() {
            return s.layers.iter_mut().try_fold(x, |x, l| self.layer(l.as_mut(), x));
        }
        if let Some(r) = any.downcast_mut::<Residual>() {
            let a = self.layer(&mut r.body, x.clone())?;
            let s = match &mut r.shortcut {
                Some(sc) => self.layer(sc, x)?,
                None => x,
            };
            let z = self.node("Add", &format!("{name}.add"), vec![a, s], vec![]);
            return Ok(self.relu(&r.relu, z));
        }
        if let Some(c) = any.downcast_mut::<Conv2d>() {
            let shape = [c.c_out, c.c_in, c.k, c.k];
            let w = c.ternary.host_weight(&c.weight.value, c.c_out);
            let mut inputs = vec![x, self.weight(&c.weight.name, &shape, &w)];
            if let Some(b) = &c.bias {
                inputs.push(self.weight(&b.name, &[c.c_out], b.value.host_values().as_ref()));
            }
            let attrs = vec![
                ints("kernel_shape", &[c.k, c.k]),
                ints("strides", &[c.stride, c.stride]),
                ints("pads", &[c.pad; 4]),
                ints("dilations", &[1, 1]),
                int("group", 1),
            ];
            return Ok(self.node("Conv", &name, inputs, attrs));
        }
        if let Some(bn) = any.downcast_mut::<BatchNorm>() {
            let c = bn.c;
            let inputs = vec![
                x,
                self.weight(&bn.gamma.name, &[c], bn.gamma.value.host_values().as_ref()),
                self.weight(&bn.beta.name, &[c], bn.beta.value.host_values().as_ref()),
                self.weight(&format!("{name}.running_mean"), &[c], bn.running_mean.host_values().as_ref()),
                self.weight(&format!("{name}.running_var"), &[c], bn.running_var.host_values().as_ref()),
            ];
            return Ok(self.node("BatchNormalization", &name, inputs, vec![float("epsilon", bn.eps)]));
        }
        if let Some(r) = any.downcast_mut::<Relu>() {
            return Ok(self.relu(r, x));
        }
        if let Some(p) = any.downcast_mut::<MaxPool2d>() {
            let attrs = vec![
                ints("kernel_shape", &[p.k, p.k]),
                ints("strides", &[p.stride, p.stride]),
                ints("pads", &[p.pad; 4]),
            ];
            return Ok(self.node("MaxPool", &name, vec![x], attrs));
        }
        if let Some(p) = any.downcast_mut::<AvgPool2d>() {
            // tern divides by k·k at the border too: padding counts
            let attrs = vec![
                ints("kernel_shape", &[p.k, p.k]),
                ints("strides", &[p.stride, p.stride]),
                ints("pads", &[p.pad; 4]),
                int("count_include_pad", 1),
            ];
            return Ok(self.node("AveragePool", &name, vec![x], attrs));
        }
        if any.downcast_mut::<GlobalAvgPool>().is_some() {
            // tern's global pooling gives [n, c]; ONNX's [n, c, 1, 1]
            let y = self.node("GlobalAveragePool", &name, vec![x], vec![]);
            return Ok(self.node("Flatten", &format!("{name}.flatten"), vec![y], vec![int("axis", 1)]));
        }
        if any.downcast_mut::<Flatten>().is_some() {
            return Ok(self.node("Flatten", &name, vec![x], vec![int("axis", 1)]));
        }
        if let Some(l) = any.downcast_mut::<Linear>() {
            let w = l.ternary.host_weight(&l.weight.value, l.d_out);
            let mut inputs = vec![x, self.weight(&l.weight.name, &[l.d_out, l.d_in], &w)];
            if let Some(b) = &l.bias {
                inputs.push(self.weight(&b.name, &[l.d_out], b.value.host_values().as_ref()));
            }
            return Ok(self.node("Gemm", &name, inputs, vec![int("transB", 1)]));
        }
        Err(Error::invalid("tern export --onnx", format!("layer {name} of kind {kind} has no ONNX form here")))
    }
}

fn value_info(name: &str, dims: &[Option<usize>]) -> proto::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| match d {
            Some(v) => proto::Dimension { dim_value: Some(*v as i64), dim_param: None },
            None => proto::Dimension { dim_value: None, dim_param: Some("batch".into()) },
        })
        .collect();
    proto::ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(proto::TypeProto {
            tensor_type: Some(proto::TypeProtoTensor {
                elem_type: Some(data_type::FLOAT),
                shape: Some(proto::TensorShapeProto { dim }),
            }),
        }),
    }
}

/// The ONNX model of `model` (weights read from wherever they live): input `input`
/// `[batch, c, h, w]` (normalised as tern's loader normalises), output `logits`
/// `[batch, classes]`. `metadata` goes into `metadata_props` (the input normalisation, the
/// checkpoint it came from).
pub fn to_onnx(model: &mut Model, metadata: &[(String, String)]) -> Result<proto::ModelProto> {
    let mut g = Graph::default();
    let out = g.layer(&mut model.net, INPUT.to_string())?;
    // the last node's output is the graph's output
    let last = g.nodes.last_mut().ok_or_else(|| Error::invalid("tern export --onnx", "the model has no layers"))?;
    debug_assert_eq!(last.output[0], out);
    last.output[0] = OUTPUT.to_string();
    let [c, h, w] = model.config.in_shape;
    let graph = proto::GraphProto {
        node: g.nodes,
        name: Some(model.config.name.clone()),
        initializer: g.weights,
        input: vec![value_info(INPUT, &[None, Some(c), Some(h), Some(w)])],
        output: vec![value_info(OUTPUT, &[None, Some(model.config.classes)])],
    };
    Ok(proto::ModelProto {
        ir_version: Some(7),
        opset_import: vec![proto::OperatorSetIdProto { domain: Some(String::new()), version: Some(OPSET) }],
        producer_name: Some("tern".into()),
        producer_version: Some(env!("CARGO_PKG_VERSION").into()),
        doc_string: Some(format!("{} exported by tern", model.config.name)),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| proto::StringStringEntryProto { key: Some(k.clone()), value: Some(v.clone()) })
            .collect(),
    })
}

/// Writes [`to_onnx`] of `model` to `path` atomically; returns the bytes written.
pub fn write_onnx(path: &std::path::Path, model: &mut Model, metadata: &[(String, String)]) -> Result<usize> {
    use prost::Message;
    let bytes = to_onnx(model, metadata)?.encode_to_vec();
    tern_core::checkpoint::write_atomic(path, &bytes)?;
    Ok(bytes.len())
}

/// The float values of an initializer (raw little-endian data or `float_data`); errors name
/// the tensor and what was wrong.
pub fn tensor_values(t: &proto::TensorProto) -> Result<Vec<f32>> {
    let name = t.name.clone().unwrap_or_default();
    let bad = |what: String| Error::invalid("ONNX tensor", format!("{name}: {what}"));
    if t.data_type != Some(data_type::FLOAT) {
        return Err(bad(format!("data type {:?}: expected FLOAT (1)", t.data_type)));
    }
    if !t.external_data.is_empty() || t.data_location == Some(1) {
        return Err(bad("stored in an external file: save the model with its weights inside".into()));
    }
    let n = t.dims.iter().try_fold(1usize, |a, &d| usize::try_from(d).ok().and_then(|d| a.checked_mul(d)));
    let n = n.ok_or_else(|| bad(format!("bad dimensions {:?}", t.dims)))?;
    let v: Vec<f32> = match &t.raw_data {
        Some(raw) => raw.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect(),
        None => t.float_data.clone(),
    };
    if v.len() != n || t.raw_data.as_ref().is_some_and(|r| r.len() != 4 * n) {
        return Err(bad(format!("{} values for dimensions {:?}", v.len(), t.dims)));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;
    use tern_core::quant::TernaryConfig;
    use tern_core::Rng;
    use tern_train::{models, ModelConfig};

    fn build(name: &str, width: usize, ternary: bool) -> Model {
        let cfg = ModelConfig {
            name: name.into(),
            in_shape: [1, 16, 16],
            classes: 10,
            width,
            small_input: false,
            spec: None,
        };
        let mut m = models::build(&cfg, &mut Rng::new(3)).unwrap();
        if ternary {
            m.set_ternary(Some(TernaryConfig::default()), true, false);
        }
        m
    }

    fn decode(m: &mut Model) -> proto::ModelProto {
        let bytes = to_onnx(m, &[("k".into(), "v".into())]).unwrap().encode_to_vec();
        proto::ModelProto::decode(bytes.as_slice()).unwrap()
    }

    #[test]
    fn a_residual_network_becomes_standard_operators() {
        let mut m = build("resnet20", 4, true);
        let p = decode(&mut m);
        assert_eq!(p.opset_import[0].version, Some(OPSET));
        let g = p.graph.unwrap();
        let ops: Vec<&str> = g.node.iter().map(|n| n.op_type.as_deref().unwrap()).collect();
        let count = |op: &str| ops.iter().filter(|o| **o == op).count();
        // 19 convs + 2 projection shortcuts, a BN each, 9 residual adds
        assert_eq!((count("Conv"), count("BatchNormalization"), count("Add")), (21, 21, 9));
        assert_eq!((count("GlobalAveragePool"), count("Gemm")), (1, 1));
        assert_eq!(g.node.last().unwrap().output[0], OUTPUT);
        assert_eq!(g.node[0].input[0], INPUT);
        // every node's inputs exist before it: the graph input, an initializer or an output
        let mut known: std::collections::HashSet<String> =
            g.initializer.iter().filter_map(|t| t.name.clone()).collect();
        known.insert(INPUT.into());
        for n in &g.node {
            for i in &n.input {
                assert!(known.contains(i), "{:?} reads {i} before it exists", n.name);
            }
            known.extend(n.output.iter().cloned());
        }
    }

    #[test]
    fn ternary_weights_leave_as_their_dequantised_values() {
        let mut m = build("vgg-small", 8, true);
        let g = decode(&mut m).graph.unwrap();
        let conv2 = g.initializer.iter().find(|t| t.name.as_deref() == Some("features.1.conv.weight")).unwrap();
        let v = tensor_values(conv2).unwrap();
        let mut distinct: Vec<f32> = v.iter().map(|x| x.abs()).collect();
        distinct.sort_by(f32::total_cmp);
        distinct.dedup();
        assert_eq!(distinct.len(), 2, "0 and α: {distinct:?}");
        // the first layer stays full precision (--fp-first-layer)
        let conv1 = g.initializer.iter().find(|t| t.name.as_deref() == Some("features.0.conv.weight")).unwrap();
        assert!(tensor_values(conv1).unwrap().len() > 2);
        let mut w = Vec::new();
        m.net.visit_params(&mut |p| {
            if p.name == "features.0.conv.weight" {
                w = p.value.host_values().into_owned();
            }
        });
        assert_eq!(tensor_values(conv1).unwrap(), w);
    }

    #[test]
    fn broken_tensors_are_named() {
        let mut t = tensor_proto("w", &[2, 3], &[0.0; 6]);
        assert_eq!(tensor_values(&t).unwrap().len(), 6);
        t.raw_data.as_mut().unwrap().truncate(20);
        let e = tensor_values(&t).unwrap_err().to_string();
        assert!(e.contains('w') && e.contains("dimensions"), "{e}");
        t.data_type = Some(data_type::DOUBLE);
        assert!(tensor_values(&t).unwrap_err().to_string().contains("FLOAT"));
    }
}
