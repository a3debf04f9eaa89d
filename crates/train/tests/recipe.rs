//! The paper's recipe: straight-through ternary layers, the FP warm-up switch, GradUpdate's
//! skipped work, L1 on activations, and --init-from.

use tern_core::quant::{Scale, TernaryConfig, Threshold};
use tern_core::{CpuBackend, Rng, Tensor};
use tern_data::{synthetic, Augment};
use tern_train::layers::{Conv2d, Relu};
use tern_train::trainer::{Silent, Trainer, CHECKPOINT_FILE};
use tern_train::{Ctx, Layer, ModelConfig, Recipe, ScheduleKind, SgdConfig, TrainConfig};

fn model(name: &str) -> ModelConfig {
    ModelConfig { name: name.into(), in_shape: [1, 16, 16], classes: 4, width: 8, small_input: false, spec: None }
}

fn config(epochs: usize, recipe: Recipe) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 16,
        lr: 0.05,
        sgd: SgdConfig { momentum: 0.9, nesterov: false, weight_decay: 0.0 },
        schedule: ScheduleKind::Constant,
        seed: 1,
        augment: Augment::default(),
        train_limit: None,
        test_limit: None,
        recipe,
        init_from: None,
        init_adapt: false,
        profile_every: 0,
    }
}

fn ternary() -> Option<TernaryConfig> {
    Some(TernaryConfig::default())
}

#[test]
fn ternary_conv_uses_ternary_weights_and_passes_gradients_straight_through() {
    let be = CpuBackend;
    let ctx = Ctx::new(&be, true);
    let mut rng = Rng::new(3);
    let x = Tensor::randn(&[2, 3, 5, 5], 1.0, &mut rng);
    let dy = Tensor::randn(&[2, 4, 5, 5], 1.0, &mut rng);
    let mut t = Conv2d::new("t", 3, 4, 3, 1, 1, false, &mut rng);
    let cfg = TernaryConfig { threshold: Threshold::MeanAbs(0.7), scale: Scale::None, clip: Some(0.3) };
    t.ternary.config = Some(cfg);
    let y = t.forward(&ctx, &x);
    // The same layer in full precision with the ternary values as its weights.
    let mut q = vec![0.0; t.weight.value.len()];
    tern_core::quant::ternarize(t.weight.value.data(), 4, &cfg, &mut q);
    assert!(q.iter().all(|v| [-1.0, 0.0, 1.0].contains(v)));
    let mut f = Conv2d::new("f", 3, 4, 3, 1, 1, false, &mut rng);
    f.weight.value = Tensor::from_vec(t.weight.value.shape(), q);
    assert_eq!(y, f.forward(&ctx, &x));
    let dx_t = t.backward(&ctx, &dy, true).unwrap();
    let dx_f = f.backward(&ctx, &dy, true).unwrap();
    assert_eq!(dx_t, dx_f, "input gradient flows through the ternary weights");
    for ((gt, gf), w) in t.weight.grad.data().iter().zip(f.weight.grad.data()).zip(t.weight.value.data()) {
        let want = if w.abs() > 0.3 { 0.0 } else { *gf };
        assert_eq!(*gt, want, "straight-through gradient, clipped where |w| > 0.3");
    }
}

#[test]
fn relu_l1_penalty_gradient_matches_finite_differences() {
    let be = CpuBackend;
    let ctx = Ctx::new(&be, true);
    let mut r = Relu::new("r");
    r.l1 = 0.3;
    r.threshold = 0.01;
    let n = 4;
    let x = Tensor::from_vec(&[n, 5], (0..20).map(|i| (i as f32 - 9.5) * 0.1).collect());
    let up = Tensor::from_vec(&[n, 5], (0..20).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.1).collect());
    r.forward(&ctx, &x);
    let dx = r.backward(&ctx, &up, true).unwrap();
    // L = Σ y·up + λ·Σ|y|/n
    let loss = |x: &Tensor| -> f64 {
        let y: Vec<f32> = x.data().iter().map(|&v| if v > 0.01 { v } else { 0.0 }).collect();
        y.iter().zip(up.data()).map(|(a, b)| (a * b) as f64).sum::<f64>()
            + 0.3 * y.iter().map(|v| v.abs() as f64).sum::<f64>() / n as f64
    };
    for i in 0..20 {
        let (mut p, mut m) = (x.clone(), x.clone());
        p.data_mut()[i] += 1e-3;
        m.data_mut()[i] -= 1e-3;
        let fd = (loss(&p) - loss(&m)) / 2e-3;
        assert!((fd - dx.data()[i] as f64).abs() < 1e-3, "dx[{i}]: {fd} vs {}", dx.data()[i]);
    }
}

