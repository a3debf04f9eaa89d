//! Finite-difference gradient checks for every layer, input and weight gradients.

use super::*;
use crate::layer::{Ctx, Layer};
use tern_core::{CpuBackend, Rng, Tensor};

/// Loss L = Σ y·r for a fixed random r; compares backward against central differences.
fn check(layer: &mut dyn Layer, x: &Tensor, seed: u64) {
    let be = CpuBackend;
    let ctx = Ctx::new(&be, true);
    let mut rng = Rng::new(seed);
    let y = layer.forward(&ctx, x);
    let r = Tensor::randn(y.shape(), 1.0, &mut rng);
    let dx = layer.backward(&ctx, &r, true).unwrap();
    let loss = |layer: &mut dyn Layer, x: &Tensor| -> f64 {
        let y = layer.forward(&ctx, x);
        y.data().iter().zip(r.data()).map(|(a, b)| *a as f64 * *b as f64).sum()
    };
    let eps = 1e-2f32;
    let close = |fd: f64, an: f32, what: &str| {
        let err = (fd - an as f64).abs();
        assert!(
            err <= 3e-3 + 2e-2 * (an as f64).abs(),
            "{}: {what}: finite difference {fd} vs analytic {an}",
            layer_name(what)
        );
    };
    // input gradient, at up to 40 spread-out positions
    let step = (x.len() / 40).max(1);
    for i in (0..x.len()).step_by(step) {
        let (mut xp, mut xm) = (x.clone(), x.clone());
        xp.data_mut()[i] += eps;
        xm.data_mut()[i] -= eps;
        let fd = (loss(layer, &xp) - loss(layer, &xm)) / (2.0 * eps as f64);
        close(fd, dx.data()[i], &format!("{} dx[{i}]", layer.name()));
    }
    // parameter gradients
    let mut grads: Vec<(String, Tensor)> = Vec::new();
    layer.visit_params(&mut |p| grads.push((p.name.clone(), p.grad.clone())));
    for (pi, (pname, g)) in grads.iter().enumerate() {
        let step = (g.len() / 25).max(1);
        for i in (0..g.len()).step_by(step) {
            let nudge = |layer: &mut dyn Layer, delta: f32| {
                let mut k = 0;
                layer.visit_params(&mut |p| {
                    if k == pi {
                        p.value.data_mut()[i] += delta;
                    }
                    k += 1;
                });
            };
            nudge(layer, eps);
            let lp = loss(layer, x);
            nudge(layer, -2.0 * eps);
            let lm = loss(layer, x);
            nudge(layer, eps);
            close((lp - lm) / (2.0 * eps as f64), g.data()[i], &format!("{pname}[{i}]"));
        }
    }
}

fn layer_name(what: &str) -> &str {
    what.split(' ').next().unwrap_or(what)
}

/// Distinct values 0.05 apart, none within 0.025 of a multiple of 0.05 (so of 0 or 0.3), shuffled:
/// no ReLU kink or max-pool tie lies within the finite-difference step.
fn separated(shape: &[usize], rng: &mut Rng) -> Tensor {
    let n: usize = shape.iter().product();
    let mut v: Vec<f32> = (0..n).map(|i| (i as f32 - n as f32 / 2.0) * 0.05 + 0.025).collect();
    rng.shuffle(&mut v);
    Tensor::from_vec(shape, v)
}

#[test]
fn conv_layers() {
    let mut rng = Rng::new(1);
    for &(c_in, c_out, k, stride, pad, bias, h) in
        &[(3, 4, 3, 1, 1, true, 5), (2, 3, 3, 2, 1, false, 7), (4, 5, 1, 1, 0, true, 3), (3, 2, 1, 2, 0, false, 6)]
    {
        let mut l = Conv2d::new("conv", c_in, c_out, k, stride, pad, bias, &mut rng);
        let x = Tensor::randn(&[2, c_in, h, h + 1], 1.0, &mut rng);
        check(&mut l, &x, 10);
    }
}

#[test]
fn linear_layer() {
    let mut rng = Rng::new(2);
    let mut l = Linear::new("fc", 7, 5, true, &mut rng);
    check(&mut l, &Tensor::randn(&[3, 7], 1.0, &mut rng), 11);
}

