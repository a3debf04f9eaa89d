//! Area model: component counts of a DLAC config times 14 nm unit areas with cited sources.
//!
//! The paper (§4.3) synthesised DLAC "with pure ASIC flow for all the buffers and the
//! arithmetic units (no optimized macro-blocks)", so every storage bit here is a standard-cell
//! flip-flop, not an SRAM bit cell. Unit areas come from 45 nm sources and are scaled to
//! Intel 14 nm by the ratio of Intel's published logic densities:
//!
//! - [H14] M. Horowitz, "Computing's energy problem (and what we can do about it)",
//!   ISSCC 2014, area table for 45 nm: FP32 add 4184 µm², FP32 multiply 7700 µm²,
//!   FP16 add 1360 µm², FP16 multiply 1640 µm².
//! - [NG] NanGate FreePDK45 Open Cell Library: DFF_X1 4.522 µm², NAND2_X1 0.798 µm²
//!   (one gate equivalent).
//! - [B17] M. Bohr, "Let's Clear Up the Node Naming Mess", Intel, 2017: logic transistor
//!   density 3.3 MTr/mm² at 45 nm, 37.5 MTr/mm² at 14 nm, so areas scale by 3.3 / 37.5.
//!
//! Assumption (no source): the per-PE zero-detect and skip scheduler is 400 gate
//! equivalents. The paper gives no buffer capacities; the presets' weight and IFM buffer
//! sizes are the one unknown per preset and were chosen (16 KiB steps) to close the reported
//! area (DLAC.md).

use crate::config::{DlacConfig, Precision};

/// 45 nm → Intel 14 nm area factor [B17].
pub const SCALE_45_TO_14: f64 = 3.3 / 37.5;
/// FP32 fused multiply-add ≈ multiplier + adder [H14], µm² at 14 nm.
pub const FP32_FMA_UM2: f64 = (7700.0 + 4184.0) * SCALE_45_TO_14;
/// FP16 multiplier + FP16 adder [H14], µm² at 14 nm.
pub const FP16_MUL_ADD_UM2: f64 = (1640.0 + 1360.0) * SCALE_45_TO_14;
/// One flip-flop bit [NG], µm² at 14 nm.
pub const FLOP_BIT_UM2: f64 = 4.522 * SCALE_45_TO_14;
/// One gate equivalent (NAND2) [NG], µm² at 14 nm.
pub const GATE_UM2: f64 = 0.798 * SCALE_45_TO_14;
/// Zero-detect and skip scheduling logic per PE, gate equivalents (assumption).
pub const CONTROL_GATES_PER_PE: f64 = 400.0;

/// The paper's synthesised areas (§4.3), mm².
pub const PAPER_FP32_MM2: f64 = 2.2;
pub const PAPER_FP16_MM2: f64 = 1.09;

/// Area of one instance by component, mm².
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Area {
    /// Multiply-add units of every PE.
    pub arithmetic: f64,
    /// The PEs' output buffers (accumulators).
    pub output_buffers: f64,
    /// Operand FIFOs that give the scheduler its look-ahead window.
    pub operand_fifos: f64,
    /// Zero-detect and skip scheduling logic.
    pub control: f64,
    /// Shared weight and input-feature-map buffers.
    pub weight_ifm_buffers: f64,
    pub total: f64,
}

impl Area {
    pub fn of(cfg: &DlacConfig) -> Area {
        let pes = (cfg.rows * cfg.cols) as f64;
        let bits = cfg.word_bits() as f64;
        let unit = match cfg.precision {
            Precision::Fp32 => FP32_FMA_UM2,
            Precision::Fp16 => FP16_MUL_ADD_UM2,
        };
        let um2 = 1e-6; // µm² → mm²
        let arithmetic = pes * cfg.units as f64 * unit * um2;
        let output_buffers = pes * (cfg.out_buffers as f64 * bits) * FLOP_BIT_UM2 * um2;
        // one row value and `out_buffers` column values per step of the window
        let operand_fifos = pes * (cfg.window * (1 + cfg.out_buffers)) as f64 * bits * FLOP_BIT_UM2 * um2;
        let control = pes * CONTROL_GATES_PER_PE * GATE_UM2 * um2;
        let weight_ifm_buffers = ((cfg.weight_buffer_kib + cfg.ifm_buffer_kib) * 1024 * 8) as f64 * FLOP_BIT_UM2 * um2;
        let total = arithmetic + output_buffers + operand_fifos + control + weight_ifm_buffers;
        Area { arithmetic, output_buffers, operand_fifos, control, weight_ifm_buffers, total }
    }

    /// The paper's area for a config of this precision, for comparison.
    pub fn paper_reference(cfg: &DlacConfig) -> f64 {
        match cfg.precision {
            Precision::Fp32 => PAPER_FP32_MM2,
            Precision::Fp16 => PAPER_FP16_MM2,
        }
    }

    /// (component, mm²) pairs, for tables.
    pub fn parts(&self) -> [(&'static str, f64); 5] {
        [
            ("arithmetic units", self.arithmetic),
            ("output buffers", self.output_buffers),
            ("operand FIFOs (window)", self.operand_fifos),
            ("zero-skip control", self.control),
            ("weight + IFM buffers", self.weight_ifm_buffers),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_reproduce_the_papers_area_within_5_percent() {
        for (cfg, paper) in [(DlacConfig::fp32_train(), 2.2), (DlacConfig::fp16_infer(), 1.09)] {
            let a = Area::of(&cfg);
            let err = (a.total - paper).abs() / paper;
            assert!(err < 0.05, "{}: {:.3} mm² vs paper {paper} ({:.1}% off)", cfg.name, a.total, 100.0 * err);
            let parts: f64 = a.parts().iter().map(|p| p.1).sum();
            assert!((parts - a.total).abs() < 1e-12);
        }
    }

    #[test]
    fn area_grows_with_every_component() {
        let base = DlacConfig::fp32_train();
        let a0 = Area::of(&base).total;
        for bigger in [
            DlacConfig { rows: base.rows + 1, ..base.clone() },
            DlacConfig { units: 2, ..base.clone() },
            DlacConfig { out_buffers: base.out_buffers + 1, ..base.clone() },
            DlacConfig { window: base.window + 1, ..base.clone() },
            DlacConfig { weight_buffer_kib: base.weight_buffer_kib + 1, ..base.clone() },
        ] {
            assert!(Area::of(&bigger).total > a0, "{bigger:?}");
        }
        // half precision halves every datapath and storage bit
        let half = DlacConfig { precision: Precision::Fp16, ..base.clone() };
        assert!(Area::of(&half).total < a0);
    }
}
