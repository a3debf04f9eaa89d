//! The event engine: DLAC step by step and PE by PE, with decoupled operand FIFOs instead of
//! the fast engine's window barrier.
//!
//! Per tile (the same tiles, operand masks and random streams as the fast engine):
//!
//! - **Broadcast.** Reduction step `s` is issued to every PE at time `I(s)`: no earlier than
//!   the previous issue plus the time to read its operands from the shared buffers
//!   (`words / read_words_per_cycle`) and to scan it (`1 / scan_rate`), and no earlier than the
//!   moment the slowest PE has consumed step `s − D` (each PE's operand FIFO holds `D =
//!   window` steps: a full FIFO stalls the broadcast).
//! - **PEs.** Each PE takes its steps in order as they arrive, spending one issue slot per
//!   multiply-add with two non-zero operands (`units` per cycle) and nothing on a skipped one.
//! - **FP pipeline.** An accumulation into an output buffer can issue only `fma_latency`
//!   cycles after the previous one into the same buffer (a read-after-write on the
//!   accumulator); with latency 1 the pipeline forwards and never stalls. This is why a PE
//!   wants several output buffers: they hide the latency.
//! - **Fill and drain.** A tile ends when its last accumulation leaves the pipeline
//!   (`fma_latency − 1` after its issue); the next tile starts then.
//!
//! Times are kept as fractions of a cycle (issue floors like 1/3 cycle per scanned step);
//! a tile's cycles are its end time rounded up. With a window of 1, a scan rate of 1, buffers
//! that keep up and latency 1 this is exactly the fast engine (tested); elsewhere the two
//! differ by what the barrier costs.

use crate::config::DlacConfig;
use crate::engine::{OpResult, OperandBits};
use crate::masks::OpMasks;
use crate::workload::MmOp;

/// Simulates tile `(mt, nt)` event by event; returns (cycles, executed multiply-adds).
pub fn tile_cycles<S: OperandBits>(cfg: &DlacConfig, op: &MmOp, mt: usize, nt: usize, src: &mut S) -> (u64, u64) {
    let (m, red, n) = op.dims();
    let b = cfg.out_buffers;
    let rows = (m - mt * cfg.rows).min(cfg.rows);
    let width: Vec<usize> = (0..cfg.cols).map(|j| n.saturating_sub(nt * cfg.cols * b + j * b).min(b)).collect();
    let words = (rows + width.iter().sum::<usize>()) as f64;
    let step_floor = (words / cfg.read_words_per_cycle as f64).max(1.0 / cfg.scan_rate as f64);
    let depth = cfg.window;
    let latency = cfg.fma_latency as f64;
    let units = cfg.units;
    let pes = rows * cfg.cols;
    // per PE: when it is free to take its next step; per PE and buffer: when the last
    // accumulation issued (for the read-after-write distance); per unit: next free slot
    let mut free = vec![0f64; pes];
    let mut acc_issue = vec![f64::NEG_INFINITY; pes * b];
    let mut unit_free = vec![0f64; pes * units];
    // the slowest PE's finish time of each of the last `depth` steps; with compressed FIFOs
    // instead each PE's finish times of its last `depth` steps that carried work
    let mut consumed = vec![0f64; depth];
    let compressed = cfg.compressed_fifos;
    let mut pe_done = if compressed { vec![f64::NEG_INFINITY; pes * depth] } else { Vec::new() };
    let mut pe_steps = vec![0usize; if compressed { pes } else { 0 }];
    let mut work_of = vec![0usize; pes];
    let mut issue = f64::NEG_INFINITY;
    let mut end = 0f64;
    let mut executed = 0u64;
    let (mut row_bits, mut col_bits) = (vec![0u64; rows], vec![0u64; cfg.cols * b]);
    // blocks of steps as the fast engine draws them (same masks from the same streams)
    let block = if cfg.window <= 64 { 64 / cfg.window * cfg.window } else { 64 };
    let mut step = 0;
    while step < red {
        let len = block.min(red - step);
        for (i, w) in row_bits.iter_mut().enumerate() {
            *w = src.row(mt * cfg.rows + i, step, len);
        }
        for (j, &wj) in width.iter().enumerate() {
            let l0 = nt * cfg.cols * b + j * b;
            for k in 0..b {
                col_bits[j * b + k] = if k < wj { src.col(l0 + k, step, len) } else { 0 };
            }
        }
        for t in 0..len {
            let s = step + t;
            let slot = s % depth;
            let earliest = if s == 0 { 0.0 } else { issue + step_floor };
            for i in 0..rows {
                let row_nz = row_bits[i] >> t & 1 == 1;
                for j in 0..cfg.cols {
                    work_of[i * cfg.cols + j] =
                        if row_nz { (0..width[j]).filter(|&k| col_bits[j * b + k] >> t & 1 == 1).count() } else { 0 };
                }
            }
            issue = if compressed {
                // a step waits only for the PEs it gives work to, each with a full FIFO of
                // work-carrying steps (zero steps never take a slot)
                (0..pes)
                    .filter(|&pe| work_of[pe] > 0 && pe_steps[pe] >= depth)
                    .map(|pe| pe_done[pe * depth + pe_steps[pe] % depth])
                    .fold(earliest, f64::max)
            } else if s >= depth {
                earliest.max(consumed[slot])
            } else {
                earliest
            };
            let mut slowest = issue;
            for i in 0..rows {
                let row_nz = row_bits[i] >> t & 1 == 1;
                for j in 0..cfg.cols {
                    let pe = i * cfg.cols + j;
                    let start = free[pe].max(issue);
                    let mut finish = start;
                    if row_nz {
                        if latency <= 1.0 {
                            let work = work_of[pe];
                            executed += work as u64;
                            finish = start + work.div_ceil(units) as f64;
                            if work > 0 {
                                end = end.max(finish);
                            }
                        } else {
                            // one accumulation at a time, each on the earliest free unit and
                            // no sooner than `latency` after the previous one into its buffer
                            let uf = &mut unit_free[pe * units..(pe + 1) * units];
                            for k in (0..width[j]).filter(|&k| col_bits[j * b + k] >> t & 1 == 1) {
                                executed += 1;
                                let u = (0..units).min_by(|&x, &y| uf[x].total_cmp(&uf[y])).unwrap_or(0);
                                let at = uf[u].max(start).max(acc_issue[pe * b + k] + latency);
                                uf[u] = at + 1.0;
                                acc_issue[pe * b + k] = at;
                                finish = finish.max(at + 1.0);
                                end = end.max(at + latency);
                            }
                        }
                    }
                    free[pe] = finish;
                    slowest = slowest.max(finish);
                    if compressed && work_of[pe] > 0 {
                        pe_done[pe * depth + pe_steps[pe] % depth] = finish;
                        pe_steps[pe] += 1;
                    }
                }
            }
            consumed[slot] = slowest;
        }
        step += len;
    }
    // the last step's scan/read floor and the slowest PE bound the tile
    let last = free.iter().cloned().fold(end, f64::max).max(issue + step_floor);
    ((last - 1e-9).ceil().max(0.0) as u64, executed)
}

