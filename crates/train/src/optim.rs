//! SGD with momentum (PyTorch semantics), optional Nesterov, decoupled-from-BN weight decay.

use crate::model::Model;
use tern_core::Tensor;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SgdConfig {
    pub momentum: f32,
    pub nesterov: bool,
    /// L2 penalty, applied only to parameters marked `decay` (conv/linear weights).
    pub weight_decay: f32,
}

pub struct Sgd {
    pub config: SgdConfig,
    /// One buffer per parameter, in `visit_params` order (created on the first step).
    pub velocity: Vec<Tensor>,
}

impl Sgd {
    pub fn new(config: SgdConfig) -> Self {
        Sgd { config, velocity: Vec::new() }
    }

    /// v = μ·v + (g + λ·w); w -= lr·(Nesterov ? g + λ·w + μ·v : v).
    pub fn step(&mut self, model: &mut Model, lr: f32) {
        let SgdConfig { momentum: mu, nesterov, weight_decay: wd } = self.config;
        let mut i = 0;
        let vel = &mut self.velocity;
        model.visit_params(&mut |p| {
            if vel.len() <= i {
                vel.push(Tensor::zeros(p.value.shape()));
            }
            let v = vel[i].data_mut();
            let decay = if p.decay { wd } else { 0.0 };
            let (w, g) = (p.value.data_mut(), p.grad.data());
            for j in 0..w.len() {
                let grad = g[j] + decay * w[j];
                v[j] = mu * v[j] + grad;
                w[j] -= lr * if nesterov { grad + mu * v[j] } else { v[j] };
            }
            i += 1;
        });
    }
}