#[test]
fn batch_norm_layer() {
    let mut rng = Rng::new(3);
    let mut l = BatchNorm::new("bn", 3);
    l.gamma.value = Tensor::randn(&[3], 1.0, &mut rng);
    l.beta.value = Tensor::randn(&[3], 1.0, &mut rng);
    check(&mut l, &Tensor::randn(&[4, 3, 3, 2], 2.0, &mut rng), 12);
    l.frozen_stats = true;
    l.running_mean = Tensor::randn(&[3], 0.5, &mut rng);
    l.running_var = Tensor::uniform(&[3], 0.5, 2.0, &mut rng);
    check(&mut l, &Tensor::randn(&[4, 3, 3, 2], 2.0, &mut rng), 26);
    let mut l1 = BatchNorm::new("bn1d", 5);
    check(&mut l1, &Tensor::randn(&[6, 5], 1.0, &mut rng), 13);
}

#[test]
fn relu_pool_flatten_layers() {
    let mut rng = Rng::new(4);
    let x = separated(&[2, 3, 6, 5], &mut rng);
    let mut relu = Relu::new("relu");
    check(&mut relu, &x, 14);
    relu.threshold = 0.3;
    check(&mut relu, &x, 15);
    check(&mut MaxPool2d::new("mp", 2, 2, 0), &x, 16);
    check(&mut MaxPool2d::new("mp3", 3, 2, 1), &x, 17);
    check(&mut AvgPool2d::new("ap", 3, 2, 1), &x, 18);
    check(&mut GlobalAvgPool::new("gap"), &x, 19);
    check(&mut Flatten::new("flat"), &x, 20);
}

#[test]
fn residual_without_kinks() {
    let mut rng = Rng::new(6);
    let body = Sequential::new("b", vec![Box::new(Conv2d::new("c", 2, 2, 3, 1, 1, true, &mut rng)) as Box<dyn Layer>]);
    let mut r = Residual::new("r", body, None);
    r.relu.threshold = -100.0;
    check(&mut r, &Tensor::randn(&[2, 2, 3, 3], 1.0, &mut rng), 23);
    let mut s = Sequential::new(
        "s",
        vec![
            Box::new(BatchNorm::new("bn", 2)) as Box<dyn Layer>,
            Box::new(Conv2d::new("c", 2, 3, 3, 1, 1, true, &mut rng)),
        ],
    );
    check(&mut s, &Tensor::randn(&[2, 2, 3, 3], 1.0, &mut rng), 24);
}

#[test]
fn residual_blocks_and_sequential() {
    let mut rng = Rng::new(5);
    let body = |rng: &mut Rng, c_in: usize, c_out: usize, stride: usize, t: f32| {
        let mut relu = Relu::new("r1");
        relu.threshold = t;
        Sequential::new(
            "body",
            vec![
                Box::new(Conv2d::new("c1", c_in, c_out, 3, stride, 1, false, rng)) as Box<dyn Layer>,
                Box::new(BatchNorm::new("b1", c_out)),
                Box::new(relu),
                Box::new(Conv2d::new("c2", c_out, c_out, 3, 1, 1, false, rng)),
            ],
        )
    };
    let mut smooth = Residual::new("smooth", body(&mut rng, 3, 3, 1, -100.0), None);
    smooth.relu.threshold = -100.0;
    check(&mut smooth, &Tensor::randn(&[2, 3, 4, 4], 1.0, &mut rng), 25);
    let mut identity = Residual::new("res", body(&mut rng, 3, 3, 1, 0.0), None);
    check(&mut identity, &Tensor::randn(&[2, 3, 4, 4], 1.0, &mut rng), 21);
    let sc = Sequential::new(
        "sc",
        vec![
            Box::new(Conv2d::new("sc.conv", 2, 4, 1, 2, 0, false, &mut rng)) as Box<dyn Layer>,
            Box::new(BatchNorm::new("sc.bn", 4)),
        ],
    );
    let mut proj = Residual::new("res2", body(&mut rng, 2, 4, 2, 0.0), Some(sc));
    check(&mut proj, &Tensor::randn(&[3, 2, 5, 5], 1.0, &mut rng), 22);
}