#[test]
fn fp_warmup_switches_to_ternary_at_the_named_epoch_and_skip_layer_keeps_fp() {
    let data = synthetic::split(64, 16, [1, 16, 16], 4, 0.3, 1);
    let dir = tempfile::tempdir().unwrap();
    let recipe = Recipe { ternary: ternary(), fp_warmup_epochs: 2, fp_first_layer: true, ..Recipe::default() };
    let mut t = Trainer::new(&model("vgg-small"), &data, config(3, recipe), dir.path()).unwrap();
    t.run(&mut Silent).unwrap();
    let flags: Vec<bool> = t.history.iter().map(|m| m.ternary).collect();
    assert_eq!(flags, vec![false, false, true]);
    assert!(t.history[1].weight_zero_fraction.is_none());
    let zf = t.history[2].weight_zero_fraction.unwrap();
    assert!((0.2..0.7).contains(&zf), "ternary zero fraction {zf}");
    let rows = t.model.summary();
    let mm: Vec<_> = rows.iter().filter(|r| r.kind == "conv" || r.kind == "linear").collect();
    assert!(!mm[0].ternary && mm[1..].iter().all(|r| r.ternary), "first layer stays FP (SkipLayer)");
    let totals = tern_train::summary::totals(&rows);
    assert!(totals.bytes_packed * 5 < totals.bytes_fp32, "{totals:?}");
    assert!(totals.ternary_macs > totals.macs / 2);

    // A reloaded checkpoint evaluates in the same (ternary) state.
    let (mut loaded, _) = tern_train::checkpoint::load_model(&dir.path().join(CHECKPOINT_FILE)).unwrap();
    let x = Tensor::randn(&[3, 1, 16, 16], 1.0, &mut Rng::new(5));
    let be = CpuBackend;
    let eval = Ctx::new(&be, false);
    assert_eq!(loaded.forward(&eval, &x), t.model.forward(&eval, &x));
}

#[test]
fn skip_correct_leaves_weights_untouched_on_all_correct_batches_and_counts_them() {
    // An easy data set, learnt to 100% first.
    let data = synthetic::split(64, 16, [1, 16, 16], 4, 0.0, 2);
    let first = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model("lenet5"), &data, config(12, Recipe::default()), first.path()).unwrap();
    t.run(&mut Silent).unwrap();
    assert_eq!(
        t.history.last().unwrap().train_acc,
        1.0,
        "{:?}",
        t.history.iter().map(|m| m.train_acc).collect::<Vec<_>>()
    );

    let mut cfg = config(1, Recipe { skip_correct: true, ..Recipe::default() });
    cfg.init_from = Some(first.path().join(CHECKPOINT_FILE));
    cfg.sgd.momentum = 0.0;
    let second = tempfile::tempdir().unwrap();
    let mut s = Trainer::new(&model("lenet5"), &data, cfg, second.path()).unwrap();
    let before = tern_train::checkpoint::named_tensors(&mut s.model);
    s.run(&mut Silent).unwrap();
    let m = s.history.last().unwrap();
    assert_eq!((m.skipped_batches, m.skipped_samples), (4, 64));
    assert_eq!(before, tern_train::checkpoint::named_tensors(&mut s.model), "weights untouched (no weight decay)");
}

#[test]
fn init_from_refuses_a_checkpoint_of_another_model() {
    let data = synthetic::split(32, 16, [1, 16, 16], 4, 0.3, 3);
    let dir = tempfile::tempdir().unwrap();
    Trainer::new(&model("lenet5"), &data, config(1, Recipe::default()), dir.path()).unwrap().run(&mut Silent).unwrap();
    let mut cfg = config(1, Recipe { ternary: ternary(), ..Recipe::default() });
    cfg.init_from = Some(dir.path().join(CHECKPOINT_FILE));
    let other = tempfile::tempdir().unwrap();
    let e = Trainer::new(&model("vgg-small"), &data, cfg, other.path()).err().unwrap().to_string();
    assert!(e.contains("holds a `lenet5` model, expected `vgg-small`"), "{e}");
}

#[test]
fn init_from_keeps_the_input_normalisation_of_the_checkpoint() {
    let a = synthetic::split(32, 16, [1, 16, 16], 4, 0.1, 5);
    let b = synthetic::split(32, 16, [1, 16, 16], 4, 0.9, 6);
    let dir = tempfile::tempdir().unwrap();
    let first = Trainer::new(&model("lenet5"), &a, config(1, Recipe::default()), dir.path()).unwrap();
    let want = first.normalize.clone();
    let mut first = first;
    first.run(&mut Silent).unwrap();
    let mut cfg = config(1, Recipe { ternary: ternary(), ..Recipe::default() });
    cfg.init_from = Some(dir.path().join(CHECKPOINT_FILE));
    let other = tempfile::tempdir().unwrap();
    let t = Trainer::new(&model("lenet5"), &b, cfg, other.path()).unwrap();
    assert_eq!(t.normalize, want);
    assert_ne!(b.train.channel_stats().unwrap().0, want.mean, "the two data sets differ");
}
