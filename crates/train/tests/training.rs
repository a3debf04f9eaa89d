//! End-to-end training: overfitting, exact resume, NaN handling, checkpoint mismatches.

use tern_core::Error;
use tern_data::{synthetic, Augment};
use tern_train::checkpoint;
use tern_train::trainer::{Silent, Trainer, CHECKPOINT_FILE};
use tern_train::Layer;
use tern_train::{ModelConfig, Recipe, ScheduleKind, SgdConfig, TrainConfig};

fn model(name: &str, width: usize) -> ModelConfig {
    ModelConfig { name: name.into(), in_shape: [1, 16, 16], classes: 10, width, small_input: false, spec: None }
}

fn config(epochs: usize, lr: f32) -> TrainConfig {
    TrainConfig {
        epochs,
        batch_size: 32,
        lr,
        sgd: SgdConfig { momentum: 0.9, nesterov: false, weight_decay: 5e-4 },
        schedule: ScheduleKind::Constant,
        seed: 7,
        augment: Augment::default(),
        train_limit: None,
        test_limit: None,
        recipe: Recipe::default(),
        init_from: None,
        init_adapt: false,
        profile_every: 0,
    }
}

#[test]
fn overfits_a_few_hundred_samples() {
    // Heavy noise: the test set is hard, the 256 training images must be memorised.
    let data = synthetic::split(256, 64, [1, 16, 16], 10, 0.8, 1);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model("vgg-small", 8), &data, config(25, 0.05), dir.path()).unwrap();
    t.run(&mut Silent).unwrap();
    let last = t.history.last().unwrap();
    assert!(last.train_acc >= 0.98, "train accuracy {:?}", t.history.iter().map(|m| m.train_acc).collect::<Vec<_>>());
    assert!(dir.path().join("metrics.json").is_file() && dir.path().join(CHECKPOINT_FILE).is_file());
    let metrics: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["epochs"].as_array().unwrap().len(), 25);
    for key in ["epoch", "train_loss", "train_acc", "test_acc", "lr", "seconds", "images_per_s"] {
        assert!(metrics["epochs"][0].get(key).is_some(), "metrics.json lacks {key}");
    }
    assert!(metrics["test_accuracy"].as_f64().is_some());
}

#[test]
fn resumed_run_ends_with_the_same_weights() {
    let data = synthetic::split(96, 32, [1, 16, 16], 10, 0.5, 2);
    let mut cfg = config(3, 0.02);
    cfg.augment = Augment { crop_pad: 2, hflip: true };
    cfg.schedule = ScheduleKind::Cosine;
    let m = model("resnet20", 4);

    let a = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(&m, &data, cfg.clone(), a.path()).unwrap();
    full.run(&mut Silent).unwrap();

    let b = tempfile::tempdir().unwrap();
    let mut part = Trainer::new(&m, &data, cfg.clone(), b.path()).unwrap();
    part.run_until(1, &mut Silent).unwrap(); // "killed" after epoch 1
    drop(part);
    let mut resumed = Trainer::resume(&m, &data, cfg.clone(), b.path()).unwrap();
    assert_eq!(resumed.next_epoch, 1);
    resumed.run(&mut Silent).unwrap();

    let wa = checkpoint::named_tensors(&mut full.model);
    let wb = checkpoint::named_tensors(&mut resumed.model);
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert_eq!(ta.data(), tb.data(), "tensor {na} differs after resume");
    }
    assert_eq!(full.sgd.velocity, resumed.sgd.velocity);

    // Resuming with other flags is refused, naming the difference.
    let e = Trainer::resume(&m, &data, TrainConfig { lr: 0.5, ..cfg }, b.path()).err().unwrap().to_string();
    assert!(e.contains("same flags"), "{e}");
}

#[test]
fn a_finished_pi_run_reloaded_reports_its_ternary_model() {
    let data = synthetic::split(64, 16, [1, 16, 16], 10, 0.5, 5);
    let mut cfg = config(2, 0.02);
    cfg.recipe = Recipe { ternary: Some(Default::default()), fp_warmup_epochs: 1, ..Recipe::default() };
    let m = model("lenet5", 0);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&m, &data, cfg.clone(), dir.path()).unwrap();
    t.run(&mut Silent).unwrap();
    let trained = tern_train::summary::totals(&t.model.summary());
    assert!(trained.ternary_macs > 0);
    let reloaded = Trainer::resume(&m, &data, cfg, dir.path()).unwrap();
    assert_eq!(reloaded.next_epoch, 2);
    let again = tern_train::summary::totals(&reloaded.model.summary());
    assert_eq!((again.ternary_macs, again.bytes_packed), (trained.ternary_macs, trained.bytes_packed));
}

#[test]
fn non_finite_loss_stops_with_step_and_layer() {
    let data = synthetic::split(64, 16, [1, 16, 16], 10, 0.5, 3);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model("lenet5", 0), &data, config(3, 1e30), dir.path()).unwrap();
    match t.run(&mut Silent) {
        Err(Error::NonFinite { step, what }) => {
            assert!(step >= 1);
            assert!(what.contains("first layer with non-finite output: conv"), "{what}");
        }
        other => panic!("expected a NonFinite error, got {:?}", other.map(|_| ())),
    }
}

