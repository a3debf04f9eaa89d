//! Whole-workload results: simulate every op of a workload and sum it up (cycles, FLOP/cycle,
//! TFLOP/s at the clock, speedup over no skipping, area and performance density).

use crate::area::Area;
use crate::config::DlacConfig;
use crate::energy::Energy;
use crate::engine::{Engine, OpResult};
use crate::isa::{pt_cycles, pt_instructions};
use crate::masks::OpMasks;
use crate::workload::PtLayer;
use crate::workload::Workload;
use rayon::prelude::*;
use std::path::Path;
use tern_core::masks::MaskRecord;
use tern_core::Result;

/// Simulates every op of `w` (in parallel; op `i` draws its masks from `seed + i`).
pub fn simulate_workload(
    w: &Workload,
    cfg: &DlacConfig,
    engine: Engine,
    seed: u64,
    max_tiles: Option<usize>,
) -> Vec<OpResult> {
    w.ops
        .par_iter()
        .enumerate()
        .map(|(i, op)| engine.simulate_op(op, cfg, seed.wrapping_add(i as u64), max_tiles))
        .collect()
}

/// Simulates every op of `w` on the real zeros of `records` (the profiler's masks.bin).
pub fn simulate_workload_masked(
    w: &Workload,
    cfg: &DlacConfig,
    engine: Engine,
    records: &[MaskRecord],
    source: &Path,
    max_tiles: Option<usize>,
) -> Result<Vec<OpResult>> {
    w.ops
        .par_iter()
        .map(|op| {
            let masks = OpMasks::from_records(op, records, &source.display().to_string())?;
            Ok(engine.simulate_op_masked(op, cfg, &masks, max_tiles))
        })
        .collect()
}

#[derive(Clone, Debug, serde::Serialize)]
pub struct Summary {
    /// `fast` or `event`: which engine simulated the tiles.
    pub engine: &'static str,
    pub config: DlacConfig,
    pub ops: usize,
    pub total_cycles: f64,
    /// Cycles of the forward program's ptWiseOps (BN, ReLU, residual adds), not in
    /// `total_cycles` (Fig. 5 counts mmOps only).
    pub pointwise_cycles: f64,
    /// Equivalent FLOP/cycle of the mmOps with the ptWiseOps' cycles added.
    pub flops_per_cycle_with_pointwise: f64,
    pub dense_cycles: f64,
    /// Dense cycles over simulated cycles, whole workload.
    pub speedup: f64,
    pub flops_per_cycle_overall: f64,
    pub flops_per_cycle_mean_of_layers: f64,
    pub flops_per_cycle_max: f64,
    pub speedup_min: f64,
    pub speedup_max: f64,
    /// Equivalent TFLOP/s at the clock, whole workload.
    pub tflops_at_clock: f64,
    pub dense_flops_per_cycle: f64,
    pub area: Area,
    pub area_mm2: f64,
    pub paper_area_mm2: f64,
    pub tflops_per_mm2: f64,
    /// Only when the workload carries reference FLOP/cycle (a Fig. 5-style CSV).
    pub mean_abs_error_pct: Option<f64>,
    pub max_abs_error_pct: Option<f64>,
    /// Off-chip bytes per image, and the cycles they take at the config's bandwidth.
    pub dram_bytes_per_image: f64,
    /// Cycles with every op taking the longer of its compute and its off-chip transfer.
    pub cycles_with_memory: f64,
    /// Ops whose off-chip transfer takes longer than their compute.
    pub memory_bound_ops: usize,
    /// Off-chip bandwidth the workload needs to run at its simulated compute speed, GB/s.
    pub dram_gb_per_s_needed: f64,
    /// The weight and IFM buffer sizes with which every op reads each operand from DRAM once
    /// (the largest need over the ops), KiB; the config's are `config.*_buffer_kib`.
    pub weight_buffer_kib_needed: f64,
    pub ifm_buffer_kib_needed: f64,
    /// Energy of the mmOps per image (workloads are per image), pJ, and by component.
    pub energy_pj_per_image: f64,
    pub energy_breakdown_pj: Energy,
    /// Energy per useful FLOP: over the multiply-adds with two non-zero operands (2 FLOP each).
    pub pj_per_flop: f64,
    /// Energy per equivalent FLOP (2·K·CRS·PQ, the paper's FLOP/cycle basis).
    pub pj_per_equivalent_flop: f64,
    /// The same workload's energy without zero-skipping, and what skipping saves of it, %.
    pub dense_energy_pj_per_image: f64,
    pub energy_saved_pct: f64,
}

