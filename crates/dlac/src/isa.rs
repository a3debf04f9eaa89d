//! DLAC's instruction set: `mmOp` (a K x CRS x PQ matrix multiply into the output buffers)
//! and `ptWiseOp <op, v1, v2, v3>` applied to every element of the output buffers, used for
//! ReLU, inference batch norm and residual adds (§3). The executor computes the values, so
//! lowered programs can be checked against the reference kernels.

use crate::config::DlacConfig;

/// An operand of a ptWiseOp.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// The same number for every element.
    Scalar(f32),
    /// One number per output row (per output channel: BN's scale and shift).
    PerRow(Vec<f32>),
    /// Element-wise values of another buffer of the same shape (the residual input).
    Buffer(Vec<f32>),
}

impl Value {
    fn at(&self, row: usize, idx: usize) -> f32 {
        match self {
            Value::Scalar(v) => *v,
            Value::PerRow(v) => v[row],
            Value::Buffer(v) => v[idx],
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum PtOp {
    /// y = y + v1
    Add(Value),
    /// y = y − v1
    Sub(Value),
    /// y = y · v1 + v2
    MulAdd(Value, Value),
    /// The ternary `?:`: y = (y > v1) ? y : v2
    Select(Value, Value),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Instr {
    /// A matrix multiply of the given dimensions (timed by the cycle engine).
    Mm { name: String, k: usize, crs: usize, pq: usize },
    /// A point-wise op over the output buffers `[rows, cols]`.
    Pt { name: String, op: PtOp },
}

/// The point-wise layers DLAC runs after an mmOp.
#[derive(Clone, Debug)]
pub enum PointwiseLayer {
    /// Inference batch norm, folded: y = x·γ/√(var+ε) + (β − mean·γ/√(var+ε)).
    BatchNorm { gamma: Vec<f32>, beta: Vec<f32>, mean: Vec<f32>, var: Vec<f32>, eps: f32 },
    /// ReLU with threshold t (the paper's ReluT).
    Relu { threshold: f32 },
    /// Residual add of another buffer.
    Add { other: Vec<f32> },
}

/// Lowers a point-wise layer to ptWiseOps.
pub fn lower(name: &str, layer: &PointwiseLayer) -> Vec<Instr> {
    let op = match layer {
        PointwiseLayer::BatchNorm { gamma, beta, mean, var, eps } => {
            let scale: Vec<f32> = gamma.iter().zip(var).map(|(g, v)| g / (v + eps).sqrt()).collect();
            let shift: Vec<f32> = beta.iter().zip(mean).zip(&scale).map(|((b, m), s)| b - m * s).collect();
            PtOp::MulAdd(Value::PerRow(scale), Value::PerRow(shift))
        }
        PointwiseLayer::Relu { threshold } => PtOp::Select(Value::Scalar(*threshold), Value::Scalar(0.0)),
        PointwiseLayer::Add { other } => PtOp::Add(Value::Buffer(other.clone())),
    };
    vec![Instr::Pt { name: name.into(), op }]
}

/// Applies a ptWiseOp to the output buffers `y: [rows, cols]` (row-major).
pub fn execute(op: &PtOp, y: &mut [f32], cols: usize) {
    for (idx, v) in y.iter_mut().enumerate() {
        let row = idx / cols.max(1);
        *v = match op {
            PtOp::Add(a) => *v + a.at(row, idx),
            PtOp::Sub(a) => *v - a.at(row, idx),
            PtOp::MulAdd(a, b) => *v * a.at(row, idx) + b.at(row, idx),
            PtOp::Select(t, other) => {
                if *v > t.at(row, idx) {
                    *v
                } else {
                    other.at(row, idx)
                }
            }
        };
    }
}

/// ptWiseOps a point-wise layer of a workload lowers to (each one pass over its outputs):
/// folded BN is one mul-add, ReLU one `?:`, a residual add one add.
pub fn pt_instructions(kind: &str) -> usize {
    match kind {
        "bn" | "relu" | "add" => 1,
        _ => 0,
    }
}

/// Cycles of a ptWiseOp over `elements` outputs: every FP unit updates one element per cycle.
pub fn pt_cycles(cfg: &DlacConfig, elements: usize) -> u64 {
    elements.div_ceil(cfg.total_units()) as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_core::kernels::reference;
    use tern_core::Rng;

    fn run(program: &[Instr], y: &mut [f32], cols: usize) {
        for i in program {
            if let Instr::Pt { op, .. } = i {
                execute(op, y, cols);
            }
        }
    }

    #[test]
    fn relu_bn_and_add_programs_compute_the_layers() {
        let mut rng = Rng::new(1);
        let (c, hw) = (3, 5);
        let x: Vec<f32> = (0..c * hw).map(|_| rng.normal()).collect();
        // BN (inference) against the reference kernel
        let gamma: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let beta: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let mean: Vec<f32> = (0..c).map(|_| rng.normal()).collect();
        let var: Vec<f32> = (0..c).map(|_| 0.5 + rng.uniform()).collect();
        let mut want = vec![0.0; x.len()];
        reference::batch_norm_forward_eval(&x, &gamma, &beta, &mean, &var, c, hw, 1e-5, &mut want);
        let mut y = x.clone();
        run(&lower("bn", &PointwiseLayer::BatchNorm { gamma, beta, mean, var, eps: 1e-5 }), &mut y, hw);
        for (a, b) in y.iter().zip(&want) {
            assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // ReLU with a threshold
        let mut y = x.clone();
        run(&lower("relu", &PointwiseLayer::Relu { threshold: 0.25 }), &mut y, hw);
        let mut want = vec![0.0; x.len()];
        reference::relu_forward(&x, 0.25, &mut want);
        assert_eq!(y, want);
        // residual add
        let other: Vec<f32> = (0..x.len()).map(|i| i as f32).collect();
        let mut y = x.clone();
        run(&lower("add", &PointwiseLayer::Add { other: other.clone() }), &mut y, hw);
        assert!(y.iter().zip(x.iter().zip(&other)).all(|(s, (a, b))| *s == a + b));
        // Sub is Add's inverse
        execute(&PtOp::Sub(Value::Buffer(other)), &mut y, hw);
        assert!(y.iter().zip(&x).all(|(a, b)| (a - b).abs() < 1e-5));
        assert_eq!(pt_cycles(&DlacConfig::fp32_train(), 1025), 3);
    }
}
