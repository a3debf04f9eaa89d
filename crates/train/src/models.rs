//! Models by name: LeNet-5, CIFAR-style VGGs, CIFAR-style ResNets (20/32/56) and
//! ImageNet-style ResNets (18/34 basic blocks, 50/152 bottlenecks, optional small-input stem).

use crate::layer::Layer;
use crate::layers::*;
use crate::model::{Model, ModelConfig};
use tern_core::{Error, Result, Rng};

pub const MODEL_NAMES: [&str; 14] = [
    "lenet5",
    "vgg-small",
    "vgg7",
    "resnet20",
    "resnet32",
    "resnet56",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet152",
    "vgg11_bn",
    "vgg13_bn",
    "vgg16_bn",
    "vgg19_bn",
];

/// The name of models described layer by layer ([`ModelConfig::spec`]).
pub const GRAPH_MODEL: &str = "graph";

/// torchvision's VGG configurations (A, B, D, E): conv widths at base 64, 0 a max pool.
fn vgg_config(name: &str) -> &'static [usize] {
    match name {
        "vgg11_bn" => &[64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        "vgg13_bn" => &[64, 64, 0, 128, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0],
        "vgg16_bn" => &[64, 64, 0, 128, 128, 0, 256, 256, 256, 0, 512, 512, 512, 0, 512, 512, 512, 0],
        _ => &[64, 64, 0, 128, 128, 0, 256, 256, 256, 256, 0, 512, 512, 512, 512, 0, 512, 512, 512, 512, 0],
    }
}

/// One-line descriptions for `tern models`.
pub fn describe(name: &str) -> &'static str {
    match name {
        "lenet5" => "LeNet-5: 6C5-MP-16C5-MP-120FC-84FC",
        "vgg-small" => "CIFAR-style VGG with BN: 2xW C3-MP-2x2W C3-MP-2x4W C3-MP-FC (W=32)",
        "vgg7" => "TWN's VGG-7: 2x128C3-MP-2x256C3-MP-2x512C3-MP-1024FC, with BN",
        "resnet20" | "resnet32" | "resnet56" => "CIFAR-style ResNet: 3 stages of basic blocks (16/32/64 channels)",
        "resnet18" | "resnet34" => "ImageNet-style ResNet, basic blocks (64..512 channels)",
        "resnet50" | "resnet152" => "ImageNet-style ResNet, bottleneck blocks (256..2048 channels)",
        "vgg11_bn" | "vgg13_bn" | "vgg16_bn" | "vgg19_bn" => {
            "torchvision's VGG with BN (224 px: 7x7 before the classifier; no dropout)"
        }
        _ => "",
    }
}

/// Tracks the per-image shape while layers are appended.
struct Builder<'r> {
    shape: Vec<usize>,
    layers: Vec<Box<dyn Layer>>,
    rng: &'r mut Rng,
}

impl<'r> Builder<'r> {
    fn new(shape: &[usize], rng: &'r mut Rng) -> Self {
        Builder { shape: shape.to_vec(), layers: Vec::new(), rng }
    }
    fn push(&mut self, l: Box<dyn Layer>) {
        let mut b = vec![1];
        b.extend_from_slice(&self.shape);
        self.shape = l.out_shape(&b)[1..].to_vec();
        self.layers.push(l);
    }
    fn conv(&mut self, name: &str, c_out: usize, k: usize, stride: usize, pad: usize, bias: bool) {
        let c_in = self.shape[0];
        let l = Conv2d::new(name, c_in, c_out, k, stride, pad, bias, self.rng);
        self.push(Box::new(l));
    }
    fn conv_bn_relu(&mut self, name: &str, c_out: usize, k: usize, stride: usize, pad: usize) {
        self.conv(&format!("{name}.conv"), c_out, k, stride, pad, false);
        self.push(Box::new(BatchNorm::new(&format!("{name}.bn"), c_out)));
        self.push(Box::new(Relu::new(&format!("{name}.relu"))));
    }
    fn linear(&mut self, name: &str, d_out: usize) {
        let d_in = self.shape[0];
        let l = Linear::new(name, d_in, d_out, true, self.rng);
        self.push(Box::new(l));
    }
    fn finish(self, name: &str) -> Sequential {
        Sequential::new(name, self.layers)
    }
}

