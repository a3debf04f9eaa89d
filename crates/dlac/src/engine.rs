//! The cycle engine. A lowered mmOp `[m x red]·[red x n]` is cut into tiles of
//! `rows` output rows x `cols · out_buffers` output columns. In a tile, every reduction step
//! broadcasts one row-operand value per PE row and `out_buffers` column-operand values per
//! PE column. A PE's work in a step is the number of its multiply-adds with two non-zero
//! operands: 0 if its row value is zero, else the non-zero count of its column values; it
//! takes ceil(work / units) cycles. Within a window of `window` steps the PEs run
//! independently (operand FIFOs); the window ends when the slowest PE is done, and no PE can
//! get through the window faster than `window / scan_rate` cycles (the zero-detect scan).
//! Operand zeros are drawn as independent Bernoulli masks from the op's zero fractions
//! (probabilities rounded to 1/4096), 64 steps per random word.

use crate::config::{DlacConfig, Orientation};
use crate::energy::{self, Energy};
use crate::masks::OpMasks;
use crate::memory;
use crate::workload::MmOp;
use rayon::prelude::*;
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
    /// Words read from the weight and IFM buffers (every broadcast operand value, zero or
    /// not: the scheduler must see a value to skip it).
    pub buffer_reads: f64,
    /// Multiply-adds executed (both operands non-zero).
    pub executed_macs: f64,
    /// Multiply-adds actually executed over (cycles x units).
    pub utilisation: f64,
    /// Tiles simulated cycle by cycle (the rest are taken as the mean of these).
    pub tiles_simulated: usize,
    pub tiles: usize,
    /// Where the op's first operand (the weights, forward) ran: along the PE `rows`, or
    /// `columns` when the op was swapped (`swap_operands` or the orientation rule).
    pub first_operand_on: &'static str,
    /// Off-chip bytes moved (the cheaper loop order under the buffer capacities).
    pub dram_bytes: f64,
    pub loop_order: &'static str,
    /// Cycles the off-chip traffic takes at the config's bandwidth; the op is memory-bound
    /// when they exceed its compute cycles (traffic overlapped with compute, double-buffered).
    pub memory_cycles: f64,
    pub memory_bound: bool,
    /// Energy of the op (one image), pJ, by component.
    pub energy: Energy,
    /// The same op's energy without zero-skipping (every multiply-add executed), pJ.
    pub dense_energy_pj: f64,
}

impl OpResult {
    /// Builds a result from an engine's counts, adding the memory and energy models.
    #[allow(clippy::too_many_arguments)]
    pub fn from_counts(
        op: &MmOp,
        cfg: &DlacConfig,
        cycles: f64,
        dense_cycles: f64,
        buffer_reads: f64,
        executed_macs: f64,
        tiles_simulated: usize,
        tiles: usize,
    ) -> OpResult {
        let t = memory::traffic(op, cfg);
        let mut r = OpResult {
            op: op.clone(),
            cycles,
            dense_cycles,
            flops_per_cycle: 2.0 * op.macs() as f64 / cycles.max(1.0),
            speedup: dense_cycles / cycles.max(1.0),
            buffer_reads,
            executed_macs,
            utilisation: executed_macs / (cycles.max(1.0) * cfg.total_units() as f64),
            tiles_simulated,
            tiles,
            first_operand_on: "rows",
            dram_bytes: t.dram_bytes,
            loop_order: t.loop_order,
            memory_cycles: t.memory_cycles,
            memory_bound: t.memory_cycles > cycles,
            energy: Energy::default(),
            dense_energy_pj: 0.0,
        };
        r.energy = energy::energy(&r, cfg, executed_macs);
        r.dense_energy_pj = energy::energy(&r, cfg, op.macs() as f64).total;
        r
    }

    /// Signed error of the simulated FLOP/cycle against the op's reference, percent.
    pub fn error_pct(&self) -> Option<f64> {
        self.op.reference_flops_per_cycle.map(|p| 100.0 * (self.flops_per_cycle - p) / p)
    }
}

/// Cycles of one tile without skipping: every step costs ceil(widest PE column / units), and
/// no window is faster than reading its operands.
fn dense_tile_cycles(cfg: &DlacConfig, red: usize, widest: usize, words_per_step: usize) -> u64 {
    let window = |steps: usize| {
        let compute = (steps * widest.div_ceil(cfg.units)) as u64;
        compute.max((steps * words_per_step).div_ceil(cfg.read_words_per_cycle) as u64)
    };
    (red / cfg.window) as u64 * window(cfg.window)
        + if red.is_multiple_of(cfg.window) { 0 } else { window(red % cfg.window) }
}