impl Summary {
    /// `pt_layers`: the workload's point-wise layers, counted when it has forward mmOps.
    pub fn new(cfg: &DlacConfig, engine: Engine, results: &[OpResult], pt_layers: &[PtLayer]) -> Summary {
        let has_forward = results.iter().any(|r| r.op.pass == "forward");
        let pointwise: u64 = if has_forward {
            pt_layers.iter().map(|p| pt_instructions(&p.kind) as u64 * pt_cycles(cfg, p.elements)).sum()
        } else {
            0
        };
        let flops: f64 = results.iter().map(|r| 2.0 * r.op.macs() as f64).sum();
        let cycles: f64 = results.iter().map(|r| r.cycles).sum::<f64>().max(1.0);
        let dense: f64 = results.iter().map(|r| r.dense_cycles).sum();
        let n = results.len().max(1) as f64;
        let mean = results.iter().map(|r| r.flops_per_cycle).sum::<f64>() / n;
        let max = results.iter().map(|r| r.flops_per_cycle).fold(0.0, f64::max);
        let smin = results.iter().map(|r| r.speedup).fold(f64::INFINITY, f64::min);
        let smax = results.iter().map(|r| r.speedup).fold(0.0, f64::max);
        let errs: Vec<f64> = results.iter().filter_map(|r| r.error_pct()).map(f64::abs).collect();
        let tflops = flops / cycles * cfg.clock_mhz * 1e6 / 1e12;
        let area = Area::of(cfg);
        let mut e = Energy::default();
        for r in results {
            e.arithmetic += r.energy.arithmetic;
            e.pe_local += r.energy.pe_local;
            e.buffers += r.energy.buffers;
            e.dram += r.energy.dram;
            e.total += r.energy.total;
        }
        let dense_energy: f64 = results.iter().map(|r| r.dense_energy_pj).sum();
        let executed: f64 = results.iter().map(|r| r.executed_macs).sum();
        let dram: f64 = results.iter().map(|r| r.dram_bytes).sum();
        let with_memory: f64 = results.iter().map(|r| r.cycles.max(r.memory_cycles)).sum();
        let needed = results.iter().map(|r| crate::memory::buffers_needed(&r.op, cfg));
        let (w_need, i_need) = needed.fold((0.0f64, 0.0f64), |acc, (w, i)| (acc.0.max(w), acc.1.max(i)));
        Summary {
            engine: engine.name(),
            weight_buffer_kib_needed: w_need / 1024.0,
            ifm_buffer_kib_needed: i_need / 1024.0,
            dram_bytes_per_image: dram,
            cycles_with_memory: with_memory,
            memory_bound_ops: results.iter().filter(|r| r.memory_bound).count(),
            dram_gb_per_s_needed: dram / (cycles / (cfg.clock_mhz * 1e6)) / 1e9,
            energy_pj_per_image: e.total,
            pj_per_flop: e.total / (2.0 * executed).max(1.0),
            pj_per_equivalent_flop: e.total / flops.max(1.0),
            dense_energy_pj_per_image: dense_energy,
            energy_saved_pct: if dense_energy > 0.0 { 100.0 * (1.0 - e.total / dense_energy) } else { 0.0 },
            energy_breakdown_pj: e,
            config: cfg.clone(),
            ops: results.len(),
            total_cycles: cycles,
            pointwise_cycles: pointwise as f64,
            flops_per_cycle_with_pointwise: flops / (cycles + pointwise as f64),
            dense_cycles: dense,
            speedup: dense / cycles,
            flops_per_cycle_overall: flops / cycles,
            flops_per_cycle_mean_of_layers: mean,
            flops_per_cycle_max: max,
            speedup_min: if results.is_empty() { 0.0 } else { smin },
            speedup_max: smax,
            tflops_at_clock: tflops,
            dense_flops_per_cycle: cfg.dense_flops_per_cycle(),
            area_mm2: area.total,
            paper_area_mm2: Area::paper_reference(cfg),
            tflops_per_mm2: tflops / area.total,
            area,
            mean_abs_error_pct: (!errs.is_empty()).then(|| errs.iter().sum::<f64>() / errs.len() as f64),
            max_abs_error_pct: (!errs.is_empty()).then(|| errs.iter().cloned().fold(0.0, f64::max)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::MmOp;

    #[test]
    fn summary_of_dense_ops_runs_at_peak_without_speedup() {
        let cfg = DlacConfig::fp32_train();
        let w = Workload {
            source: "test".into(),
            pt_layers: vec![PtLayer { name: "r".into(), kind: "relu".into(), elements: 1025 }],
            ops: vec![
                MmOp::new("a", "forward", 64, 576, 3072, 0.0, 0.0),
                MmOp::new("b", "forward", 32, 64, 1024, 0.0, 0.0),
            ],
        };
        let r = simulate_workload(&w, &cfg, Engine::Fast, 0, None);
        let s = Summary::new(&cfg, Engine::Fast, &r, &w.pt_layers);
        assert_eq!(s.engine, "fast");
        assert!((s.energy_saved_pct).abs() < 1e-9, "no zeros, nothing saved");
        assert!(s.energy_pj_per_image > 0.0 && s.dram_bytes_per_image > 0.0);
        assert_eq!(s.pointwise_cycles, 3.0);
        assert!(s.flops_per_cycle_with_pointwise < s.flops_per_cycle_overall);
        assert_eq!(s.ops, 2);
        assert!((s.speedup - 1.0).abs() < 1e-12);
        assert!((s.flops_per_cycle_max - cfg.dense_flops_per_cycle()).abs() < 1e-9);
        assert!((s.tflops_per_mm2 - s.tflops_at_clock / s.area_mm2).abs() < 1e-12);
        assert!(s.mean_abs_error_pct.is_none());
    }
}
