//! One SGD step — forward, loss, backward, update — with its inputs in fixed device buffers,
//! so that a device that can record work (CUDA graphs) records the step once and then
//! replays it: the host then queues one launch per step and reads three numbers back.

use crate::layer::Ctx;
use crate::model::Model;
use crate::optim::Sgd;
use crate::profile::Profiler;
use std::cell::RefCell;
use tern_core::{loss_stats, Backend, StepGraph, Tensor};

/// What a step reports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Mean cross-entropy of the batch (before the update).
    pub loss: f32,
    /// Correctly classified samples (top-1).
    pub correct: usize,
    /// GradUpdate skipped the backward pass: every sample was right.
    pub skipped_backward: bool,
}

/// The fixed buffers of a step and, once recorded, the recording.
pub struct Stepper {
    x: Option<Tensor>,
    labels: Option<Tensor>,
    lr: Option<Tensor>,
    stats: Option<Tensor>,
    graph: Option<Box<dyn StepGraph>>,
    /// Plain steps run since the last invalidation (the first warms up: algorithm searches
    /// and first allocations must not happen while recording).
    warm: usize,
    /// Record plain steps where the device can (off after a device declined once).
    record: bool,
}

impl Stepper {
    /// `record`: record and replay steps on devices that can.
    pub fn new(record: bool) -> Self {
        Stepper { x: None, labels: None, lr: None, stats: None, graph: None, warm: 0, record }
    }

    /// Forgets the recording: the model changed in a way a replay would not see (a new
    /// epoch's recipe: ternary on or off, a new ReLU threshold).
    pub fn invalidate(&mut self) {
        self.graph = None;
        self.warm = 0;
    }

    /// Whether the last steps were replays of a recording.
    pub fn is_recorded(&self) -> bool {
        self.graph.is_some()
    }

    /// The input of the last step, on the device (for the finite-value probe).
    pub fn input(&self) -> Option<&Tensor> {
        self.x.as_ref()
    }

    /// One step on `x: [n, ...]` (host or device) with `labels`, at rate `lr`. Profiled and
    /// GradUpdate steps run eagerly (the profiler reads operands on the host; GradUpdate
    /// decides on the host whether the backward runs).
    #[allow(clippy::too_many_arguments)]
    pub fn step(
        &mut self,
        be: &dyn Backend,
        model: &mut Model,
        sgd: &mut Sgd,
        x: &Tensor,
        labels: &[u32],
        lr: f32,
        skip_correct: bool,
        profiler: Option<&RefCell<Profiler>>,
    ) -> StepOutcome {
        let record = self.record;
        let fill = &mut |be: &dyn Backend, xd: &mut Tensor| {
            if !record && x.device() == be.device() {
                // nothing will be recorded (the CPU): take the batch's handle, no copy
                *xd = x.clone();
            } else {
                be.write(xd, x)
            }
        };
        self.step_with(be, model, sgd, x.shape(), fill, labels, lr, skip_correct, profiler)
    }

    /// [`Stepper::step`] with the input written into the step's fixed buffer `[x_shape]` by
    /// `fill` (a device that holds the data set renders the batch there itself).
    #[allow(clippy::too_many_arguments)]
    pub fn step_with(
        &mut self,
        be: &dyn Backend,
        model: &mut Model,
        sgd: &mut Sgd,
        x_shape: &[usize],
        fill: &mut dyn FnMut(&dyn Backend, &mut Tensor),
        labels: &[u32],
        lr: f32,
        skip_correct: bool,
        profiler: Option<&RefCell<Profiler>>,
    ) -> StepOutcome {
        let n = labels.len();
        if self.x.as_ref().is_none_or(|t| t.shape() != x_shape || t.device() != be.device()) {
            // new shapes (the last, partial batch) or a new device: new buffers, new recording
            self.invalidate();
            self.x = Some(be.alloc_activation(x_shape));
            self.labels = Some(be.alloc(&[n]));
            self.lr = Some(be.alloc(&[1]));
            self.stats = Some(be.zeros(&[loss_stats::LEN]));
        }
        let (xd, yd, lrd, st) = (
            self.x.as_mut().expect("allocated"),
            self.labels.as_mut().expect("allocated"),
            self.lr.as_mut().expect("allocated"),
            self.stats.as_mut().expect("allocated"),
        );
        fill(be, xd);
        be.write(yd, &Tensor::from_u32(&[n], labels));
        be.write(lrd, &Tensor::from_vec(&[1], vec![lr]));
        let plain = !skip_correct && profiler.is_none();
        let mut skipped_backward = false;
        if plain {
            if let Some(g) = &self.graph {
                g.replay();
            } else if self.record && self.warm >= 1 {
                let mut core = || plain_step(be, model, sgd, xd, yd, lrd, st);
                self.graph = be.capture(&mut core);
                self.record = self.graph.is_some();
            } else {
                plain_step(be, model, sgd, xd, yd, lrd, st);
                self.warm += 1;
            }
        } else {
            let mut ctx = Ctx::new(be, true);
            ctx.profiler = profiler;
            let dlogits = forward_loss(be, model, &ctx, xd, yd, skip_correct, st);
            let correct = st.to_host().data()[loss_stats::TOP1] as usize;
            if skip_correct && correct == n {
                // The whole batch is right: no backward pass; the step applies momentum and
                // weight decay only.
                skipped_backward = true;
                model.visit_params(&mut |p| be.fill(&mut p.grad, 0.0));
            } else {
                model.backward(&ctx, &dlogits);
            }
            sgd.step(be, model, lrd, Some(st));
        }
        // the one read of the step: the loss and the correct count
        let s = self.stats.as_ref().expect("allocated").to_host();
        let s = s.data();
        StepOutcome { loss: s[loss_stats::LOSS], correct: s[loss_stats::TOP1] as usize, skipped_backward }
    }
}

/// Forward and loss; returns dL/dlogits (correct samples zeroed under GradUpdate).
fn forward_loss(
    be: &dyn Backend,
    model: &mut Model,
    ctx: &Ctx,
    x: &Tensor,
    labels: &Tensor,
    skip_correct: bool,
    stats: &mut Tensor,
) -> Tensor {
    let logits = model.forward(ctx, x);
    let mut dlogits = be.alloc(logits.shape());
    be.softmax_cross_entropy(&logits, labels, 1, skip_correct, Some(&mut dlogits), stats);
    dlogits
}

/// A step without host decisions: forward, loss, backward, update (guarded by the loss).
fn plain_step(
    be: &dyn Backend,
    model: &mut Model,
    sgd: &mut Sgd,
    x: &Tensor,
    labels: &Tensor,
    lr: &Tensor,
    stats: &mut Tensor,
) {
    let ctx = Ctx::new(be, true);
    let dlogits = forward_loss(be, model, &ctx, x, labels, false, stats);
    model.backward(&ctx, &dlogits);
    sgd.step(be, model, lr, Some(stats));
}