/// Precision of the Bernoulli probabilities: p is rounded to a multiple of 2^-P_BITS.
const P_BITS: u32 = 12;

fn fixed_prob(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * (1u32 << P_BITS) as f64).round() as u32
}

/// 64 independent Bernoulli(pf / 2^P_BITS) bits from at most P_BITS random words: walking
/// pf's bits from the lowest set one up, `w = bit ? w | r : w & r` leaves each bit of w set
/// with probability exactly pf / 2^P_BITS (one uniform draw per bit would cost 64 draws).
fn bernoulli_word(rng: &mut Rng, pf: u32) -> u64 {
    if pf == 0 {
        return 0;
    }
    if pf >= 1 << P_BITS {
        return !0;
    }
    let mut w = 0u64;
    for i in pf.trailing_zeros()..P_BITS {
        let r = rng.next_u64();
        w = if pf >> i & 1 == 1 { w | r } else { w & r };
    }
    w
}

/// The fewest cycles a window of `steps` can take whatever its zeros: the zero-detect scan,
/// and reading its broadcast operands (`words_per_step` each step) from the buffers.
fn window_floor(cfg: &DlacConfig, steps: usize, words_per_step: usize) -> u64 {
    let scan = steps.div_ceil(cfg.scan_rate);
    let reads = (steps * words_per_step).div_ceil(cfg.read_words_per_cycle);
    scan.max(reads) as u64
}

/// Where a tile's operand zeros come from: `row(i, s0, len)` is the non-zero bit set of the
/// row operand's global row `i` over reduction steps `[s0, s0 + len)`, `col(l, ..)` the same
/// for output column `l`. Called rows first, then columns in order, block by block.
pub trait OperandBits {
    fn row(&mut self, i: usize, s0: usize, len: usize) -> u64;
    fn col(&mut self, l: usize, s0: usize, len: usize) -> u64;
}

/// Independent Bernoulli draws from the op's zero fractions.
struct Bernoulli {
    rng: Rng,
    p_row: u32,
    p_col: u32,
}

impl OperandBits for Bernoulli {
    #[inline]
    fn row(&mut self, _: usize, _: usize, _: usize) -> u64 {
        bernoulli_word(&mut self.rng, self.p_row)
    }
    #[inline]
    fn col(&mut self, _: usize, _: usize, _: usize) -> u64 {
        bernoulli_word(&mut self.rng, self.p_col)
    }
}

/// The real zeros of one op (the profiler's masks).
impl OperandBits for &OpMasks {
    #[inline]
    fn row(&mut self, i: usize, s0: usize, len: usize) -> u64 {
        self.a.bits(i, s0, len)
    }
    #[inline]
    fn col(&mut self, l: usize, s0: usize, len: usize) -> u64 {
        self.bt.bits(l, s0, len)
    }
}

fn low_bits(n: usize) -> u64 {
    if n >= 64 {
        !0
    } else {
        (1u64 << n) - 1
    }
}

/// Simulates tile `(mt, nt)`; returns (cycles, executed multiply-adds).
///
/// Steps go in blocks of up to 64 (a whole number of windows where the window fits), and the
/// operand masks of a block are bit sets over its steps: one word per PE row (row operand
/// non-zero) and, per PE column, bit-planes of its per-step cycle count. A PE's time in a
/// window is then Σ_k 2^k · popcount(row & plane_k & window): no per-step, per-PE loop.
fn tile_cycles<S: OperandBits>(cfg: &DlacConfig, op: &MmOp, mt: usize, nt: usize, src: &mut S) -> (u64, u64) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("popcnt") {
        // SAFETY: the CPU has POPCNT (checked above).
        return unsafe { tile_cycles_popcnt(cfg, op, mt, nt, src) };
    }
    tile_cycles_body(cfg, op, mt, nt, src)
}

/// The same body compiled with the POPCNT instruction (the baseline x86-64 target lacks it,
/// and the software popcount was two thirds of the simulation time).
///
/// # Safety
/// The CPU must support POPCNT (checked by the caller with `is_x86_feature_detected!`); the
/// arguments are those of the safe twin, whose bounds it keeps.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "popcnt")]
unsafe fn tile_cycles_popcnt<S: OperandBits>(
    cfg: &DlacConfig,
    op: &MmOp,
    mt: usize,
    nt: usize,
    src: &mut S,
) -> (u64, u64) {
    tile_cycles_body(cfg, op, mt, nt, src)
}

