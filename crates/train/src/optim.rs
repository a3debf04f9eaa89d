//! SGD with momentum (PyTorch semantics), optional Nesterov, decoupled-from-BN weight decay.

use crate::model::Model;
use tern_core::{Backend, Tensor};

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

    /// v = μ·v + (g + λ·w); w -= lr·(Nesterov ? g + λ·w + μ·v : v), on `backend`'s device;
    /// `lr: [1]` on that device; no change where `guard[0]` (the step's loss) is not finite.
    pub fn step(&mut self, backend: &dyn Backend, model: &mut Model, lr: &Tensor, guard: Option<&Tensor>) {
        let SgdConfig { momentum: mu, nesterov, weight_decay: wd } = self.config;
        let mut i = 0;
        let vel = &mut self.velocity;
        model.visit_params(&mut |p| {
            if vel.len() <= i {
                vel.push(backend.zeros(p.value.shape()));
            }
            let decay = if p.decay { wd } else { 0.0 };
            backend.sgd_step(&mut p.value, &p.grad, &mut vel[i], lr, guard, mu, nesterov, decay);
            i += 1;
        });
    }
}
