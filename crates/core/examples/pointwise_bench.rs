//! Times the pointwise kernels of a training step (BN, ReLU, padding) on vgg-small's shapes.
use std::time::Instant;
use tern_core::kernels::{act, conv_direct, norm};

fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    let mut b = f64::MAX;
    for _ in 0..reps {
        let t = Instant::now();
        f();
        b = b.min(t.elapsed().as_secs_f64() * 1e3);
    }
    b
}

fn main() {
    let shapes = [(128usize, 32usize, 1024usize), (128, 64, 256), (128, 128, 64)];
    for &(n, c, hw) in &shapes {
        let len = n * c * hw;
        let x: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let dy: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
        let mut y = vec![0.0f32; len];
        let (g, b) = (vec![1.0f32; c], vec![0.0f32; c]);
        let (mut rm, mut rv) = (vec![0.0f32; c], vec![1.0f32; c]);
        let mut saved = None;
        let fwd = best(10, || {
            saved = Some(norm::batch_norm_forward_train(&x, &g, &b, n, c, hw, 1e-5, 0.1, &mut rm, &mut rv, &mut y))
        });
        let saved = saved.unwrap();
        let (mut dg, mut db) = (vec![0.0f32; c], vec![0.0f32; c]);
        let sums = best(10, || norm::batch_norm_backward_sums(&x, &dy, &saved, None, n, c, hw, &mut dg, &mut db));
        let bin = best(10, || norm::batch_norm_backward_input(&x, &dy, &g, &saved, None, &dg, &db, n, hw, &mut y));
        let rf = best(10, || act::relu_forward(&x, 0.0, &mut y));
        let rb = best(10, || act::relu_backward(&x, &dy, 0.0, 0.0, &mut y));
        let side = (hw as f64).sqrt() as usize;
        let mut xp = conv_direct::PaddedImage::default();
        let pad = best(10, || {
            for xn in x.chunks(c * hw) {
                xp.fill(xn, c, side, side, 1);
            }
        });
        let mb = len as f64 * 4.0 / 1e6;
        println!(
            "[{n},{c},{hw}] {mb:.1} MB: bn fwd {fwd:.2} ms, bwd sums {sums:.2}, bwd input {bin:.2}, relu fwd {rf:.2}, relu bwd {rb:.2}, pad (1 thread) {pad:.2}"
        );
    }
}
