//! `tern bench`: speed measurements on random inputs — one convolution layer (forward, input
//! gradient, weight gradient) or whole-model training steps — printed as JSON for scripts.

use clap::{Args, Subcommand};
use std::time::Instant;
use tern_core::kernels::conv;
use tern_core::{ConvGeometry, Rng, Tensor};
use tern_train::models::build;
use tern_train::{ModelConfig, Sgd, SgdConfig};

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Matrix-multiply implementation: auto (AVX-512 where available) or gemm-crate (baseline)
    #[arg(long, default_value = "auto", global = true)]
    pub gemm: String,
    #[command(subcommand)]
    pub what: BenchKind,
}

#[derive(Subcommand, Debug)]
pub enum BenchKind {
    /// One conv2d layer: forward, backward_input, backward_weight
    Conv {
        /// Images per batch
        #[arg(long, default_value_t = 64)]
        batch: usize,
        /// Input channels
        #[arg(long, default_value_t = 64)]
        c_in: usize,
        /// Output channels
        #[arg(long, default_value_t = 64)]
        c_out: usize,
        /// Image side length
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Kernel side length
        #[arg(long, default_value_t = 3)]
        k: usize,
        /// Stride
        #[arg(long, default_value_t = 1)]
        stride: usize,
        /// Zero padding
        #[arg(long, default_value_t = 1)]
        pad: usize,
        /// Timed repetitions (the best is reported)
        #[arg(long, default_value_t = 10)]
        reps: usize,
    },
    /// The training loader alone: batches of a data set's training part as `tern train` gets
    /// them (decoded, cropped and flipped, normalised to f32), images/s after the first batch
    Load {
        #[command(flatten)]
        data: crate::common::DataArgs,
        /// Images per batch
        #[arg(long, default_value_t = 256)]
        batch: usize,
        /// Timed batches (fewer if the data set has fewer)
        #[arg(long, default_value_t = 20)]
        batches: usize,
    },
    /// Whole-model SGD steps (forward, loss, backward, update) on random images
    Train {
        /// Model name (see `tern models`)
        #[arg(long, default_value = "vgg-small")]
        model: String,
        /// Images per batch
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Input channels
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Image side length
        #[arg(long, default_value_t = 32)]
        size: usize,
        /// Classes
        #[arg(long, default_value_t = 10)]
        classes: usize,
        /// Base channel width (0: the model's default)
        #[arg(long, default_value_t = 0)]
        width: usize,
        /// ImageNet-style ResNets: 3x3 stride-1 stem without max pooling
        #[arg(long)]
        small_input: bool,
        /// Ternary weights (Eq. 1, TWN threshold) in every conv and linear layer
        #[arg(long)]
        ternary: bool,
        /// With --ternary: keep the first conv layer in full precision
        #[arg(long, requires = "ternary")]
        fp_first_layer: bool,
        #[command(flatten)]
        device: crate::common::DeviceArgs,
        /// On a GPU, launch every kernel of every step instead of replaying a recorded step
        #[arg(long)]
        no_graph: bool,
        /// Untimed warm-up steps
        #[arg(long, default_value_t = 2)]
        warmup: usize,
        /// Timed steps
        #[arg(long, default_value_t = 10)]
        steps: usize,
        /// Count non-zero operands (the sparsity probe) during the timed steps
        #[arg(long)]
        probe: bool,
    },
    /// CPU inference on tern-infer's u8 engine: a zoo model with random weights (ternary with
    /// a chosen zero fraction, or FP32 quantised to s8), scales calibrated on random images;
    /// latency per batch of images run back to back
    Infer {
        /// Model name (see `tern models`)
        #[arg(long)]
        model: String,
        /// Ternary weights in every conv and linear layer but the first (the paper's SkipLayer)
        #[arg(long)]
        ternary: bool,
        /// With --ternary: the fraction of each layer's weights that are zero
        #[arg(long, default_value_t = 0.5, requires = "ternary")]
        weight_zeros: f32,
        /// With --ternary: hold this fraction of each ternary conv's 16x4 weight units at zero
        /// (block sparsity, as `tern train --block-sparsity` leaves them); each conv then runs
        /// the kernel that measures fastest on the random images
        #[arg(long, requires = "ternary")]
        block_sparsity: Option<f64>,
        /// Image side length
        #[arg(long, default_value_t = 224)]
        size: usize,
        /// Input channels
        #[arg(long, default_value_t = 3)]
        channels: usize,
        /// Classes
        #[arg(long, default_value_t = 1000)]
        classes: usize,
        /// Images per timed call (several: each thread runs its share)
        #[arg(long, default_value_t = 1)]
        batch: usize,
        /// Timed calls (after two warm-up calls)
        #[arg(long, default_value_t = 30)]
        reps: usize,
        /// Print the JSON object only
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: BenchArgs) -> anyhow::Result<()> {
    use tern_core::kernels::gemm::{set_impl, GemmImpl};
    match a.gemm.as_str() {
        "auto" => set_impl(GemmImpl::Auto),
        "gemm-crate" => set_impl(GemmImpl::GemmCrate),
        other => anyhow::bail!("invalid value for --gemm: `{other}`: expected auto or gemm-crate"),
    }
    match a.what {
        BenchKind::Conv { batch, c_in, c_out, size, k, stride, pad, reps } => {
            let g = ConvGeometry::new(batch, c_in, size, size, c_out, k, stride, pad)?;
            let mut rng = Rng::new(0);
            let x = Tensor::randn(&[g.in_len()], 1.0, &mut rng);
            let w = Tensor::randn(&[g.weight_len()], 0.1, &mut rng);
            let dy = Tensor::randn(&[g.out_len()], 1.0, &mut rng);
            let (mut y, mut dx, mut dw) = (vec![0.0; g.out_len()], vec![0.0; g.in_len()], vec![0.0; g.weight_len()]);
            let best = |f: &mut dyn FnMut()| {
                f();
                (0..reps.max(1))
                    .map(|_| {
                        let t = Instant::now();
                        f();
                        t.elapsed().as_secs_f64()
                    })
                    .fold(f64::MAX, f64::min)
            };
            let tf = best(&mut || conv::conv2d_forward(x.data(), w.data(), None, &g, &mut y));
            let ti = best(&mut || conv::conv2d_backward_input(dy.data(), w.data(), &g, &mut dx));
            let tw = best(&mut || conv::conv2d_backward_weight(x.data(), dy.data(), &g, &mut dw, None));
            let flop = 2.0 * g.macs() as f64;
            let total = tf + ti + tw;
            println!(
                "{}",
                serde_json::json!({
                    "geometry": g, "threads": rayon::current_num_threads(), "gemm": a.gemm,
                    "forward_ms": tf * 1e3, "backward_input_ms": ti * 1e3, "backward_weight_ms": tw * 1e3,
                    "forward_backward_ms": total * 1e3,
                    "forward_gflops": flop / tf / 1e9, "forward_backward_gflops": 3.0 * flop / total / 1e9,
                })
            );
        }
        BenchKind::Load { data, batch, batches } => {
            let t = Instant::now();
            let split = data.load()?;
            let load_s = t.elapsed().as_secs_f64();
            let ds = std::sync::Arc::new(split.train);
            let (mean, std) = ds.channel_stats()?;
            let side = ds.shape[1];
            let cfg = tern_data::LoaderConfig {
                batch_size: batch.max(1),
                shuffle: true,
                seed: 0,
                augment: tern_data::Augment { crop_pad: side / 8, hflip: true },
                normalize: tern_data::Normalize { mean, std },
                input_shape: ds.shape,
                prefetch: 2,
            };
            let mut it = tern_data::BatchIter::new(ds.clone(), cfg, 0, true);
            it.next().transpose()?; // the first batch also pays for starting the threads
            let t = Instant::now();
            let mut images = 0;
            for b in it.take(batches.max(1)) {
                images += b?.labels.len();
            }
            let secs = t.elapsed().as_secs_f64();
            if images == 0 {
                anyhow::bail!("the data set has one batch or less: nothing was timed (use a smaller --batch)");
            }
            println!(
                "{}",
                serde_json::json!({
                    "data": data.data, "image_size": data.image_size, "streamed": ds.bytes().is_none(),
                    "batch": batch, "images": images, "threads": rayon::current_num_threads(),
                    "load_s": load_s, "images_per_s": images as f64 / secs,
                })
            );
        }
        BenchKind::Infer {
            model,
            ternary,
            weight_zeros,
            block_sparsity,
            size,
            channels,
            classes,
            batch,
            reps,
            json,
        } => {
            let zeros = ternary.then_some(weight_zeros);
            bench_infer(&model, zeros, block_sparsity, [channels, size, size], classes, batch, reps, json)?;
        }
        BenchKind::Train {
            model,
            batch,
            channels,
            size,
            classes,
            width,
            small_input,
            ternary,
            fp_first_layer,
            device,
            no_graph,
            warmup,
            steps,
            probe,
        } => {
            let cfg =
                ModelConfig { name: model, in_shape: [channels, size, size], classes, width, small_input, spec: None };
            let (be, info) = device.backend()?;
            let be = be.as_ref();
            let mut rng = Rng::new(0);
            let mut m = build(&cfg, &mut rng)?;
            if ternary {
                m.set_ternary(Some(tern_core::quant::TernaryConfig::default()), fp_first_layer, false);
            }
            m.to_backend(be);
            let mut sgd = Sgd::new(SgdConfig { momentum: 0.9, nesterov: false, weight_decay: 5e-4 });
            // the data already on the device, as a loader that uploads ahead would leave it
            let x = be.upload(&Tensor::randn(&[batch, channels, size, size], 1.0, &mut rng));
            let labels: Vec<u32> = (0..batch).map(|i| (i % classes) as u32).collect();
            let prof = std::cell::RefCell::new(tern_train::profile::Profiler::default());
            // the trainer's step: recorded and replayed where the device can (--no-graph: not)
            let mut stepper = tern_train::Stepper::new(!no_graph);
            let mut last = None;
            let mut step = || {
                let p = probe.then_some(&prof);
                last = Some(stepper.step(be, &mut m, &mut sgd, &x, &labels, 0.01, false, p));
            };
            for _ in 0..warmup {
                step();
            }
            be.synchronize();
            let t = Instant::now();
            for _ in 0..steps.max(1) {
                step();
            }
            be.synchronize();
            let secs = t.elapsed().as_secs_f64() / steps.max(1) as f64;
            let loss = last.map_or(f32::NAN, |o| o.loss);
            if !loss.is_finite() {
                anyhow::bail!("the benchmark's loss is {loss}: the steps diverged, the timing would be meaningless");
            }
            println!(
                "{}",
                serde_json::json!({
                    "model": cfg, "batch": batch, "threads": rayon::current_num_threads(), "probe": probe, "gemm": a.gemm,
                    "ternary": ternary, "fp_first_layer": fp_first_layer, "device": info, "graph": !no_graph,
                    "device_memory_bytes": be.held_bytes(),
                    "step_ms": secs * 1e3, "images_per_s": batch as f64 / secs, "loss": loss,
                })
            );
        }
    }
    Ok(())
}

/// `tern bench infer`: plan and quantise a freshly built zoo model, then time its u8 engine.
#[allow(clippy::too_many_arguments)]
fn bench_infer(
    name: &str,
    weight_zeros: Option<f32>,
    block_sparsity: Option<f64>,
    in_shape: [usize; 3],
    classes: usize,
    batch: usize,
    reps: usize,
    json_only: bool,
) -> anyhow::Result<()> {
    if batch == 0 || reps == 0 {
        anyhow::bail!("invalid value for --batch/--reps: must be at least 1");
    }
    if let Some(z) = weight_zeros {
        if !(0.0..1.0).contains(&z) {
            anyhow::bail!("invalid value for --weight-zeros: {z}: expected a fraction in [0, 1)");
        }
    }
    let cfg = ModelConfig { name: name.into(), in_shape, classes, width: 0, small_input: false, spec: None };
    let mut rng = Rng::new(0);
    let mut model = build(&cfg, &mut rng)?;
    if let Some(z) = weight_zeros {
        let t = tern_core::quant::TernaryConfig::parse(&format!("zeros:{z}"), "layer", None)?;
        model.set_ternary(Some(t), true, false);
    }
    if let Some(f) = block_sparsity {
        if !(0.0..1.0).contains(&f) {
            anyhow::bail!("invalid value for --block-sparsity: {f}: expected a fraction in [0, 1)");
        }
        model.set_unit_masks(&tern_core::CpuBackend, f);
    }
    let float = tern_infer::plan::FloatPlan::of(&mut model)?;
    let per: usize = in_shape.iter().product();
    // u8 scales from random N(0, 1) images (the normalised input's distribution)
    let calib_n = 8;
    let calib = Tensor::randn(&[calib_n * per], 1.0, &mut rng);
    let mut plan = tern_infer::plan::Plan::quantise(&float, calib.data(), calib_n)?;
    let images = Tensor::randn(&[batch * per], 1.0, &mut rng);
    let mut ws = tern_infer::plan::Workspace::default();
    // the fastest kernel per convolution, timed on two of the images
    let tuned = plan.tune(&images.data().chunks(per).take(2).collect::<Vec<_>>(), &mut ws);
    let skipping = tuned.iter().filter(|k| k.kernel != tern_infer::conv::ConvKernel::Dense).count();
    let xs: Vec<&[f32]> = images.data().chunks(per).collect();
    let mut wss = Vec::new();
    let ms = crate::cmd_infer::timed_ms(reps, |_| {
        std::hint::black_box(plan.run_batch(&xs, &mut wss));
    });
    let q = |p: f64| crate::cmd_infer::quantile(&ms, p);
    let (median, p90) = (q(0.5), q(0.9));
    let out = serde_json::json!({
        "model": name, "ternary": weight_zeros.is_some(), "weight_zeros": weight_zeros,
        "block_sparsity": block_sparsity, "skipping_convs": skipping, "convs": tuned.len(),
        "input": in_shape, "batch": batch, "reps": reps, "threads": rayon::current_num_threads(),
        "kernel": tern_infer::conv::kernel_name(),
        "ms_median": median, "ms_p90": p90, "ms_min": ms[0], "images_per_s": batch as f64 * 1e3 / median,
    });
    if !json_only {
        println!(
            "{name} {:?}{}: {:.3} ms median, {:.3} ms p90 per batch of {batch} ({:.1} images/s, {} threads)",
            in_shape,
            weight_zeros.map_or(String::new(), |z| format!(" ternary ({:.0} % zero weights)", 100.0 * z)),
            median,
            p90,
            batch as f64 * 1e3 / median,
            rayon::current_num_threads()
        );
    }
    println!("{out}");
    Ok(())
}
