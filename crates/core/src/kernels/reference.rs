//! Plain, obviously-correct twins of the fast kernels: direct loops, f64 accumulation.
//! They define what the fast kernels must compute and are only used by tests and checks.

use crate::geometry::{ConvGeometry, PoolGeometry};

/// Input coordinate of output position `o` and tap `t`, or None inside the padding.
fn tap(o: usize, t: usize, stride: usize, pad: usize, size: usize) -> Option<usize> {
    let i = (o * stride + t) as isize - pad as isize;
    (i >= 0 && i < size as isize).then_some(i as usize)
}

pub fn conv2d_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, g: &ConvGeometry, y: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    for n in 0..g.n {
        for k in 0..g.c_out {
            for p in 0..ho {
                for q in 0..wo {
                    let mut s = bias.map_or(0.0, |b| b[k] as f64);
                    for c in 0..g.c_in {
                        for r in 0..g.k_h {
                            for t in 0..g.k_w {
                                if let (Some(ih), Some(iw)) =
                                    (tap(p, r, g.stride, g.pad, g.h), tap(q, t, g.stride, g.pad, g.w))
                                {
                                    let xv = x[((n * g.c_in + c) * g.h + ih) * g.w + iw];
                                    let wv = w[((k * g.c_in + c) * g.k_h + r) * g.k_w + t];
                                    s += xv as f64 * wv as f64;
                                }
                            }
                        }
                    }
                    y[((n * g.c_out + k) * ho + p) * wo + q] = s as f32;
                }
            }
        }
    }
}