#[inline(always)]
fn tile_cycles_body<S: OperandBits>(cfg: &DlacConfig, op: &MmOp, mt: usize, nt: usize, src: &mut S) -> (u64, u64) {
    let (m, red, n) = op.dims();
    let b = cfg.out_buffers;
    let rows_valid = (m - mt * cfg.rows).min(cfg.rows);
    let width: Vec<usize> = (0..cfg.cols).map(|j| n.saturating_sub(nt * cfg.cols * b + j * b).min(b)).collect();
    let max_step_cycles = b.div_ceil(cfg.units);
    let planes = (usize::BITS - max_step_cycles.leading_zeros()) as usize;
    let block = if cfg.window <= 64 { 64 / cfg.window * cfg.window } else { 64 };
    let mut row_bits = vec![0u64; rows_valid];
    let mut col_planes = vec![0u64; cfg.cols * planes];
    let mut col_words = vec![0u64; b];
    let mut pe_time = vec![0u64; rows_valid * cfg.cols];
    let (mut total, mut executed) = (0u64, 0u64);
    let words_per_step = rows_valid + width.iter().sum::<usize>();
    let mut win_steps = cfg.window.min(red);
    let mut win_left = win_steps;
    let mut step = 0;
    while step < red {
        let len = block.min(red - step);
        let valid = low_bits(len);
        for (i, w) in row_bits.iter_mut().enumerate() {
            *w = src.row(mt * cfg.rows + i, step, len) & valid;
        }
        for (j, &wj) in width.iter().enumerate() {
            let cp = &mut col_planes[j * planes..(j + 1) * planes];
            cp.iter_mut().for_each(|w| *w = 0);
            let l0 = nt * cfg.cols * b + j * b;
            for (k, w) in col_words[..wj].iter_mut().enumerate() {
                *w = src.col(l0 + k, step, len) & valid;
            }
            if cfg.units == 1 {
                // bit-sliced counter: cp holds the per-step non-zero count, one plane per bit
                for &x in &col_words[..wj] {
                    let mut carry = x;
                    for plane in cp.iter_mut() {
                        let t = *plane & carry;
                        *plane ^= carry;
                        carry = t;
                    }
                }
            } else {
                for s in 0..len {
                    let nz: usize = col_words[..wj].iter().map(|w| (w >> s & 1) as usize).sum();
                    let c = nz.div_ceil(cfg.units);
                    for (k, plane) in cp.iter_mut().enumerate() {
                        *plane |= ((c >> k & 1) as u64) << s;
                    }
                }
                for &rw in &row_bits {
                    executed += col_words[..wj].iter().map(|&x| (rw & x).count_ones() as u64).sum::<u64>();
                }
            }
        }
        // the windows (or window pieces) inside this block
        let mut off = 0;
        while off < len {
            let seg = win_left.min(len - off);
            let mask = low_bits(seg) << off;
            for (i, &row) in row_bits.iter().enumerate() {
                let rw = row & mask;
                if rw == 0 {
                    continue;
                }
                let pt = &mut pe_time[i * cfg.cols..(i + 1) * cfg.cols];
                if planes == 2 {
                    // the common case (2 output buffers, 1 unit), unrolled
                    for (t, cp) in pt.iter_mut().zip(col_planes.chunks_exact(2)) {
                        *t += ((rw & cp[0]).count_ones() + 2 * (rw & cp[1]).count_ones()) as u64;
                    }
                } else {
                    for (t, cp) in pt.iter_mut().zip(col_planes.chunks_exact(planes)) {
                        for (k, &plane) in cp.iter().enumerate() {
                            *t += ((rw & plane).count_ones() as u64) << k;
                        }
                    }
                }
            }
            off += seg;
            win_left -= seg;
            if win_left == 0 {
                // one pass: the slowest PE, the work done (one multiply-add per cycle when
                // units == 1), and the reset for the next window
                let (mut slowest, mut work) = (0u64, 0u64);
                for t in pe_time.iter_mut() {
                    slowest = slowest.max(*t);
                    work += *t;
                    *t = 0;
                }
                if cfg.units == 1 {
                    executed += work;
                }
                total += slowest.max(window_floor(cfg, win_steps, words_per_step));
                win_steps = cfg.window.min(red - (step + off));
                win_left = win_steps;
            }
        }
        step += len;
    }
    (total, executed)
}

/// Which engine simulates the tiles.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// Window-barrier throughput model on bit sets (this module): PEs run free within a
    /// window of steps and meet at its end.
    Fast,
    /// Step-by-step, PE-by-PE event simulation with decoupled operand FIFOs, broadcast
    /// stalls and the FP pipeline's latency ([`crate::event`]).
    Event,
}

