//! Energy of a simulated op: per-operation and per-access energies from cited 45 nm figures,
//! scaled to 14 nm, times the counts the engine and the memory model produce.
//!
//! Sources and assumptions:
//!
//! - [H14] M. Horowitz, "Computing's energy problem (and what we can do about it)", ISSCC 2014,
//!   45 nm, 0.9 V: FP32 multiply 3.7 pJ, FP32 add 0.9 pJ, FP16 multiply 1.1 pJ, FP16 add
//!   0.4 pJ; 64-bit SRAM read 10 pJ (8 KB), 20 pJ (32 KB), 100 pJ (1 MB). The SRAM figures
//!   follow `10 pJ · sqrt(KB / 8)` within 13 %, which is used for any capacity.
//! - [E16] Y.-H. Chen, J. Emer, V. Sze, "Eyeriss: A spatial architecture for energy-efficient
//!   dataflow for CNNs", ISCA 2016: a PE's register file is 0.5 KB. The PE-local storage
//!   (operand FIFOs, output buffers) is costed as an SRAM of that size by the law above.
//! - [O17] M. O'Connor et al., "Fine-grained DRAM: energy-efficient DRAM for extreme bandwidth
//!   systems", MICRO 2017: HBM2 3.9 pJ/bit, the config's default `dram_pj_per_bit` (DRAM is
//!   not scaled with the logic node).
//! - Assumption (no single source): logic and SRAM energy scale from 45 nm to 14 nm as C·V²
//!   with C proportional to the feature size and V from 1.0 to 0.8 V: 14/45 · 0.8² ≈ 0.20.
//! - Not modelled: leakage, clock tree, the zero-detect logic's own switching, control.
//!
//! The paper synthesised its buffers from flip-flops; an SRAM-based estimate is lower than
//! what flip-flop storage would spend, so the buffer energies here are a lower bound.

use crate::config::{DlacConfig, Precision};
use crate::engine::OpResult;

/// 45 nm → 14 nm energy factor (assumption above).
pub const ENERGY_SCALE_45_TO_14: f64 = 14.0 / 45.0 * 0.8 * 0.8;
/// One multiply-add at 45 nm [H14], pJ.
pub const FP32_FMA_PJ_45: f64 = 3.7 + 0.9;
pub const FP16_MUL_ADD_PJ_45: f64 = 1.1 + 0.4;
/// PE-local storage size [E16], KB.
pub const PE_LOCAL_KB: f64 = 0.5;
/// Local accesses per executed multiply-add: the two operands out of their FIFOs, the
/// accumulator read and written.
pub const LOCAL_ACCESSES_PER_MAC: f64 = 4.0;

/// Read energy of one 64-bit word from an SRAM of `kb` kilobytes at 45 nm [H14], pJ.
pub fn sram_pj_per_64bit_45(kb: f64) -> f64 {
    10.0 * (kb / 8.0).sqrt()
}

/// Energy of one op (one image), pJ, by where it is spent.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Energy {
    /// Multiply-adds executed (both operands non-zero).
    pub arithmetic: f64,
    /// Operand FIFO writes and reads, accumulator updates inside the PEs.
    pub pe_local: f64,
    /// Reads of the shared weight and IFM buffers (every broadcast value).
    pub buffers: f64,
    pub dram: f64,
    pub total: f64,
}

/// Per-event energies of a config at 14 nm, pJ.
#[derive(Clone, Copy, Debug)]
pub struct UnitEnergies {
    pub mac: f64,
    pub local_word: f64,
    pub buffer_word: f64,
    pub dram_byte: f64,
}

impl UnitEnergies {
    pub fn of(cfg: &DlacConfig) -> Self {
        let s = ENERGY_SCALE_45_TO_14;
        let mac = match cfg.precision {
            Precision::Fp32 => FP32_FMA_PJ_45,
            Precision::Fp16 => FP16_MUL_ADD_PJ_45,
        } * s;
        let word = cfg.word_bits() as f64 / 64.0;
        // a broadcast read comes from one of the two shared buffers, each of its configured size
        let buffer_kb = (cfg.weight_buffer_kib + cfg.ifm_buffer_kib) as f64 * 1.024 / 2.0;
        UnitEnergies {
            mac,
            local_word: sram_pj_per_64bit_45(PE_LOCAL_KB) * word * s,
            buffer_word: sram_pj_per_64bit_45(buffer_kb) * word * s,
            dram_byte: 8.0 * cfg.dram_pj_per_bit,
        }
    }
}

/// Values written into PE operand FIFOs by the broadcasts of `r`'s op: every step, each PE
/// receives its row value and its `out_buffers` column values.
pub fn fifo_writes(r: &OpResult, cfg: &DlacConfig) -> f64 {
    let (m, red, n) = r.op.dims();
    (red * m) as f64 * (n.div_ceil(cfg.out_buffers) + n) as f64
}

/// Energy of `r` with `executed` multiply-adds (the result's own, or the dense count for the
/// same op without skipping).
pub fn energy(r: &OpResult, cfg: &DlacConfig, executed: f64) -> Energy {
    let u = UnitEnergies::of(cfg);
    let arithmetic = executed * u.mac;
    let pe_local = (executed * LOCAL_ACCESSES_PER_MAC + fifo_writes(r, cfg)) * u.local_word;
    let buffers = r.buffer_reads * u.buffer_word;
    let dram = r.dram_bytes * u.dram_byte;
    Energy { arithmetic, pe_local, buffers, dram, total: arithmetic + pe_local + buffers + dram }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sram_law_matches_its_source_points() {
        for (kb, pj) in [(8.0, 10.0), (32.0, 20.0), (1024.0, 100.0)] {
            let got = sram_pj_per_64bit_45(kb);
            assert!((got - pj).abs() / pj < 0.14, "{kb} KB: {got} pJ vs {pj}");
        }
    }

    #[test]
    fn half_precision_spends_less_per_operation() {
        let (f32u, f16u) = (UnitEnergies::of(&DlacConfig::fp32_train()), UnitEnergies::of(&DlacConfig::fp16_infer()));
        assert!(f16u.mac < f32u.mac / 2.0 && f16u.local_word < f32u.local_word);
        assert_eq!(f16u.dram_byte, f32u.dram_byte);
        // 45 nm FP32 FMA 4.6 pJ → ~0.92 pJ at 14 nm
        assert!((f32u.mac - 4.6 * ENERGY_SCALE_45_TO_14).abs() < 1e-12);
    }
}