/// One layer of a `graph` model (see [`ModelConfig::spec`]): input sizes follow from the
/// layers before it. A graph model's layers are named by position (`layers.3`,
/// `layers.5.body.0`, `layers.5.shortcut.1`).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum LayerSpec {
    Conv {
        c_out: usize,
        k: usize,
        stride: usize,
        pad: usize,
        bias: bool,
    },
    BatchNorm {
        eps: f32,
    },
    Relu,
    MaxPool {
        k: usize,
        stride: usize,
        pad: usize,
    },
    AvgPool {
        k: usize,
        stride: usize,
        pad: usize,
    },
    GlobalAvgPool,
    Flatten,
    Linear {
        d_out: usize,
        bias: bool,
    },
    /// relu(body(x) + shortcut(x)), the shortcut the identity when None.
    Residual {
        body: Vec<LayerSpec>,
        shortcut: Option<Vec<LayerSpec>>,
    },
}

/// Appends `specs` to `b`; returns an error naming the layer whose sizes do not fit.
fn build_spec(b: &mut Builder, prefix: &str, specs: &[LayerSpec]) -> Result<()> {
    for (i, spec) in specs.iter().enumerate() {
        let name = format!("{prefix}.{i}");
        let bad = |what: String| Error::invalid("graph model", format!("layer {name} ({spec:?}): {what}"));
        let spatial = b.shape.len() == 3;
        match spec {
            LayerSpec::Conv { c_out, k, stride, pad, bias } => {
                let [c, h, w] = b.shape[..] else { return Err(bad("needs an image input".into())) };
                tern_core::ConvGeometry::new(1, c, h, w, *c_out, *k, *stride, *pad).map_err(|e| bad(e.to_string()))?;
                b.conv(&name, *c_out, *k, *stride, *pad, *bias);
            }
            LayerSpec::BatchNorm { eps } => {
                let mut bn = BatchNorm::new(&name, b.shape[0]);
                bn.eps = *eps;
                b.push(Box::new(bn));
            }
            LayerSpec::Relu => b.push(Box::new(Relu::new(&name))),
            LayerSpec::MaxPool { k, stride, pad } | LayerSpec::AvgPool { k, stride, pad } => {
                let [c, h, w] = b.shape[..] else { return Err(bad("needs an image input".into())) };
                tern_core::PoolGeometry::new(1, c, h, w, *k, *stride, *pad).map_err(|e| bad(e.to_string()))?;
                if matches!(spec, LayerSpec::MaxPool { .. }) {
                    b.push(Box::new(MaxPool2d::new(&name, *k, *stride, *pad)));
                } else {
                    b.push(Box::new(AvgPool2d::new(&name, *k, *stride, *pad)));
                }
            }
            LayerSpec::GlobalAvgPool if spatial => b.push(Box::new(GlobalAvgPool::new(&name))),
            LayerSpec::Flatten => b.push(Box::new(Flatten::new(&name))),
            LayerSpec::Linear { d_out, bias } if !spatial => {
                let d_in = b.shape[0];
                let l = Linear::new(&name, d_in, *d_out, *bias, b.rng);
                b.push(Box::new(l));
            }
            LayerSpec::Residual { body, shortcut } if spatial => {
                let input = b.shape.clone();
                let mut sub = Builder::new(&input, b.rng);
                build_spec(&mut sub, &format!("{name}.body"), body)?;
                let out = sub.shape.clone();
                let body = sub.finish(&format!("{name}.body"));
                let sc = match shortcut {
                    Some(s) => {
                        let mut sub = Builder::new(&input, b.rng);
                        build_spec(&mut sub, &format!("{name}.shortcut"), s)?;
                        if sub.shape != out {
                            return Err(bad(format!("the shortcut gives {:?}, the body {out:?}", sub.shape)));
                        }
                        Some(sub.finish(&format!("{name}.shortcut")))
                    }
                    None if input != out => {
                        return Err(bad(format!("an identity shortcut of {input:?} and a body of {out:?}")))
                    }
                    None => None,
                };
                b.push(Box::new(Residual::new(&name, body, sc)));
            }
            _ => return Err(bad(format!("does not fit an input of shape {:?}", b.shape))),
        }
    }
    Ok(())
}