/// Simulates one op with the event engine on Bernoulli masks (the fast engine's streams).
pub fn simulate_op(op: &MmOp, cfg: &DlacConfig, seed: u64, max_tiles: Option<usize>) -> OpResult {
    crate::engine::run_tiles_with(op, cfg, max_tiles, |t| crate::engine::bernoulli_source(op, seed, t), tile_cycles)
}

/// Simulates one op with the event engine on its real masks.
pub fn simulate_op_masked(op: &MmOp, cfg: &DlacConfig, masks: &OpMasks, max_tiles: Option<usize>) -> OpResult {
    let mut r = crate::engine::run_tiles_with(op, cfg, max_tiles, |_| masks, tile_cycles);
    (r.op.row_zero, r.op.col_zero) = (masks.a.zero_fraction(), masks.bt.zero_fraction());
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{bernoulli_source, simulate_op as fast_op};
    use tern_core::Rng;

    fn op(k: usize, crs: usize, pq: usize, rz: f64, cz: f64) -> MmOp {
        MmOp::new("l", "forward", k, crs, pq, rz, cz)
    }

    /// A forward op of random K, CRS, PQ (below `max`) and random zero fractions.
    fn random_op(pick: &mut Rng, max: [usize; 3]) -> MmOp {
        let (k, crs, pq) = (1 + pick.below(max[0]), 1 + pick.below(max[1]), 1 + pick.below(max[2]));
        op(k, crs, pq, pick.uniform() as f64, pick.uniform() as f64)
    }

    #[test]
    fn with_a_one_step_window_it_is_the_fast_engine() {
        // window 1, scan rate 1, buffers that keep up, latency 1: the FIFO of one step is the
        // barrier of one step, so both engines must give the same cycles on the same masks
        let mut pick = Rng::new(7);
        for case in 0..30 {
            let cfg = DlacConfig {
                rows: 1 + pick.below(6),
                cols: 1 + pick.below(6),
                out_buffers: 1 + pick.below(5),
                window: 1,
                scan_rate: 1,
                read_words_per_cycle: 1000,
                ..DlacConfig::fp32_train()
            };
            let cfg = DlacConfig { units: 1 + pick.below(cfg.out_buffers), ..cfg };
            let o = random_op(&mut pick, [20, 150, 60]);
            let (fast, event) = (fast_op(&o, &cfg, case, None), simulate_op(&o, &cfg, case, None));
            assert_eq!(
                (fast.cycles, fast.executed_macs),
                (event.cycles, event.executed_macs),
                "case {case}: {cfg:?} {o:?}"
            );
        }
    }

    #[test]
    fn it_executes_what_the_fast_engine_executes_and_no_more_cycles_without_zeros() {
        let cfg = DlacConfig::fp32_train();
        for o in [op(64, 147, 1000, 0.0, 0.0), op(37, 50, 333, 0.0, 0.0)] {
            let r = simulate_op(&o, &cfg, 1, None);
            assert_eq!(r.cycles, r.dense_cycles, "{o:?}");
        }
        let mut pick = Rng::new(9);
        for case in 0..10 {
            let cfg = DlacConfig {
                rows: 1 + pick.below(8),
                cols: 1 + pick.below(4),
                out_buffers: 1 + pick.below(4),
                window: [2, 5, 12][pick.below(3)],
                scan_rate: 1 + pick.below(3),
                fma_latency: 1 + pick.below(4),
                ..DlacConfig::fp32_train()
            };
            let o = random_op(&mut pick, [20, 200, 40]);
            let (fast, event) = (fast_op(&o, &cfg, case, None), simulate_op(&o, &cfg, case, None));
            assert_eq!(fast.executed_macs, event.executed_macs, "case {case}");
            assert!(event.cycles >= (event.executed_macs / cfg.total_units() as f64).floor(), "case {case}");
        }
    }

    #[test]
    fn the_fp_pipeline_needs_as_many_buffers_as_its_latency() {
        // dense, 1 unit: with latency L a PE keeps its unit busy only with ≥ L output buffers
        let o = op(64, 200, 512, 0.0, 0.0);
        for (buffers, latency) in [(2, 1), (2, 2), (4, 4), (2, 4), (1, 3)] {
            let cfg = DlacConfig {
                out_buffers: buffers,
                fma_latency: latency,
                window: 4,
                scan_rate: 1,
                ..DlacConfig::fp32_train()
            };
            let r = simulate_op(&o, &cfg, 0, None);
            let per_step = buffers.max(latency) as f64;
            let tiles = r.tiles as f64;
            // each step costs max(buffers, latency) cycles, plus the last accumulation's drain
            let want = tiles * (200.0 * per_step + (latency as f64 - 1.0) - (per_step - buffers as f64));
            assert_eq!(r.cycles, want, "{buffers} buffers, latency {latency}");
        }
    }

    #[test]
    fn compressed_fifos_never_wait_longer_and_change_nothing_without_zeros() {
        let mut pick = Rng::new(21);
        for case in 0..20 {
            let cfg = DlacConfig {
                rows: 1 + pick.below(8),
                cols: 1 + pick.below(4),
                out_buffers: 1 + pick.below(4),
                window: 1 + pick.below(6),
                scan_rate: 1 + pick.below(3),
                ..DlacConfig::fp32_train()
            };
            let packed = DlacConfig { compressed_fifos: true, ..cfg.clone() };
            let o = random_op(&mut pick, [20, 200, 40]);
            let (plain, comp) = (simulate_op(&o, &cfg, case, None), simulate_op(&o, &packed, case, None));
            assert!(comp.cycles <= plain.cycles, "case {case}: {} > {}", comp.cycles, plain.cycles);
            assert_eq!(comp.executed_macs, plain.executed_macs);
            let dense = op(o.k, o.crs, o.pq, 0.0, 0.0);
            assert_eq!(simulate_op(&dense, &cfg, case, None).cycles, simulate_op(&dense, &packed, case, None).cycles);
        }
        // the fast engine has no FIFOs and no pipeline: it refuses what it would ignore
        use crate::engine::Engine;
        let e = Engine::Fast.check(&DlacConfig { compressed_fifos: true, ..DlacConfig::fp32_train() }).unwrap_err();
        assert!(e.to_string().contains("compressed_fifos"), "{e}");
        let e = Engine::Fast.check(&DlacConfig { fma_latency: 4, ..DlacConfig::fp32_train() }).unwrap_err();
        assert!(e.to_string().contains("fma_latency"), "{e}");
        assert!(Engine::Event
            .check(&DlacConfig { fma_latency: 4, compressed_fifos: true, ..DlacConfig::fp32_train() })
            .is_ok());
    }

    #[test]
    fn all_zero_operands_cost_the_scan() {
        let cfg = DlacConfig::fp32_train();
        let mut src = bernoulli_source(&op(64, 576, 64, 1.0, 0.0), 0, 0);
        let (cycles, executed) = tile_cycles(&cfg, &op(64, 576, 64, 1.0, 0.0), 0, 0, &mut src);
        assert_eq!(executed, 0);
        assert_eq!(cycles, (576f64 / cfg.scan_rate as f64).ceil() as u64);
    }
}
