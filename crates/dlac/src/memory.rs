//! Off-chip traffic of an mmOp under the buffer capacities: the loop order over output tiles
//! that moves the fewest DRAM bytes, and the cycles those bytes take at the config's bandwidth.
//!
//! The engine computes output-stationary tiles of `rows x cols·out_buffers` outputs, each over
//! its whole reduction. Two loop orders keep one operand on chip:
//!
//! - **rows outer** (`row_resident`): a tile row's row-operand slice (`rows x red` words) stays
//!   in the weight buffer while every column tile streams past; the column operand comes from
//!   DRAM once if all of it fits the IFM buffer, else once per tile row.
//! - **columns outer** (`col_resident`): the mirror image, the column operand's slice resident
//!   in the IFM buffer, the row operand re-read per tile column unless it fits.
//!
//! A resident slice that does not fit its buffer is itself re-read for every tile of the inner
//! loop. Outputs leave once. Operands are counted at their DRAM size, not their lowered one: a
//! convolution's im2col matrix is built on chip from the input feature map (`MmOp::ifm_words`,
//! when the workload knows it; without it the lowered matrix is the upper bound used).

use crate::config::DlacConfig;
use crate::workload::MmOp;

/// DRAM traffic of one op (one image).
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Traffic {
    pub dram_bytes: f64,
    /// `row_resident` or `col_resident`: the loop order that moved the fewest bytes.
    pub loop_order: &'static str,
    /// Cycles the traffic takes at `dram_gb_per_s` and the clock.
    pub memory_cycles: f64,
}

/// Words of the row operand, the column operand and the output as stored in DRAM.
pub fn operand_words(op: &MmOp) -> (f64, f64, f64) {
    let (m, red, n) = op.dims();
    let (a, b, c) = ((m * red) as f64, (red * n) as f64, (m * n) as f64);
    let ifm = op.ifm_words.map(|v| v as f64);
    match op.pass.as_str() {
        // Wᵀ·dY: the output is the lowered input gradient, folded (col2im) into dX on chip
        "backward" => (a, b, ifm.map_or(c, |v| v.min(c))),
        // dY·colᵀ and W·col: the column operand is the lowered input feature map
        _ => (a, ifm.map_or(b, |v| v.min(b)), c),
    }
}

/// The traffic of `op` (one image) on `cfg`, per image: the cheaper of the two loop orders,
/// for the batch of `cfg.batch` images run as one op (their output positions side by side:
/// PQ and the input feature map scale with the batch, the weights do not) or image by image,
/// whichever moves less (a larger operand may stop fitting its buffer).
pub fn traffic(op: &MmOp, cfg: &DlacConfig) -> Traffic {
    let single = traffic_of(op, cfg);
    if cfg.batch == 1 {
        return single;
    }
    let batched = MmOp { pq: op.pq * cfg.batch, ifm_words: op.ifm_words.map(|v| v * cfg.batch as u64), ..op.clone() };
    let mut t = traffic_of(&batched, cfg);
    t.dram_bytes /= cfg.batch as f64;
    t.memory_cycles /= cfg.batch as f64;
    if t.dram_bytes < single.dram_bytes {
        t
    } else {
        single
    }
}

fn traffic_of(op: &MmOp, cfg: &DlacConfig) -> Traffic {
    let (m, red, n) = op.dims();
    let word_bytes = cfg.word_bits() as f64 / 8.0;
    let (a, b, c) = operand_words(op);
    let (mt, nt) = (m.div_ceil(cfg.rows) as f64, n.div_ceil(cfg.cols * cfg.out_buffers) as f64);
    let words = |kib: usize| (kib * 1024) as f64 / word_bytes;
    let (wbuf, ibuf) = (words(cfg.weight_buffer_kib), words(cfg.ifm_buffer_kib));
    // slices one tile needs resident for its whole reduction
    let a_slice = (cfg.rows.min(m) * red) as f64;
    let b_slice = b / nt;
    let reread = |fits: bool, tiles: f64| if fits { 1.0 } else { tiles };
    let row_resident = a * reread(a_slice <= wbuf, nt) + b * reread(b <= ibuf, mt);
    let col_resident = b * reread(b_slice <= ibuf, mt) + a * reread(a <= wbuf, nt);
    let (words_moved, loop_order) = if row_resident <= col_resident {
        (row_resident + c, "row_resident")
    } else {
        (col_resident + c, "col_resident")
    };
    let dram_bytes = words_moved * word_bytes;
    let bytes_per_cycle = cfg.dram_gb_per_s * 1e9 / (cfg.clock_mhz * 1e6);
    Traffic { dram_bytes, loop_order, memory_cycles: dram_bytes / bytes_per_cycle }
}