/// Builds the model a config names, with weights drawn from `rng`.
pub fn build(config: &ModelConfig, rng: &mut Rng) -> Result<Model> {
    let [c, h, w] = config.in_shape;
    if c == 0 || h == 0 || w == 0 || config.classes == 0 {
        return Err(Error::invalid(
            "model input",
            format!("shape {:?} with {} classes", config.in_shape, config.classes),
        ));
    }
    let min_side = match config.name.as_str() {
        "lenet5" => 16,
        "vgg-small" | "vgg7" | "resnet20" | "resnet32" | "resnet56" => 8,
        n if n.ends_with("_bn") => 224,
        n if n.starts_with("resnet") && config.small_input => 8,
        n if n.starts_with("resnet") => 32,
        _ => 0,
    };
    if h.min(w) < min_side {
        return Err(Error::invalid(
            "input size",
            format!(
                "{h}x{w} is too small for {}: at least {min_side}x{min_side} (pass --input-size {min_side}, or --small-input for ImageNet-style ResNets)",
                config.name
            ),
        ));
    }
    let mut b = Builder::new(&config.in_shape, rng);
    let width = |default: usize| if config.width == 0 { default } else { config.width };
    if let Some(spec) = &config.spec {
        if config.name != GRAPH_MODEL {
            return Err(Error::invalid(
                "model",
                format!("`{}` with a layer list (only `{GRAPH_MODEL}` has one)", config.name),
            ));
        }
        build_spec(&mut b, "layers", spec)?;
        if b.shape != [config.classes] {
            return Err(Error::invalid(
                "graph model",
                format!("it ends in {:?}, not {} class scores", b.shape, config.classes),
            ));
        }
        return Ok(Model { config: config.clone(), net: b.finish("net") });
    }
    match config.name.as_str() {
        "lenet5" => {
            b.conv("conv1", 6, 5, 1, 2, true);
            b.push(Box::new(Relu::new("relu1")));
            b.push(Box::new(MaxPool2d::new("pool1", 2, 2, 0)));
            b.conv("conv2", 16, 5, 1, 0, true);
            b.push(Box::new(Relu::new("relu2")));
            b.push(Box::new(MaxPool2d::new("pool2", 2, 2, 0)));
            b.push(Box::new(Flatten::new("flatten")));
            b.linear("fc1", 120);
            b.push(Box::new(Relu::new("relu3")));
            b.linear("fc2", 84);
            b.push(Box::new(Relu::new("relu4")));
            b.linear("fc3", config.classes);
        }
        "vgg-small" | "vgg7" => {
            let base = width(if config.name == "vgg7" { 128 } else { 32 });
            for (stage, mult) in [1, 2, 4].into_iter().enumerate() {
                for j in 0..2 {
                    b.conv_bn_relu(&format!("features.{}", stage * 2 + j), base * mult, 3, 1, 1);
                }
                b.push(Box::new(MaxPool2d::new(&format!("pool{stage}"), 2, 2, 0)));
            }
            b.push(Box::new(Flatten::new("flatten")));
            if config.name == "vgg7" {
                b.linear("fc1", 1024);
                b.push(Box::new(Relu::new("fc1.relu")));
            }
            b.linear("classifier", config.classes);
        }
        "resnet20" | "resnet32" | "resnet56" => {
            let blocks = match config.name.as_str() {
                "resnet20" => 3,
                "resnet32" => 5,
                _ => 9,
            };
            let base = width(16);
            b.conv_bn_relu("stem", base, 3, 1, 1);
            for stage in 0..3 {
                for i in 0..blocks {
                    let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                    basic_block(&mut b, &format!("layer{}.{i}", stage + 1), base << stage, stride);
                }
            }
            b.push(Box::new(GlobalAvgPool::new("avgpool")));
            b.linear("fc", config.classes);
        }
        "resnet18" | "resnet34" | "resnet50" | "resnet152" => {
            let (blocks, bottleneck): ([usize; 4], bool) = match config.name.as_str() {
                "resnet18" => ([2, 2, 2, 2], false),
                "resnet34" => ([3, 4, 6, 3], false),
                "resnet50" => ([3, 4, 6, 3], true),
                _ => ([3, 8, 36, 3], true),
            };
            let base = width(64);
            if config.small_input {
                b.conv_bn_relu("stem", base, 3, 1, 1);
            } else {
                b.conv_bn_relu("stem", base, 7, 2, 3);
                b.push(Box::new(MaxPool2d::new("stem.pool", 3, 2, 1)));
            }
            for (stage, &n) in blocks.iter().enumerate() {
                for i in 0..n {
                    let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                    let name = format!("layer{}.{i}", stage + 1);
                    if bottleneck {
                        bottleneck_block(&mut b, &name, base << stage, stride);
                    } else {
                        basic_block(&mut b, &name, base << stage, stride);
                    }
                }
            }
            b.push(Box::new(GlobalAvgPool::new("avgpool")));
            b.linear("fc", config.classes);
        }
        "vgg11_bn" | "vgg13_bn" | "vgg16_bn" | "vgg19_bn" => {
            // torchvision's layout and names (features.i, classifier.j), widths scaled by
            // base/64. Its dropout is left out (tern has none: identical at inference), and its
            // adaptive 7x7 pooling is the identity at the only input side built here.
            let base = width(64);
            let mut i = 0;
            for &v in vgg_config(&config.name) {
                if v == 0 {
                    b.push(Box::new(MaxPool2d::new(&format!("features.{i}"), 2, 2, 0)));
                    i += 1;
                } else {
                    let c = v * base / 64;
                    b.conv(&format!("features.{i}"), c, 3, 1, 1, true);
                    b.push(Box::new(BatchNorm::new(&format!("features.{}", i + 1), c)));
                    b.push(Box::new(Relu::new(&format!("features.{}", i + 2))));
                    i += 3;
                }
            }
            if b.shape[1..] != [7, 7] {
                return Err(Error::invalid(
                    "input size",
                    format!(
                        "{h}x{w} gives {}x{} features: {} is built for 224 px input (7x7 features, torchvision's adaptive pooling size)",
                        b.shape[1], b.shape[2], config.name
                    ),
                ));
            }
            b.push(Box::new(Flatten::new("flatten")));
            let hidden = 4096 * base / 64;
            b.linear("classifier.0", hidden);
            b.push(Box::new(Relu::new("classifier.1")));
            b.linear("classifier.3", hidden);
            b.push(Box::new(Relu::new("classifier.4")));
            b.linear("classifier.6", config.classes);
        }
        other => {
            return Err(Error::invalid("--model", format!("unknown model `{other}`: expected one of {MODEL_NAMES:?}")))
        }
    }
    Ok(Model { config: config.clone(), net: b.finish("net") })
}