impl Engine {
    pub fn parse(s: &str) -> Option<Engine> {
        match s {
            "fast" => Some(Engine::Fast),
            "event" => Some(Engine::Event),
            _ => None,
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Engine::Fast => "fast",
            Engine::Event => "event",
        }
    }
    /// Refuses a config with options this engine would ignore (the fast engine has no FIFOs
    /// and no FP pipeline), naming the field.
    pub fn check(self, cfg: &DlacConfig) -> tern_core::Result<()> {
        if self == Engine::Fast {
            if cfg.fma_latency > 1 {
                return Err(tern_core::Error::invalid(
                    "fma_latency",
                    format!("{}: only the event engine models the FP pipeline (--engine event)", cfg.fma_latency),
                ));
            }
            if cfg.compressed_fifos {
                return Err(tern_core::Error::invalid(
                    "compressed_fifos",
                    "only the event engine models operand FIFOs (--engine event)",
                ));
            }
        }
        Ok(())
    }

    /// One op on Bernoulli masks drawn from its zero fractions (input zeros on the feature
    /// map where `cfg.feature_map_zeros` asks and the op's convolution is known).
    pub fn simulate_op(self, op: &MmOp, cfg: &DlacConfig, seed: u64, max_tiles: Option<usize>) -> OpResult {
        if cfg.feature_map_zeros {
            if let Some(m) = OpMasks::bernoulli_feature_map(op, seed, cfg.dead_channel_share) {
                return self.simulate_op_masked(op, cfg, &m, max_tiles);
            }
        }
        let run = |o: &MmOp| match self {
            Engine::Fast => simulate_op(o, cfg, seed, max_tiles),
            Engine::Event => crate::event::simulate_op(o, cfg, seed, max_tiles),
        };
        if swaps(cfg, op) {
            unswapped(op, cfg, run(&swapped(op)))
        } else {
            run(op)
        }
    }
    /// One op on its real masks.
    pub fn simulate_op_masked(
        self,
        op: &MmOp,
        cfg: &DlacConfig,
        masks: &OpMasks,
        max_tiles: Option<usize>,
    ) -> OpResult {
        let run = |o: &MmOp, m: &OpMasks| match self {
            Engine::Fast => simulate_op_masked(o, cfg, m, max_tiles),
            Engine::Event => crate::event::simulate_op_masked(o, cfg, m, max_tiles),
        };
        if swaps(cfg, op) {
            let m = OpMasks { a: masks.bt.clone(), bt: masks.a.clone() };
            let r = run(&swapped(op), &m);
            let real = MmOp { row_zero: r.op.col_zero, col_zero: r.op.row_zero, ..op.clone() };
            unswapped(&real, cfg, r)
        } else {
            run(op, masks)
        }
    }
}

/// A result simulated on the swapped op, reported for `op` (memory and energy of `op`).
fn unswapped(op: &MmOp, cfg: &DlacConfig, r: OpResult) -> OpResult {
    let r = OpResult::from_counts(
        op,
        cfg,
        r.cycles,
        r.dense_cycles,
        r.buffer_reads,
        r.executed_macs,
        r.tiles_simulated,
        r.tiles,
    );
    OpResult { first_operand_on: "columns", ..r }
}

/// `op` with its operands exchanged: `[n x red]·[red x m]`, written as a forward op (whose
/// lowering is `(k, crs, pq)`), zero fractions swapped. The memory model still sees the
/// original op (the result's `op` is set back by the caller).
fn swapped(op: &MmOp) -> MmOp {
    let (m, red, n) = op.dims();
    MmOp { pass: "forward".into(), k: n, crs: red, pq: m, row_zero: op.col_zero, col_zero: op.row_zero, ..op.clone() }
}

/// The Bernoulli operand source of tile `t` of `op`: every tile draws from its own stream
/// (seed, tile), so results do not depend on the thread count, on which tiles are sampled
/// alongside it, or on the engine.
pub(crate) fn bernoulli_source(op: &MmOp, seed: u64, t: usize) -> impl OperandBits {
    let (p_row, p_col) = (fixed_prob(1.0 - op.row_zero), fixed_prob(1.0 - op.col_zero));
    Bernoulli { rng: Rng::new(seed ^ (t as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)), p_row, p_col }
}

/// Simulates one op. `max_tiles` bounds the tiles simulated cycle by cycle (spread evenly
/// over the op; the others count as their mean); None simulates all of them.
pub fn simulate_op(op: &MmOp, cfg: &DlacConfig, seed: u64, max_tiles: Option<usize>) -> OpResult {
    run_tiles_with(op, cfg, max_tiles, |t| bernoulli_source(op, seed, t), tile_cycles)
}