#[test]
fn checkpoint_of_another_model_or_truncated_is_refused() {
    let data = synthetic::split(32, 16, [1, 16, 16], 10, 0.5, 4);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model("lenet5", 0), &data, config(1, 0.01), dir.path()).unwrap();
    t.run(&mut Silent).unwrap();
    let path = dir.path().join(CHECKPOINT_FILE);
    let c = tern_core::checkpoint::load(&path).unwrap();
    let mut other = tern_train::models::build(&model("vgg-small", 8), &mut tern_core::Rng::new(0)).unwrap();
    let e = checkpoint::load_into(&path, &c, &mut other).unwrap_err().to_string();
    assert!(e.contains("holds a `lenet5` model, expected `vgg-small`"), "{e}");
    let (mut loaded, _) = checkpoint::load_model(&path).unwrap();
    assert_eq!(checkpoint::named_tensors(&mut loaded), checkpoint::named_tensors(&mut t.model));

    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = checkpoint::load_model(&path).err().unwrap().to_string();
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn divergence_on_an_epochs_last_step_never_scores_or_overwrites_the_good_checkpoint() {
    // One step per epoch: the update of epoch 2 blows the weights up while its loss, taken
    // before the update, is still finite.
    let data = synthetic::split(32, 16, [1, 16, 16], 10, 0.5, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut t = Trainer::new(&model("lenet5", 0), &data, config(2, 0.01), dir.path()).unwrap();
    t.run_until(1, &mut Silent).unwrap();
    let path = dir.path().join(CHECKPOINT_FILE);
    let good = std::fs::read(&path).unwrap();
    t.schedule.base_lr = f32::INFINITY;
    t.schedule.plateau_lr = f32::INFINITY;
    match t.run(&mut Silent) {
        Err(Error::NonFinite { what, .. }) => {
            assert!(what.contains("is not finite after the last update of epoch 2"), "{what}");
            assert!(what.contains("last good checkpoint (epoch 1)"), "{what}");
        }
        other => panic!("expected a NonFinite error, got {:?}", other.map(|_| ())),
    }
    assert_eq!(std::fs::read(&path).unwrap(), good, "the good checkpoint was overwritten");
    assert_eq!(t.history.len(), 1, "a diverged epoch was recorded");
}

#[test]
fn weights_do_not_depend_on_the_thread_count() {
    // vgg-small at width 16 takes the Winograd and direct kernels, resnet20 at width 4 the
    // im2col + GEMM path; every reduction must split the same way on 1 and 3 threads.
    let data = synthetic::split(48, 8, [1, 16, 16], 10, 0.5, 6);
    for (name, width) in [("vgg-small", 16), ("resnet20", 4)] {
        let train_on = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
            let dir = tempfile::tempdir().unwrap();
            pool.install(|| {
                let mut cfg = config(1, 0.05);
                cfg.batch_size = 24;
                let mut t = Trainer::new(&model(name, width), &data, cfg, dir.path()).unwrap();
                t.run(&mut Silent).unwrap();
                checkpoint::named_tensors(&mut t.model)
            })
        };
        let (one, three) = (train_on(1), train_on(3));
        for ((n1, t1), (_, t3)) in one.iter().zip(&three) {
            assert_eq!(t1.data(), t3.data(), "{name}: {n1} differs between 1 and 3 threads");
        }
    }
}

#[test]
fn block_sparse_training_holds_whole_units_at_zero_and_resumes_exactly() {
    let data = synthetic::split(96, 32, [1, 16, 16], 10, 0.5, 6);
    let mut cfg = config(4, 0.02);
    cfg.recipe =
        Recipe { ternary: Some(Default::default()), fp_first_layer: true, block_sparsity: 0.5, ..Recipe::default() };
    // the ramp: half the 4 ternary epochs, cubic, then frozen
    assert_eq!(cfg.recipe.block_sparsity_at(0, 4), Some(0.5 * (1.0 - 0.125)));
    assert_eq!(cfg.recipe.block_sparsity_at(1, 4), Some(0.5));
    assert_eq!(cfg.recipe.block_sparsity_at(2, 4), None);
    let m = model("resnet20", 16);

    let a = tempfile::tempdir().unwrap();
    let mut full = Trainer::new(&m, &data, cfg.clone(), a.path()).unwrap();
    full.run(&mut Silent).unwrap();
    // every ternary conv: half of its 16x4 units all zero in the weights the forward uses
    let mut convs = 0;
    full.model.net.visit_leaves(&mut |l| {
        if let Some(c) = l.as_any_mut().downcast_mut::<tern_train::layers::Conv2d>() {
            if c.ternary.config.is_some() {
                let q = c.ternary.host_weight(&c.weight.value, c.c_out);
                let z = tern_core::quant::zero_unit_fraction(&q, c.c_out, c.c_in, c.k * c.k);
                assert!((0.5..0.6).contains(&z), "{}: {z} of its units zero", c.name());
                convs += 1;
            }
        }
    });
    assert!(convs > 10);

    // killed after the first (ramping) epoch, resumed: the same weights and masks
    let b = tempfile::tempdir().unwrap();
    let mut part = Trainer::new(&m, &data, cfg.clone(), b.path()).unwrap();
    part.run_until(1, &mut Silent).unwrap();
    drop(part);
    let mut resumed = Trainer::resume(&m, &data, cfg.clone(), b.path()).unwrap();
    resumed.run(&mut Silent).unwrap();
    let wa = checkpoint::named_tensors(&mut full.model);
    let wb = checkpoint::named_tensors(&mut resumed.model);
    assert!(wa.iter().any(|(n, _)| n.ends_with(".unit_mask")), "the masks are checkpoint state");
    assert_eq!(wa.len(), wb.len());
    for ((na, ta), (nb, tb)) in wa.iter().zip(&wb) {
        assert_eq!(na, nb);
        assert_eq!(ta.data(), tb.data(), "tensor {na} differs after resume");
    }
    // refused without ternary weights
    let bad = Recipe { block_sparsity: 0.5, ..Recipe::default() };
    assert!(bad.validate(4).unwrap_err().to_string().contains("--block-sparsity"));
}
