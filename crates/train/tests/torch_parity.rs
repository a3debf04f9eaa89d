//! Layers against PyTorch on fixed inputs: the fixture `fixtures/torch_layers.json` was made by
//! `fixtures/make_torch_fixtures.py` (PyTorch 2.x CPU); these tests need no Python.

use serde_json::Value;
use tern_core::{CpuBackend, Tensor};
use tern_train::layers::*;
use tern_train::{Ctx, Layer};

fn fixture() -> Vec<Value> {
    let text = include_str!("fixtures/torch_layers.json");
    let v: Value = serde_json::from_str(text).unwrap();
    v["cases"].as_array().unwrap().clone()
}

fn tensor(c: &Value, name: &str) -> Tensor {
    let shape: Vec<usize> =
        c[format!("{name}_shape")].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
    let data: Vec<f32> = c[name].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
    Tensor::from_vec(&shape, data)
}

fn assert_close(got: &Tensor, want: &Tensor, tol: f32, what: &str) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    for (i, (a, b)) in got.data().iter().zip(want.data()).enumerate() {
        assert!((a - b).abs() <= tol * (1.0 + b.abs()), "{what}[{i}]: tern {a} vs torch {b}");
    }
}

/// Runs forward (train mode) and backward; returns (y, dx).
fn run(layer: &mut dyn Layer, c: &Value, train: bool) -> (Tensor, Tensor) {
    let be = CpuBackend;
    let ctx = Ctx::new(&be, train);
    let y = layer.forward(&ctx, &tensor(c, "x"));
    let dx = layer.backward(&ctx, &tensor(c, "dy"), true).unwrap();
    (y, dx)
}

#[test]
fn conv2d_matches_pytorch() {
    let mut n = 0;
    for c in fixture().iter().filter(|c| c["op"] == "conv2d") {
        let p = &c["params"];
        let w = tensor(c, "w");
        let (k, stride, pad) = (
            p["k"].as_u64().unwrap() as usize,
            p["stride"].as_u64().unwrap() as usize,
            p["pad"].as_u64().unwrap() as usize,
        );
        let bias = p["bias"].as_bool().unwrap();
        let mut l = Conv2d::new("conv", w.dim(1), w.dim(0), k, stride, pad, bias, &mut tern_core::Rng::new(0));
        l.weight.value = w;
        if bias {
            l.bias.as_mut().unwrap().value = tensor(c, "b");
        }
        let (y, dx) = run(&mut l, c, true);
        let what = format!("conv k{k} s{stride} p{pad}");
        assert_close(&y, &tensor(c, "y"), 1e-4, &format!("{what} y"));
        assert_close(&dx, &tensor(c, "dx"), 1e-4, &format!("{what} dx"));
        assert_close(&l.weight.grad, &tensor(c, "dw"), 1e-4, &format!("{what} dw"));
        if bias {
            assert_close(&l.bias.as_ref().unwrap().grad, &tensor(c, "db"), 1e-4, &format!("{what} db"));
        }
        n += 1;
    }
    assert_eq!(n, 4);
}

#[test]
fn batch_norm_matches_pytorch_in_train_and_eval_mode() {
    for c in fixture().iter().filter(|c| c["op"] == "batch_norm") {
        let train = c["params"]["train"].as_bool().unwrap();
        let mut l = BatchNorm::new("bn", 3);
        l.gamma.value = tensor(c, "gamma");
        l.beta.value = tensor(c, "beta");
        l.running_mean = tensor(c, "running_mean_in");
        l.running_var = tensor(c, "running_var_in");
        // Eval mode with gradients = statistics held constant.
        l.frozen_stats = !train;
        let (y, dx) = run(&mut l, c, true);
        let what = if train { "bn train" } else { "bn eval" };
        assert_close(&y, &tensor(c, "y"), 1e-4, &format!("{what} y"));
        assert_close(&dx, &tensor(c, "dx"), 1e-4, &format!("{what} dx"));
        assert_close(&l.gamma.grad, &tensor(c, "dgamma"), 1e-4, &format!("{what} dgamma"));
        assert_close(&l.beta.grad, &tensor(c, "dbeta"), 1e-4, &format!("{what} dbeta"));
        assert_close(&l.running_mean, &tensor(c, "running_mean_out"), 1e-5, &format!("{what} running mean"));
        assert_close(&l.running_var, &tensor(c, "running_var_out"), 1e-5, &format!("{what} running var"));
        if !train {
            // and the plain inference path agrees too
            let be = CpuBackend;
            let y2 = l.forward(&Ctx::new(&be, false), &tensor(c, "x"));
            assert_close(&y2, &tensor(c, "y"), 1e-4, "bn inference y");
        }
    }
}

#[test]
fn linear_matches_pytorch() {
    let c = fixture().into_iter().find(|c| c["op"] == "linear").unwrap();
    let w = tensor(&c, "w");
    let mut l = Linear::new("fc", w.dim(1), w.dim(0), true, &mut tern_core::Rng::new(0));
    l.weight.value = w;
    l.bias.as_mut().unwrap().value = tensor(&c, "b");
    let (y, dx) = run(&mut l, &c, true);
    assert_close(&y, &tensor(&c, "y"), 1e-5, "linear y");
    assert_close(&dx, &tensor(&c, "dx"), 1e-5, "linear dx");
    assert_close(&l.weight.grad, &tensor(&c, "dw"), 1e-5, "linear dw");
    assert_close(&l.bias.as_ref().unwrap().grad, &tensor(&c, "db"), 1e-5, "linear db");
}

#[test]
fn pooling_matches_pytorch() {
    for c in fixture().iter().filter(|c| c["op"] == "pool") {
        let p = &c["params"];
        let (k, s, pad) = (
            p["k"].as_u64().unwrap() as usize,
            p["stride"].as_u64().unwrap() as usize,
            p["pad"].as_u64().unwrap() as usize,
        );
        let kind = p["kind"].as_str().unwrap();
        let mut l: Box<dyn Layer> = match kind {
            "max" => Box::new(MaxPool2d::new("mp", k, s, pad)),
            "avg" => Box::new(AvgPool2d::new("ap", k, s, pad)),
            _ => Box::new(GlobalAvgPool::new("gap")),
        };
        let (y, dx) = run(l.as_mut(), c, true);
        assert_close(&y, &tensor(c, "y"), 1e-5, &format!("{kind} pool y"));
        assert_close(&dx, &tensor(c, "dx"), 1e-5, &format!("{kind} pool dx"));
    }
}