/// Simulates one op on its real operand masks; the result's zero fractions are the masks'.
pub fn simulate_op_masked(op: &MmOp, cfg: &DlacConfig, masks: &OpMasks, max_tiles: Option<usize>) -> OpResult {
    let mut r = run_tiles_with(op, cfg, max_tiles, |_| masks, tile_cycles);
    (r.op.row_zero, r.op.col_zero) = (masks.a.zero_fraction(), masks.bt.zero_fraction());
    r
}

/// A tile engine: (cycles, executed multiply-adds) of tile `(mt, nt)`.
pub(crate) type TileFn<S> = fn(&DlacConfig, &MmOp, usize, usize, &mut S) -> (u64, u64);

/// Runs `tile` over the op's tiles (or `max_tiles` of them) in parallel and adds the analytic
/// counts (dense cycles, buffer reads) and the memory and energy models.
pub(crate) fn run_tiles_with<S: OperandBits>(
    op: &MmOp,
    cfg: &DlacConfig,
    max_tiles: Option<usize>,
    source: impl Fn(usize) -> S + Sync,
    tile: TileFn<S>,
) -> OpResult {
    let (m, red, n) = op.dims();
    let (mt_count, nt_count) = (m.div_ceil(cfg.rows), n.div_ceil(cfg.cols * cfg.out_buffers));
    let tiles = mt_count * nt_count;
    let partial = (!m.is_multiple_of(cfg.rows), !n.is_multiple_of(cfg.cols * cfg.out_buffers));
    let chosen = sample_tiles(mt_count, nt_count, partial, max_tiles);
    let (cycles, executed) = chosen
        .par_iter()
        .map(|&(t, weight)| {
            let (c, e) = tile(cfg, op, t / nt_count, t % nt_count, &mut source(t));
            (c as f64 * weight, e as f64 * weight)
        })
        .reduce(|| (0.0, 0.0), |a, b| (a.0 + b.0, a.1 + b.1));
    // Buffer reads are analytic: every step of every tile reads its valid rows and columns.
    let reads = (red * (m * nt_count + n * mt_count)) as u64;
    let dense = dense_cycles(cfg, m, red, n);
    OpResult::from_counts(op, cfg, cycles, dense as f64, reads as f64, executed, chosen.len(), tiles)
}

/// Cycles of `[m x red]·[red x n]` without skipping, the first operand on PE rows: analytic,
/// per tile and window.
fn dense_cycles(cfg: &DlacConfig, m: usize, red: usize, n: usize) -> u64 {
    let b = cfg.out_buffers;
    let mut dense = 0u64;
    for first in (0..n).step_by(cfg.cols * b) {
        let widest = (n - first).min(b);
        let cols_words = n.min(first + cfg.cols * b) - first;
        for first_row in (0..m).step_by(cfg.rows) {
            let rows_valid = (m - first_row).min(cfg.rows);
            dense += dense_tile_cycles(cfg, red, widest, rows_valid + cols_words);
        }
    }
    dense
}

/// Whether `op` runs swapped (its first operand along the PE columns): `swap_operands`, or
/// as the config's [`Orientation`] rule decides for this op (a tie keeps `swap_operands`).
pub(crate) fn swaps(cfg: &DlacConfig, op: &MmOp) -> bool {
    let (m, red, n) = op.dims();
    // (cost as given, cost swapped): the side with the lower cost wins
    let (plain, swapped) = match cfg.orientation {
        Orientation::Fixed => return cfg.swap_operands,
        Orientation::FewestDenseCycles => (dense_cycles(cfg, m, red, n), dense_cycles(cfg, n, red, m)),
        // the larger output dimension along the longer side: a tile is `rows` high and
        // `cols · out_buffers` wide, and the first operand's dimension `m` runs along its height
        Orientation::LargerAlongLonger if cfg.rows >= cfg.cols * cfg.out_buffers => (n as u64, m as u64),
        Orientation::LargerAlongLonger => (m as u64, n as u64),
    };
    if plain == swapped {
        cfg.swap_operands
    } else {
        swapped < plain
    }
}