pub fn conv2d_backward_input(dy: &[f32], w: &[f32], g: &ConvGeometry, dx: &mut [f32]) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let mut acc = vec![0.0f64; dx.len()];
    for n in 0..g.n {
        for k in 0..g.c_out {
            for p in 0..ho {
                for q in 0..wo {
                    let gv = dy[((n * g.c_out + k) * ho + p) * wo + q] as f64;
                    for c in 0..g.c_in {
                        for r in 0..g.k_h {
                            for t in 0..g.k_w {
                                if let (Some(ih), Some(iw)) =
                                    (tap(p, r, g.stride, g.pad, g.h), tap(q, t, g.stride, g.pad, g.w))
                                {
                                    acc[((n * g.c_in + c) * g.h + ih) * g.w + iw] +=
                                        gv * w[((k * g.c_in + c) * g.k_h + r) * g.k_w + t] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dx.iter_mut().zip(acc).for_each(|(d, a)| *d = a as f32);
}

pub fn conv2d_backward_weight(x: &[f32], dy: &[f32], g: &ConvGeometry, dw: &mut [f32], db: Option<&mut [f32]>) {
    let (ho, wo) = (g.h_out(), g.w_out());
    let mut acc = vec![0.0f64; dw.len()];
    let mut bacc = vec![0.0f64; g.c_out];
    for n in 0..g.n {
        for k in 0..g.c_out {
            for p in 0..ho {
                for q in 0..wo {
                    let gv = dy[((n * g.c_out + k) * ho + p) * wo + q] as f64;
                    bacc[k] += gv;
                    for c in 0..g.c_in {
                        for r in 0..g.k_h {
                            for t in 0..g.k_w {
                                if let (Some(ih), Some(iw)) =
                                    (tap(p, r, g.stride, g.pad, g.h), tap(q, t, g.stride, g.pad, g.w))
                                {
                                    acc[((k * g.c_in + c) * g.k_h + r) * g.k_w + t] +=
                                        gv * x[((n * g.c_in + c) * g.h + ih) * g.w + iw] as f64;
                                }
                            }
                        }
                    }
                }
            }
        }
    }
    dw.iter_mut().zip(acc).for_each(|(d, a)| *d = a as f32);
    if let Some(db) = db {
        db.iter_mut().zip(bacc).for_each(|(d, a)| *d = a as f32);
    }
}

pub fn linear_forward(x: &[f32], w: &[f32], bias: Option<&[f32]>, n: usize, d_in: usize, d_out: usize, y: &mut [f32]) {
    for i in 0..n {
        for o in 0..d_out {
            let mut s = bias.map_or(0.0, |b| b[o] as f64);
            for j in 0..d_in {
                s += x[i * d_in + j] as f64 * w[o * d_in + j] as f64;
            }
            y[i * d_out + o] = s as f32;
        }
    }
}

pub fn linear_backward_input(dy: &[f32], w: &[f32], n: usize, d_in: usize, d_out: usize, dx: &mut [f32]) {
    for i in 0..n {
        for j in 0..d_in {
            let s: f64 = (0..d_out).map(|o| dy[i * d_out + o] as f64 * w[o * d_in + j] as f64).sum();
            dx[i * d_in + j] = s as f32;
        }
    }
}

pub fn linear_backward_weight(
    x: &[f32],
    dy: &[f32],
    n: usize,
    d_in: usize,
    d_out: usize,
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    for o in 0..d_out {
        for j in 0..d_in {
            let s: f64 = (0..n).map(|i| dy[i * d_out + o] as f64 * x[i * d_in + j] as f64).sum();
            dw[o * d_in + j] = s as f32;
        }
    }
    if let Some(db) = db {
        for o in 0..d_out {
            db[o] = (0..n).map(|i| dy[i * d_out + o] as f64).sum::<f64>() as f32;
        }
    }
}

fn channel_values(x: &[f32], n: usize, c: usize, hw: usize, ch: usize) -> Vec<f64> {
    (0..n).flat_map(|i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().map(|&v| v as f64)).collect()
}

pub fn batch_norm_forward_train(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    eps: f32,
    momentum: f32,
    running_mean: &mut [f32],
    running_var: &mut [f32],
    y: &mut [f32],
) {
    for ch in 0..c {
        let v = channel_values(x, n, c, hw, ch);
        let m = v.len() as f64;
        let mean = v.iter().sum::<f64>() / m;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / m;
        let unbiased = if m > 1.0 { var * m / (m - 1.0) } else { var };
        running_mean[ch] = ((1.0 - momentum as f64) * running_mean[ch] as f64 + momentum as f64 * mean) as f32;
        running_var[ch] = ((1.0 - momentum as f64) * running_var[ch] as f64 + momentum as f64 * unbiased) as f32;
        for i in 0..n {
            for j in 0..hw {
                let idx = (i * c + ch) * hw + j;
                y[idx] =
                    (gamma[ch] as f64 * (x[idx] as f64 - mean) / (var + eps as f64).sqrt() + beta[ch] as f64) as f32;
            }
        }
    }
}

pub fn batch_norm_forward_eval(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    running_mean: &[f32],
    running_var: &[f32],
    c: usize,
    hw: usize,
    eps: f32,
    y: &mut [f32],
) {
    for (idx, (o, &v)) in y.iter_mut().zip(x).enumerate() {
        let ch = (idx / hw) % c;
        *o = gamma[ch] * (v - running_mean[ch]) / (running_var[ch] + eps).sqrt() + beta[ch];
    }
}

/// The textbook train-mode backward, from x alone (recomputing the statistics).
pub fn batch_norm_backward_train(
    x: &[f32],
    dy: &[f32],
    gamma: &[f32],
    n: usize,
    c: usize,
    hw: usize,
    eps: f32,
    dx: &mut [f32],
    dgamma: &mut [f32],
    dbeta: &mut [f32],
) {
    for ch in 0..c {
        let v = channel_values(x, n, c, hw, ch);
        let g = channel_values(dy, n, c, hw, ch);
        let m = v.len() as f64;
        let mean = v.iter().sum::<f64>() / m;
        let var = v.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / m;
        let inv = 1.0 / (var + eps as f64).sqrt();
        let xhat: Vec<f64> = v.iter().map(|a| (a - mean) * inv).collect();
        let sum_g: f64 = g.iter().sum();
        let sum_gx: f64 = g.iter().zip(&xhat).map(|(a, b)| a * b).sum();
        dbeta[ch] = sum_g as f32;
        dgamma[ch] = sum_gx as f32;
        for i in 0..n {
            for j in 0..hw {
                let idx = (i * c + ch) * hw + j;
                let k = i * hw + j;
                dx[idx] = (gamma[ch] as f64 * inv / m * (m * g[k] - sum_g - xhat[k] * sum_gx)) as f32;
            }
        }
    }
}

pub fn relu_forward(x: &[f32], t: f32, y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o = if v > t { v } else { 0.0 };
    }
}

pub fn relu_backward(x: &[f32], dy: &[f32], t: f32, extra: f32, dx: &mut [f32]) {
    for i in 0..x.len() {
        dx[i] = if x[i] > t { dy[i] + extra } else { 0.0 };
    }
}

/// Window of output (p, q) as (input index) iterator over the valid taps.
fn window(g: &PoolGeometry, p: usize, q: usize) -> Vec<usize> {
    let mut v = Vec::new();
    for r in 0..g.k {
        for s in 0..g.k {
            if let (Some(ih), Some(iw)) = (tap(p, r, g.stride, g.pad, g.h), tap(q, s, g.stride, g.pad, g.w)) {
                v.push(ih * g.w + iw);
            }
        }
    }
    v
}

pub fn max_pool_forward(x: &[f32], g: &PoolGeometry, y: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    for plane in 0..g.n * g.c {
        for p in 0..ho {
            for q in 0..wo {
                let m = window(g, p, q).iter().map(|&i| x[plane * hw + i]).fold(f32::NEG_INFINITY, f32::max);
                y[(plane * ho + p) * wo + q] = m;
            }
        }
    }
}

/// Gradient goes to the first maximum of each window.
pub fn max_pool_backward(x: &[f32], dy: &[f32], g: &PoolGeometry, dx: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    dx.fill(0.0);
    for plane in 0..g.n * g.c {
        for p in 0..ho {
            for q in 0..wo {
                let win = window(g, p, q);
                let mut best = win[0];
                for &i in &win {
                    if x[plane * hw + i] > x[plane * hw + best] {
                        best = i;
                    }
                }
                dx[plane * hw + best] += dy[(plane * ho + p) * wo + q];
            }
        }
    }
}

pub fn avg_pool_forward(x: &[f32], g: &PoolGeometry, y: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    for plane in 0..g.n * g.c {
        for p in 0..ho {
            for q in 0..wo {
                let s: f64 = window(g, p, q).iter().map(|&i| x[plane * hw + i] as f64).sum();
                y[(plane * ho + p) * wo + q] = (s / (g.k * g.k) as f64) as f32;
            }
        }
    }
}

pub fn avg_pool_backward(dy: &[f32], g: &PoolGeometry, dx: &mut [f32]) {
    let (ho, wo, hw) = (g.h_out(), g.w_out(), g.h * g.w);
    dx.fill(0.0);
    for plane in 0..g.n * g.c {
        for p in 0..ho {
            for q in 0..wo {
                for i in window(g, p, q) {
                    dx[plane * hw + i] += dy[(plane * ho + p) * wo + q] / (g.k * g.k) as f32;
                }
            }
        }
    }
}

pub fn softmax_cross_entropy(logits: &[f32], labels: &[u32], classes: usize, dlogits: &mut [f32]) -> f32 {
    let n = labels.len();
    let mut total = 0.0f64;
    for i in 0..n {
        let row: Vec<f64> = logits[i * classes..(i + 1) * classes].iter().map(|&v| v as f64).collect();
        let max = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let z: f64 = row.iter().map(|v| (v - max).exp()).sum();
        let y = labels[i] as usize;
        total += -(row[y] - max - z.ln());
        for j in 0..classes {
            let p = (row[j] - max).exp() / z;
            dlogits[i * classes + j] = ((p - if j == y { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    (total / n as f64) as f32
}
