//! Progress bars for training and evaluation (an `Observer` drawn with indicatif).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::time::Instant;
use tern_train::{EpochMetrics, Observer};

pub struct Bars {
    bar: Option<ProgressBar>,
    start: Instant,
    images: usize,
    loss_sum: f64,
    correct: usize,
    batches: usize,
    quiet: bool,
}

impl Bars {
    pub fn new(quiet: bool) -> Self {
        Bars { bar: None, start: Instant::now(), images: 0, loss_sum: 0.0, correct: 0, batches: 0, quiet }
    }

    fn new_bar(&self, len: usize, prefix: String) -> ProgressBar {
        let pb = ProgressBar::with_draw_target(
            Some(len as u64),
            if self.quiet { ProgressDrawTarget::hidden() } else { ProgressDrawTarget::stderr() },
        );
        pb.set_style(
            ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} {msg} ETA {eta}")
                .expect("valid template")
                .progress_chars("=> "),
        );
        pb.set_prefix(prefix);
        pb
    }
}

impl Observer for Bars {
    fn epoch_start(&mut self, epoch: usize, epochs: usize, batches: usize) {
        self.bar = Some(self.new_bar(batches, format!("epoch {}/{}", epoch + 1, epochs)));
        self.start = Instant::now();
        (self.images, self.loss_sum, self.correct, self.batches) = (0, 0.0, 0, 0);
    }
    fn batch_end(&mut self, loss: f32, correct: usize, n: usize, lr: f32) {
        self.images += n;
        self.correct += correct;
        self.loss_sum += loss as f64;
        self.batches += 1;
        if let Some(b) = &self.bar {
            let rate = self.images as f64 / self.start.elapsed().as_secs_f64().max(1e-9);
            b.set_message(format!(
                "loss {:.4} acc {:.2}% lr {lr:.4} {rate:.0} img/s",
                self.loss_sum / self.batches as f64,
                100.0 * self.correct as f64 / self.images as f64
            ));
            b.inc(1);
        }
    }
    fn eval_start(&mut self, batches: usize) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        self.bar = Some(self.new_bar(batches, "eval".into()));
    }
    fn eval_batch(&mut self) {
        if let Some(b) = &self.bar {
            b.inc(1);
        }
    }
    fn epoch_end(&mut self, m: &EpochMetrics) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
        if !self.quiet {
            let tern = match m.weight_zero_fraction {
                Some(z) => format!(" | ternary, {:.1}% zero weights", 100.0 * z),
                None => String::new(),
            };
            let nz = match m.nonzero_frac {
                Some(f) => format!(" | non-zero MACs fwd {:.2} bwd {:.2} grad {:.2}", f[0], f[1], f[2]),
                None => String::new(),
            };
            let skipped = if m.skipped_samples > 0 {
                format!(" | skipped {} samples, {} backward passes", m.skipped_samples, m.skipped_batches)
            } else {
                String::new()
            };
            eprintln!(
                "epoch {:>3}: train loss {:.4} acc {:.2}% | test acc {:.2}% top5 {:.2}% | lr {:.5} | {:.1}s {:.0} img/s{tern}{nz}{skipped}",
                m.epoch,
                m.train_loss,
                100.0 * m.train_acc,
                100.0 * m.test_acc,
                100.0 * m.test_top5,
                m.lr,
                m.seconds,
                m.images_per_s
            );
        }
    }
}

impl Bars {
    /// For evaluation-only commands.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish_and_clear();
        }
    }
}

/// A plain counting bar (rate and ETA) for work that is not training, e.g. a sweep.
pub fn counter(label: &str, len: u64, unit: &str) -> ProgressBar {
    let pb = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{{prefix:>12}} [{{bar:30}}] {{pos}}/{{len}} {unit} {{per_sec}} ETA {{eta}}"
        ))
        .expect("valid template")
        .progress_chars("=> "),
    );
    pb.set_prefix(label.to_string());
    pb
}