/// The tiles to simulate, with the number of tiles each stands for: all of them, or at most
/// about `max_tiles` stratified by shape — interior tiles, the last tile row, the last tile
/// column and the corner, when those are partial (they cost less, and evenly spaced indices
/// can alias with the tile columns and miss them all) — each stratum sampled evenly and
/// weighted by its size.
fn sample_tiles(
    mt_count: usize,
    nt_count: usize,
    (m_partial, n_partial): (bool, bool),
    max_tiles: Option<usize>,
) -> Vec<(usize, f64)> {
    let tiles = mt_count * nt_count;
    let budget = match max_tiles {
        Some(t) if t < tiles => t.max(1),
        _ => return (0..tiles).map(|t| (t, 1.0)).collect(),
    };
    let mut strata: [Vec<usize>; 4] = Default::default();
    for t in 0..tiles {
        let last_row = m_partial && t / nt_count == mt_count - 1;
        let last_col = n_partial && t % nt_count == nt_count - 1;
        strata[2 * last_row as usize + last_col as usize].push(t);
    }
    let mut chosen = Vec::new();
    for s in strata.iter().filter(|s| !s.is_empty()) {
        let k = ((budget * s.len()) as f64 / tiles as f64).round().clamp(1.0, s.len() as f64) as usize;
        let weight = s.len() as f64 / k as f64;
        chosen.extend((0..k).map(|i| (s[i * s.len() / k], weight)));
    }
    chosen
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
        // with starved buffers too, and then reads, not compute, set the pace
        let slow = DlacConfig { read_words_per_cycle: 8, ..cfg.clone() };
        let o = op(64, 576, 3072, 0.0, 0.0);
        let r = simulate_op(&o, &slow, 1, None);
        assert_eq!(r.cycles, r.dense_cycles);
        assert!(r.cycles >= r.buffer_reads / 8.0 && r.dense_cycles > simulate_op(&o, &cfg, 1, None).dense_cycles);
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

    /// The plain twin of `tile_cycles`: the same random words in the same order, then a
    /// step-by-step, PE-by-PE walk over each window.
    fn tile_cycles_reference(cfg: &DlacConfig, op: &MmOp, mt: usize, nt: usize, rng: &mut Rng) -> (u64, u64) {
        let (m, red, n) = op.dims();
        let b = cfg.out_buffers;
        let rows = (m - mt * cfg.rows).min(cfg.rows);
        let width: Vec<usize> = (0..cfg.cols).map(|j| n.saturating_sub(nt * cfg.cols * b + j * b).min(b)).collect();
        let (p_row, p_col) = (fixed_prob(1.0 - op.row_zero), fixed_prob(1.0 - op.col_zero));
        let block = if cfg.window <= 64 { 64 / cfg.window * cfg.window } else { 64 };
        // row_nz[s][i], col_nz[s][j]: whole-op masks, drawn block by block like the engine
        let (mut row_nz, mut col_nz) = (vec![vec![false; rows]; red], vec![vec![0usize; cfg.cols]; red]);
        let mut step = 0;
        while step < red {
            let len = block.min(red - step);
            let words: Vec<u64> = (0..rows).map(|_| bernoulli_word(rng, p_row)).collect();
            for (i, w) in words.iter().enumerate() {
                for s in 0..len {
                    row_nz[step + s][i] = w >> s & 1 == 1;
                }
            }
            for (j, &wj) in width.iter().enumerate() {
                for _ in 0..wj {
                    let w = bernoulli_word(rng, p_col);
                    for s in 0..len {
                        col_nz[step + s][j] += (w >> s & 1) as usize;
                    }
                }
            }
            step += len;
        }
        let (mut total, mut executed) = (0u64, 0u64);
        for w0 in (0..red).step_by(cfg.window) {
            let steps = cfg.window.min(red - w0);
            let mut slowest = 0u64;
            for i in 0..rows {
                for j in 0..cfg.cols {
                    let mut t = 0u64;
                    for s in w0..w0 + steps {
                        if row_nz[s][i] {
                            t += col_nz[s][j].div_ceil(cfg.units) as u64;
                            executed += col_nz[s][j] as u64;
                        }
                    }
                    slowest = slowest.max(t);
                }
            }
            total += slowest.max(window_floor(cfg, steps, rows + width.iter().sum::<usize>()));
        }
        (total, executed)
    }

    #[test]
    fn tile_engine_agrees_with_its_step_by_step_twin() {
        let mut pick = Rng::new(11);
        for case in 0..40 {
            let cfg = DlacConfig {
                rows: 1 + pick.below(5),
                cols: 1 + pick.below(5),
                out_buffers: 1 + pick.below(6),
                window: [1, 3, 7, 16, 64, 100][pick.below(6)],
                scan_rate: 1 + pick.below(4),
                read_words_per_cycle: 1 + pick.below(40),
                ..DlacConfig::fp32_train()
            };
            let cfg = DlacConfig { units: 1 + pick.below(cfg.out_buffers), ..cfg };
            let (k, crs, pq) = (1 + pick.below(13), 1 + pick.below(300), 1 + pick.below(40));
            let o = op(k, crs, pq, pick.uniform() as f64, pick.uniform() as f64);
            let (m, _, n) = o.dims();
            let (mt, nt) = (pick.below(m.div_ceil(cfg.rows)), pick.below(n.div_ceil(cfg.cols * cfg.out_buffers)));
            let (p_row, p_col) = (fixed_prob(1.0 - o.row_zero), fixed_prob(1.0 - o.col_zero));
            let fast = tile_cycles(&cfg, &o, mt, nt, &mut Bernoulli { rng: Rng::new(case), p_row, p_col });
            let slow = tile_cycles_reference(&cfg, &o, mt, nt, &mut Rng::new(case));
            assert_eq!(fast, slow, "case {case}: {cfg:?} {o:?} tile ({mt}, {nt})");
        }
    }

    #[test]
    fn real_masks_execute_exactly_the_non_zero_pairs() {
        use crate::masks::BitMatrix;
        let mut pick = Rng::new(3);
        for case in 0..12 {
            let cfg = DlacConfig {
                rows: 1 + pick.below(6),
                cols: 1 + pick.below(6),
                out_buffers: 1 + pick.below(4),
                window: [3, 16, 64, 80][pick.below(4)],
                ..DlacConfig::fp32_train()
            };
            let (m, red, n) = (1 + pick.below(20), 1 + pick.below(200), 1 + pick.below(50));
            let seed = pick.next_u64();
            let bit = |r: usize, c: usize, salt: u64| (r as u64 * 7919 + c as u64 * 104729 + salt + seed) % 5 < 2;
            let masks = OpMasks {
                a: BitMatrix::from_fn(m, red, |r, c| bit(r, c, 1)),
                bt: BitMatrix::from_fn(n, red, |r, c| bit(r, c, 2)),
            };
            let o = op(m, red, n, 0.0, 0.0);
            let r = simulate_op_masked(&o, &cfg, &masks, None);
            let mut want = 0u64;
            for i in 0..m {
                for l in 0..n {
                    want += (0..red).filter(|&s| bit(i, s, 1) && bit(l, s, 2)).count() as u64;
                }
            }
            assert_eq!(r.executed_macs, want as f64, "case {case}: {cfg:?} {m}x{red}x{n}");
            assert!(r.cycles <= r.dense_cycles);
            assert!((r.op.row_zero - masks.a.zero_fraction()).abs() < 1e-12);
        }
        // all-non-zero masks cost exactly the dense cycles
        let full = OpMasks { a: BitMatrix::from_fn(37, 50, |_, _| true), bt: BitMatrix::from_fn(333, 50, |_, _| true) };
        let r = simulate_op_masked(&op(37, 50, 333, 0.0, 0.0), &DlacConfig::fp32_train(), &full, None);
        assert_eq!(r.cycles, r.dense_cycles);
    }

    #[test]
    fn orientation_rules_pick_the_side_they_name() {
        // a tall grid: tiles 64 high, 8 · 3 = 24 wide
        let tall = DlacConfig { out_buffers: 3, ..DlacConfig::fp32_train() };
        let stem = op(64, 147, 12544, 0.6, 0.0); // K 64 < PQ 12544
        let deep = op(512, 4608, 49, 0.5, 0.8); // K 512 > PQ 49
        let with = |o: Orientation, swap_operands| DlacConfig { orientation: o, swap_operands, ..tall.clone() };
        for swap in [false, true] {
            assert_eq!(swaps(&with(Orientation::Fixed, swap), &stem), swap);
            assert_eq!(swaps(&with(Orientation::Fixed, swap), &deep), swap);
        }
        // the larger dimension (PQ of the stem, K of the deep layer) along the 64-high side
        let longer = with(Orientation::LargerAlongLonger, false);
        assert!(swaps(&longer, &stem) && !swaps(&longer, &deep));
        for engine in [Engine::Fast, Engine::Event] {
            let small_stem = op(64, 27, 900, 0.6, 0.3);
            assert_eq!(engine.simulate_op(&small_stem, &longer, 0, Some(4)).first_operand_on, "columns");
            assert_eq!(engine.simulate_op(&small_stem, &tall, 0, Some(4)).first_operand_on, "rows");
        }
        // on a wide grid (8 high, 64 · 3 wide) the other way round
        let wide = DlacConfig { rows: 8, cols: 64, ..longer.clone() };
        assert!(!swaps(&wide, &stem) && swaps(&wide, &deep));
        // a tie keeps swap_operands
        let square = op(100, 9, 100, 0.5, 0.5);
        assert!(!swaps(&longer, &square) && swaps(&with(Orientation::LargerAlongLonger, true), &square));
        // fewest dense cycles: the analytic counts decide, and the choice is never the worse one
        let fewest = with(Orientation::FewestDenseCycles, false);
        let mut pick = Rng::new(11);
        for _ in 0..50 {
            let o = op(1 + pick.below(600), 1 + pick.below(300), 1 + pick.below(600), 0.0, 0.0);
            let chosen = Engine::Fast.simulate_op(&o, &fewest, 0, None);
            for swap in [false, true] {
                let fixed = Engine::Fast.simulate_op(&o, &with(Orientation::Fixed, swap), 0, None);
                assert!(chosen.dense_cycles <= fixed.dense_cycles, "{o:?}");
            }
            assert_eq!(chosen.cycles, chosen.dense_cycles, "no zeros: dense");
        }
        // a 64 x 8 grid maps K = 64, PQ = 3136 without skipping in fewer cycles as given
        // (131 tiles) than swapped (147): the utilisation rule keeps the weights on PE rows
        assert!(!swaps(&fewest, &op(64, 576, 3136, 0.5, 0.5)));
        // TOML spells the rules in kebab case
        let t: DlacConfig =
            toml::from_str(&toml::to_string(&longer).unwrap().replace("larger-along-longer", "fewest-dense-cycles"))
                .unwrap();
        assert_eq!(t.orientation, Orientation::FewestDenseCycles);
    }

    #[test]
    fn swapped_operands_execute_the_same_pairs_and_report_the_op_as_given() {
        use crate::masks::BitMatrix;
        let (m, red, n) = (13, 70, 29);
        let bit = |r: usize, c: usize, salt: usize| (r * 31 + c * 17 + salt) % 7 < 3;
        let masks = OpMasks {
            a: BitMatrix::from_fn(m, red, |r, c| bit(r, c, 1)),
            bt: BitMatrix::from_fn(n, red, |r, c| bit(r, c, 2)),
        };
        let o = op(m, red, n, 0.0, 0.0);
        let cfg = DlacConfig { rows: 4, cols: 3, ..DlacConfig::fp32_train() };
        let swap = DlacConfig { swap_operands: true, ..cfg.clone() };
        for engine in [Engine::Fast, Engine::Event] {
            let (a, b) =
                (engine.simulate_op_masked(&o, &cfg, &masks, None), engine.simulate_op_masked(&o, &swap, &masks, None));
            assert_eq!(a.executed_macs, b.executed_macs, "{engine:?}");
            assert_eq!((b.op.k, b.op.crs, b.op.pq, b.op.row_zero), (m, red, n, a.op.row_zero));
            assert_eq!(a.dram_bytes, b.dram_bytes, "the memory model sees the same op");
        }
    }

    #[test]
    fn sampled_tiles_cover_the_partial_edges_and_stand_for_every_tile() {
        // 72 x 3 tiles, the last column partial: evenly spaced indices (0, 27, 54, ...) would
        // all land in tile column 0
        let s = sample_tiles(72, 3, (false, true), Some(8));
        let weight: f64 = s.iter().map(|x| x.1).sum();
        assert!((weight - 216.0).abs() < 1e-9, "weights stand for all 216 tiles: {weight}");
        assert!(s.iter().any(|&(t, _)| t % 3 == 2), "the partial column is sampled: {s:?}");
        assert_eq!(sample_tiles(4, 5, (true, true), None).len(), 20);
        assert_eq!(sample_tiles(4, 5, (true, true), Some(100)).len(), 20);
        // a dense op sampled gives the analytic dense count exactly
        let cfg = DlacConfig::fp32_train();
        let o = MmOp::new("l", "backward", 512, 4608, 49, 0.0, 0.0);
        for engine in [Engine::Fast, Engine::Event] {
            let r = engine.simulate_op(&o, &cfg, 0, Some(8));
            assert!(
                (r.cycles - r.dense_cycles).abs() < 1e-6 * r.dense_cycles,
                "{engine:?}: {} vs {}",
                r.cycles,
                r.dense_cycles
            );
        }
    }

    #[test]
    fn bernoulli_words_have_the_asked_density() {
        let mut rng = Rng::new(5);
        for p in [0.0, 0.013, 0.25, 0.5, 0.77, 1.0] {
            let pf = fixed_prob(p);
            let ones: u32 = (0..4000).map(|_| bernoulli_word(&mut rng, pf).count_ones()).sum();
            let got = ones as f64 / (4000.0 * 64.0);
            assert!((got - p).abs() < 0.005, "p {p}: measured {got}");
        }
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
