//! The cycle engine. A lowered mmOp `[m x red]·[red x n]` is cut into tiles of
//! `rows` output rows x `cols · out_buffers` output columns. In a tile, every reduction step
//! broadcasts one row-operand value per PE row and `out_buffers` column-operand values per
//! PE column. A PE's work in a step is the number of its multiply-adds with two non-zero
//! operands: 0 if its row value is zero, else the non-zero count of its column values; it
//! takes ceil(work / units) cycles. Within a window of `window` steps the PEs run
//! independently (operand FIFOs); the window ends when the slowest PE is done, and no PE can
//! get through the window faster than `window / scan_rate` cycles (the zero-detect scan).
//! Operand zeros are drawn as independent Bernoulli masks from the op's zero fractions.

use crate::config::DlacConfig;
use crate::workload::MmOp;
use tern_core::Rng;

#[derive(Clone, Debug, serde::Serialize)]
pub struct OpResult {
    /// The simulated op.
    #[serde(flatten)]
    pub op: MmOp,
    pub cycles: f64,
    /// The same op on the same config without zero-skipping.
    pub dense_cycles: f64,
    /// Equivalent FLOP/cycle: 2·K·CRS·PQ over the cycles.
    pub flops_per_cycle: f64,
    pub speedup: f64,
    /// Multiply-adds actually executed over (cycles x units).
    pub utilisation: f64,
    /// Tiles simulated cycle by cycle (the rest are taken as the mean of these).
    pub tiles_simulated: usize,
    pub tiles: usize,
}

impl OpResult {
    /// Signed error of the simulated FLOP/cycle against the op's reference, percent.
    pub fn error_pct(&self) -> Option<f64> {
        self.op.reference_flops_per_cycle.map(|p| 100.0 * (self.flops_per_cycle - p) / p)
    }
}

/// Cycles of one tile without skipping: every step costs ceil(widest PE column / units).
fn dense_tile_cycles(cfg: &DlacConfig, red: usize, widest: usize) -> u64 {
    red as u64 * widest.div_ceil(cfg.units) as u64
}

/// Simulates tile `(mt, nt)`; returns (cycles, executed multiply-adds).
///
/// Per window the operand masks become bit sets over its steps: one word per PE row (row
/// operand non-zero) and, per PE column, bit-planes of its per-step cycle count. A PE's time
/// in the window is then Σ_k 2^k · popcount(row & plane_k): no per-step, per-PE loop.
fn tile_cycles(cfg: &DlacConfig, op: &MmOp, mt: usize, nt: usize, rng: &mut Rng) -> (u64, u64) {
    let (m, red, n) = op.dims();
    let b = cfg.out_buffers;
    let rows_valid = (m - mt * cfg.rows).min(cfg.rows);
    let width: Vec<usize> = (0..cfg.cols).map(|j| n.saturating_sub(nt * cfg.cols * b + j * b).min(b)).collect();
    let (p_row, p_col) = (1.0 - op.row_zero as f32, 1.0 - op.col_zero as f32);
    let max_step_cycles = b.div_ceil(cfg.units);
    let planes = (usize::BITS - max_step_cycles.leading_zeros()) as usize;
    let mut row_bits = vec![0u64; rows_valid];
    let mut col_planes = vec![0u64; cfg.cols * planes];
    let mut pe_time = vec![0u64; rows_valid * cfg.cols];
    let (mut total, mut executed) = (0u64, 0u64);
    let mut step = 0;
    while step < red {
        let steps = cfg.window.min(red - step);
        pe_time.iter_mut().for_each(|t| *t = 0);
        // Chunks of up to 64 steps share one word per mask.
        let mut done = 0;
        while done < steps {
            let chunk = (steps - done).min(64);
            row_bits.iter_mut().for_each(|w| *w = 0);
            col_planes.iter_mut().for_each(|w| *w = 0);
            for s in 0..chunk {
                let mut rows_nz = 0u64;
                for w in row_bits.iter_mut() {
                    if rng.uniform() < p_row {
                        *w |= 1 << s;
                        rows_nz += 1;
                    }
                }
                for j in 0..cfg.cols {
                    let nz = (0..width[j]).filter(|_| rng.uniform() < p_col).count();
                    executed += rows_nz * nz as u64;
                    let c = nz.div_ceil(cfg.units);
                    for k in 0..planes {
                        if c >> k & 1 == 1 {
                            col_planes[j * planes + k] |= 1 << s;
                        }
                    }
                }
            }
            for (i, &rw) in row_bits.iter().enumerate() {
                if rw == 0 {
                    continue;
                }
                for j in 0..cfg.cols {
                    let mut t = 0u64;
                    for k in 0..planes {
                        t += ((rw & col_planes[j * planes + k]).count_ones() as u64) << k;
                    }
                    pe_time[i * cfg.cols + j] += t;
                }
            }
            done += chunk;
        }
        let floor = steps.div_ceil(cfg.scan_rate) as u64;
        total += pe_time.iter().copied().max().unwrap_or(0).max(floor);
        step += steps;
    }
    (total, executed)
}