/// The smallest (weight buffer, IFM buffer) capacities, in bytes, with which `op` reads each
/// operand from DRAM once (image by image): a tile row's weights resident and the whole
/// column operand on chip, or the mirror image, whichever needs less in all.
pub fn buffers_needed(op: &MmOp, cfg: &DlacConfig) -> (f64, f64) {
    let (m, red, n) = op.dims();
    let (a, b, _) = operand_words(op);
    let nt = n.div_ceil(cfg.cols * cfg.out_buffers) as f64;
    let word_bytes = cfg.word_bits() as f64 / 8.0;
    let rows_outer = ((cfg.rows.min(m) * red) as f64, b);
    let cols_outer = (a, b / nt);
    let (w, i) = if rows_outer.0 + rows_outer.1 <= cols_outer.0 + cols_outer.1 { rows_outer } else { cols_outer };
    (w * word_bytes, i * word_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(pass: &str, k: usize, crs: usize, pq: usize) -> MmOp {
        MmOp::new("l", pass, k, crs, pq, 0.0, 0.0)
    }

    #[test]
    fn operands_that_fit_move_exactly_once() {
        let cfg = DlacConfig::fp32_train();
        // 64x576 weights (144 KiB) and a 576x196 column operand (441 KiB lowered, 49 KiB as IFM)
        let mut o = op("forward", 64, 576, 196);
        o.ifm_words = Some(64 * 14 * 14);
        let t = traffic(&o, &cfg);
        let compulsory = (64 * 576 + 64 * 14 * 14 + 64 * 196) as f64 * 4.0;
        assert_eq!(t.dram_bytes, compulsory);
        // without the IFM size the lowered matrix is the (larger) stand-in
        assert!(traffic(&op("forward", 64, 576, 196), &cfg).dram_bytes > compulsory);
    }

    #[test]
    fn a_layer_too_big_for_the_buffers_rereads_the_cheaper_operand() {
        let cfg = DlacConfig::fp32_train();
        // 512x4608 weights (9 MiB) cannot stay; a 4608x49 column operand (882 KiB) cannot either
        let o = op("forward", 512, 4608, 49);
        let t = traffic(&o, &cfg);
        let (a, b, c) = operand_words(&o);
        assert!(t.dram_bytes > (a + b + c) * 4.0, "something is read twice");
        let (mt, nt) = (512f64 / 64.0, 49f64.div_euclid(16.0) + 1.0);
        // neither a tile row's weights (64x4608 words) nor a tile column's inputs (4608x13
        // words) fit 216 KiB: whichever loop is outer, both operands are re-read per tile
        assert_eq!(t.dram_bytes, (a * nt + b * mt + c) * 4.0);
        // with 8x the buffers a tile column's inputs stay, and the weights stream once
        let big = DlacConfig { weight_buffer_kib: 2048, ifm_buffer_kib: 2048, ..cfg.clone() };
        let t = traffic(&o, &big);
        assert_eq!((t.dram_bytes, t.loop_order), ((a + b + c) * 4.0, "row_resident"));
        // bandwidth: bytes over bytes-per-cycle
        assert!((t.memory_cycles - t.dram_bytes / (cfg.dram_gb_per_s / (cfg.clock_mhz * 1e-3))).abs() < 1e-3);
    }

    #[test]
    fn with_the_buffers_it_needs_an_op_reads_everything_once() {
        let mut pick = tern_core::Rng::new(8);
        for _ in 0..30 {
            let pass = ["forward", "backward", "weight_grad"][pick.below(3)];
            let mut o = op(pass, 1 + pick.below(600), 1 + pick.below(5000), 1 + pick.below(4000));
            o.ifm_words = Some((1 + pick.below(o.crs)) as u64 * o.pq as u64);
            let (w, i) = buffers_needed(&o, &DlacConfig::fp32_train());
            let kib = |bytes: f64| (bytes / 1024.0).ceil() as usize;
            let cfg = DlacConfig { weight_buffer_kib: kib(w), ifm_buffer_kib: kib(i), ..DlacConfig::fp32_train() };
            let (a, b, c) = operand_words(&o);
            assert_eq!(traffic(&o, &cfg).dram_bytes, (a + b + c) * 4.0, "{o:?} with {w} + {i} bytes");
        }
    }

    #[test]
    fn a_batch_shares_the_weights() {
        // buffers that hold a tile row's weights (64x4608 words): the batch amortises them
        let big = DlacConfig { weight_buffer_kib: 2048, ifm_buffer_kib: 2048, ..DlacConfig::fp32_train() };
        let o = op("forward", 512, 4608, 49);
        let one = traffic(&o, &big);
        let many = traffic(&o, &DlacConfig { batch: 32, ..big.clone() });
        let (a, b, c) = operand_words(&o);
        assert_eq!(one.dram_bytes, (a + b + c) * 4.0);
        assert!(many.dram_bytes < one.dram_bytes, "{} vs {}", many.dram_bytes, one.dram_bytes);
        // never below the image's own inputs and outputs plus its share of the weights
        assert!(many.dram_bytes >= (a / 32.0 + b + c) * 4.0);
        // and never above image by image
        for cfg in [DlacConfig::fp32_train(), big] {
            for o in [o.clone(), op("weight_grad", 64, 576, 3136), op("forward", 64, 147, 12544)] {
                let b32 = DlacConfig { batch: 32, ..cfg.clone() };
                assert!(traffic(&o, &b32).dram_bytes <= traffic(&o, &cfg).dram_bytes);
            }
        }
    }

    #[test]
    fn the_backward_output_folds_to_the_input_gradient() {
        let cfg = DlacConfig::fp32_train();
        let mut o = op("backward", 64, 576, 3136);
        o.ifm_words = Some(64 * 56 * 56);
        let (_, _, c) = operand_words(&o);
        assert_eq!(c, (64 * 56 * 56) as f64);
        assert!(traffic(&o, &cfg).dram_bytes >= (64 * 576 + 64 * 3136 + 64 * 56 * 56) as f64 * 4.0);
    }
}