/// Projection shortcut (1x1 conv + BN) when the block changes shape, else identity.
fn shortcut(b: &mut Builder, name: &str, c_in: usize, c_out: usize, stride: usize) -> Option<Sequential> {
    (stride != 1 || c_in != c_out).then(|| {
        let mut s = Builder::new(&b.shape, b.rng);
        s.conv(&format!("{name}.downsample.conv"), c_out, 1, stride, 0, false);
        s.push(Box::new(BatchNorm::new(&format!("{name}.downsample.bn"), c_out)));
        s.finish(&format!("{name}.downsample"))
    })
}

fn basic_block(b: &mut Builder, name: &str, c_out: usize, stride: usize) {
    let c_in = b.shape[0];
    let sc = shortcut(b, name, c_in, c_out, stride);
    let mut body = Builder::new(&b.shape, b.rng);
    body.conv_bn_relu(&format!("{name}.1"), c_out, 3, stride, 1);
    body.conv(&format!("{name}.2.conv"), c_out, 3, 1, 1, false);
    body.push(Box::new(BatchNorm::new(&format!("{name}.2.bn"), c_out)));
    let body = body.finish(&format!("{name}.body"));
    b.push(Box::new(Residual::new(name, body, sc)));
}

fn bottleneck_block(b: &mut Builder, name: &str, width: usize, stride: usize) {
    let (c_in, c_out) = (b.shape[0], width * 4);
    let sc = shortcut(b, name, c_in, c_out, stride);
    let mut body = Builder::new(&b.shape, b.rng);
    body.conv_bn_relu(&format!("{name}.1"), width, 1, 1, 0);
    body.conv_bn_relu(&format!("{name}.2"), width, 3, stride, 1);
    body.conv(&format!("{name}.3.conv"), c_out, 1, 1, 0, false);
    body.push(Box::new(BatchNorm::new(&format!("{name}.3.bn"), c_out)));
    let body = body.finish(&format!("{name}.body"));
    b.push(Box::new(Residual::new(name, body, sc)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(name: &str, shape: [usize; 3], small: bool) -> ModelConfig {
        ModelConfig { name: name.into(), in_shape: shape, classes: 10, width: 0, small_input: small, spec: None }
    }

    fn totals(m: &Model) -> (usize, u64) {
        let rows = m.summary();
        (rows.iter().map(|r| r.params).sum(), rows.iter().map(|r| r.macs).sum())
    }

    #[test]
    fn parameter_and_mac_counts_match_the_literature() {
        let mut rng = Rng::new(0);
        // torchvision: resnet18 11,689,512 params, 1.82 GMACs at 224; resnet50 25,557,032.
        let m = build(&ModelConfig { classes: 1000, ..cfg("resnet18", [3, 224, 224], false) }, &mut rng).unwrap();
        let (p, macs) = totals(&m);
        assert_eq!(p, 11_689_512);
        assert!((macs as f64 / 1e9 - 1.82).abs() < 0.02, "{macs}");
        let m = build(&ModelConfig { classes: 1000, ..cfg("resnet50", [3, 224, 224], false) }, &mut rng).unwrap();
        assert_eq!(totals(&m).0, 25_557_032);
        let m = build(&ModelConfig { classes: 1000, ..cfg("resnet34", [3, 224, 224], false) }, &mut rng).unwrap();
        assert_eq!(totals(&m).0, 21_797_672);
        // CIFAR ResNet-20: ~0.27M parameters (He et al. 2016), with projection shortcuts slightly more.
        let m = build(&cfg("resnet20", [3, 32, 32], false), &mut rng).unwrap();
        let p = totals(&m).0;
        assert!((270_000..280_000).contains(&p), "{p}");
        // LeNet-5 on 28x28 with padding 2: 61,706 parameters.
        assert_eq!(totals(&build(&cfg("lenet5", [1, 28, 28], false), &mut rng).unwrap()).0, 61_706);
    }

    #[test]
    fn every_model_runs_forward_and_unknown_names_fail() {
        use crate::layer::Ctx;
        use tern_core::{CpuBackend, Tensor};
        let mut rng = Rng::new(1);
        for name in MODEL_NAMES {
            if name == "resnet152" {
                continue; // built in the summary test; too slow to run forward here
            }
            let small = name.starts_with("resnet") && !["resnet20", "resnet32", "resnet56"].contains(&name);
            // torchvision's VGGs are built for 224 px only
            let side = if name.ends_with("_bn") { 224 } else { 28 };
            let mut c = cfg(name, [1, side, side], small);
            if name == "vgg7" || name == "resnet50" {
                c.width = 8;
            }
            if name.ends_with("_bn") {
                c.width = 4;
            }
            let mut m = build(&c, &mut rng).unwrap();
            let ctx = Ctx::new(&CpuBackend, false);
            let y = m.forward(&ctx, &Tensor::randn(&[2, 1, side, side], 1.0, &mut rng));
            assert_eq!(y.shape(), &[2, 10], "{name}");
        }
        let rows = build(&ModelConfig { classes: 1000, ..cfg("resnet152", [3, 224, 224], false) }, &mut rng)
            .unwrap()
            .summary();
        assert_eq!(rows.iter().map(|r| r.params).sum::<usize>(), 60_192_808);
        let e = build(&cfg("alexnet", [3, 32, 32], false), &mut rng).err().unwrap().to_string();
        assert!(e.contains("--model") && e.contains("resnet18"), "{e}");
        let e = build(&cfg("resnet18", [3, 28, 28], false), &mut rng).err().unwrap().to_string();
        assert!(e.contains("too small"), "{e}");
        let e = build(&cfg("vgg16_bn", [3, 256, 256], false), &mut rng).err().unwrap().to_string();
        assert!(e.contains("224") && e.contains("8x8"), "{e}");
        // torchvision's VGG-16-BN: 138,365,992 parameters with 1000 classes
        let vgg16 = build(&ModelConfig { classes: 1000, ..cfg("vgg16_bn", [3, 224, 224], false) }, &mut rng).unwrap();
        assert_eq!(vgg16.summary().iter().map(|r| r.params).sum::<usize>(), 138_365_992);
    }

    /// The fused conv → BN → ReLU path gives the unfused layers' outputs, gradients and
    /// running statistics (to rounding), in train mode with ternary layers, a raised ReLU
    /// threshold and the L1 term, with frozen BN statistics, and in eval mode.
    #[test]
    fn fused_and_unfused_layers_agree() {
        use crate::layer::Ctx;
        use crate::layers::BatchNorm;
        use tern_core::quant::TernaryConfig;
        use tern_core::{CpuBackend, Tensor};
        fn close(a: &[f32], b: &[f32], what: &str) {
            for (i, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{what}[{i}]: {x} vs {y}");
            }
        }
        for (name, frozen) in [("vgg-small", false), ("resnet20", false), ("vgg-small", true)] {
            let mut c = cfg(name, [3, 16, 16], false);
            c.width = 16;
            let build_one = || {
                let mut m = build(&c, &mut Rng::new(5)).unwrap();
                m.set_ternary(Some(TernaryConfig::default()), true, false);
                m.set_relu(0.05, 0.01);
                m.net.visit_leaves(&mut |l| {
                    if let Some(bn) = l.as_any_mut().downcast_mut::<BatchNorm>() {
                        bn.frozen_stats = frozen;
                    }
                });
                m
            };
            let (mut fused, mut plain) = (build_one(), build_one());
            let x = Tensor::randn(&[4, 3, 16, 16], 1.0, &mut Rng::new(6));
            let dlogits = Tensor::randn(&[4, 10], 1.0, &mut Rng::new(7));
            let mut outs = Vec::new();
            for (m, fuse) in [(&mut fused, true), (&mut plain, false)] {
                let mut ctx = Ctx::new(&CpuBackend, true);
                ctx.fuse = fuse;
                let y = m.forward(&ctx, &x);
                m.backward(&ctx, &dlogits);
                let mut ectx = Ctx::new(&CpuBackend, false);
                ectx.fuse = fuse;
                let e = m.forward(&ectx, &x);
                outs.push((y, e));
            }
            close(outs[0].0.data(), outs[1].0.data(), &format!("{name} train logits"));
            close(outs[0].1.data(), outs[1].1.data(), &format!("{name} eval logits"));
            let mut grads = Vec::new();
            fused.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.data().to_vec())));
            let mut i = 0;
            plain.visit_params(&mut |p| {
                assert_eq!(grads[i].0, p.name);
                close(&grads[i].1, p.grad.data(), &format!("{name} grad {}", p.name));
                i += 1;
            });
            let mut bufs = Vec::new();
            fused.visit_buffers(&mut |n, t| bufs.push((n.to_string(), t.data().to_vec())));
            let mut i = 0;
            plain.visit_buffers(&mut |n, t| {
                close(&bufs[i].1, t.data(), &format!("{name} {n}"));
                i += 1;
            });
        }
    }
}