/// Simulates one op. `max_tiles` bounds the tiles simulated cycle by cycle (spread evenly
/// over the op; the others count as their mean); None simulates all of them.
pub fn simulate_op(op: &MmOp, cfg: &DlacConfig, seed: u64, max_tiles: Option<usize>) -> OpResult {
    let (m, red, n) = op.dims();
    let (mt_count, nt_count) = (m.div_ceil(cfg.rows), n.div_ceil(cfg.cols * cfg.out_buffers));
    let tiles = mt_count * nt_count;
    let chosen: Vec<usize> = match max_tiles {
        Some(t) if t < tiles => (0..t).map(|i| i * tiles / t).collect(),
        _ => (0..tiles).collect(),
    };
    let mut rng = Rng::new(seed);
    let (mut cyc, mut exec) = (0u64, 0u64);
    for &t in &chosen {
        let (c, e) = tile_cycles(cfg, op, t / nt_count, t % nt_count, &mut rng);
        cyc += c;
        exec += e;
    }
    let scale = tiles as f64 / chosen.len().max(1) as f64;
    let cycles = cyc as f64 * scale;
    let executed = exec as f64 * scale;
    // Dense cycles are analytic: every tile costs red x ceil(widest column / units).
    let mut dense = 0u64;
    for nt in 0..nt_count {
        let widest = n.saturating_sub(nt * cfg.cols * cfg.out_buffers).min(cfg.out_buffers);
        dense += dense_tile_cycles(cfg, red, widest) * mt_count as u64;
    }
    let flops = 2.0 * op.macs() as f64;
    OpResult {
        op: op.clone(),
        cycles,
        dense_cycles: dense as f64,
        flops_per_cycle: flops / cycles.max(1.0),
        speedup: dense as f64 / cycles.max(1.0),
        utilisation: executed / (cycles.max(1.0) * cfg.total_units() as f64),
        tiles_simulated: chosen.len(),
        tiles,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(k: usize, crs: usize, pq: usize, rz: f64, cz: f64) -> MmOp {
        MmOp::new("l", "forward", k, crs, pq, rz, cz)
    }

    #[test]
    fn without_zeros_cycles_equal_the_analytic_dense_count() {
        let cfg = DlacConfig::fp32_train();
        for o in [op(64, 147, 12544, 0.0, 0.0), op(37, 50, 333, 0.0, 0.0), op(512, 4608, 49, 0.0, 0.0)] {
            let r = simulate_op(&o, &cfg, 1, None);
            assert_eq!(r.cycles, r.dense_cycles, "{o:?}");
            assert!((r.speedup - 1.0).abs() < 1e-12);
        }
        // a layer that fills every tile reaches the peak exactly
        let r = simulate_op(&op(64, 576, 3072, 0.0, 0.0), &cfg, 1, None);
        assert!((r.flops_per_cycle - cfg.dense_flops_per_cycle()).abs() < 1e-9);
        assert!((r.utilisation - 1.0).abs() < 1e-12);
    }

    #[test]
    fn all_zero_operands_cost_only_the_scan() {
        let cfg = DlacConfig::fp32_train();
        let r = simulate_op(&op(64, 576, 3136, 1.0, 0.3), &cfg, 2, None);
        let tiles = r.tiles as f64;
        assert_eq!(
            r.cycles,
            tiles * (576f64 / cfg.window as f64).ceil() * (cfg.window as f64 / cfg.scan_rate as f64).ceil()
        );
        assert_eq!(r.utilisation, 0.0);
    }

    #[test]
    fn more_zeros_never_cost_more_cycles() {
        let cfg = DlacConfig::fp32_train();
        let mut last = f64::MAX;
        for z in [0.0, 0.2, 0.4, 0.6, 0.8, 0.9, 0.99] {
            let r = simulate_op(&op(128, 1152, 784, z, z), &cfg, 3, Some(16));
            assert!(r.cycles <= last, "zero fraction {z}: {} cycles after {last}", r.cycles);
            last = r.cycles;
        }
    }
}
