//! Benchmark: conv2d 3x3, batch 64, 64->64 channels, 32x32 (the foundation issue's yardstick).
//! Run: cargo run --release -p tern-core --example bench_conv [-- THREADS]

use std::time::Instant;
use tern_core::kernels::conv;
use tern_core::{ConvGeometry, Rng, Tensor};

fn main() {
    let threads: usize = std::env::args().nth(1).map_or(2, |s| s.parse().expect("THREADS must be a number"));
    rayon::ThreadPoolBuilder::new().num_threads(threads).build_global().unwrap();
    let g = ConvGeometry::new(64, 64, 32, 32, 64, 3, 1, 1).unwrap();
    let mut rng = Rng::new(0);
    let x = Tensor::randn(&[g.in_len()], 1.0, &mut rng);
    let w = Tensor::randn(&[g.weight_len()], 0.1, &mut rng);
    let dy = Tensor::randn(&[g.out_len()], 1.0, &mut rng);
    let mut y = vec![0.0; g.out_len()];
    let mut dx = vec![0.0; g.in_len()];
    let mut dw = vec![0.0; g.weight_len()];
    let flops = 2.0 * g.macs() as f64;
    let time = |f: &mut dyn FnMut()| {
        f();
        let reps = 10;
        let mut best = f64::MAX;
        for _ in 0..reps {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        best
    };
    let tf = time(&mut || conv::conv2d_forward(x.data(), w.data(), None, &g, &mut y));
    let ti = time(&mut || conv::conv2d_backward_input(dy.data(), w.data(), &g, &mut dx));
    let tw = time(&mut || conv::conv2d_backward_weight(x.data(), dy.data(), &g, &mut dw, None));
    let total = tf + ti + tw;
    println!("threads {threads}");
    println!("{:<22} {:>9} {:>10}", "pass", "ms", "GFLOP/s");
    for (name, t, f) in [
        ("forward", tf, flops),
        ("backward_input", ti, flops),
        ("backward_weight", tw, flops),
        ("forward+backward", total, 3.0 * flops),
    ] {
        println!("{:<22} {:>9.2} {:>10.1}", name, t * 1e3, f / t / 1e9);
    }
}
