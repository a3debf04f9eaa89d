//! Leave-one-out validation of DLAC's structural candidates against a Fig. 5-style CSV (the
//! paper's odd rows): for each candidate, a grid over its free parameters is simulated once;
//! then, for every row, the parameters that fit the other rows best predict the held-out one.
//! The mean and max of those held-out errors are the expected error of the model on a new
//! layer; the in-sample error of the overall best fit is printed beside them.
//!
//! Candidates: the fast (window barrier) and the event (decoupled FIFOs) engine, each with
//! the first operand (weights, forward) broadcast along PE rows or along PE columns; the
//! event engine with compressed FIFOs; both engines on input zeros drawn on the feature map
//! and lowered through im2col (`-fmap`: a zero input then appears at every window position
//! that reads it, and padding adds zeros); the event engine with dead input channels
//! (`-dead`); and both engines with the orientation rule searched (`-orient`: weights always
//! on PE rows, or per op the side with fewer dense cycles, or the larger output dimension
//! along the grid's longer side).
//!
//! Run: cargo run --release -p tern-dlac --example validate -- ../shared/paper/fig5-odd-rows.csv [TILES [ONLY [SEED]]]
//! (TILES: tiles simulated per op for the event engine, default 16, 0: all; the fast engine
//! does all. ONLY: run the candidates whose label contains it. SEED: added to every row's
//! seed, to see the spread of the result over the Bernoulli draws.)

use rayon::prelude::*;
use tern_dlac::{DlacConfig, Engine, Orientation, Workload};

/// A structural candidate: an engine, a description, and the grid over its free parameters.
struct Candidate {
    label: &'static str,
    engine: Engine,
    what: &'static str,
    first_operand_on: &'static str,
    free: &'static str,
    grid: Vec<DlacConfig>,
}

/// The first candidates' grid (sessions 3–8): 512 multiply-add units as one per PE, or two
/// per PE (a PE then skips an input zero only when it frees a whole cycle); 180 points.
fn unit_grid(base: &DlacConfig) -> Vec<DlacConfig> {
    let mut g = Vec::new();
    for (rows, cols, units) in [(64, 8, 1), (32, 16, 1), (32, 8, 2), (64, 4, 2)] {
        for out_buffers in [2, 3, 4] {
            for window in [4, 8, 12, 16, 24] {
                for scan_rate in [2, 3, 4] {
                    for read_words_per_cycle in [192, 1 << 20] {
                        g.push(DlacConfig {
                            rows,
                            cols,
                            units,
                            out_buffers,
                            window,
                            scan_rate,
                            read_words_per_cycle,
                            ..base.clone()
                        });
                    }
                }
            }
        }
    }
    g
}

/// The dead-channel candidate's grid (session 9): the fmap candidate's best PE grid (64x8,
/// one unit per PE, buffer reads never the limit) with the dead channels' share of the input
/// zeros as the fifth free parameter (108 points).
fn dead_channel_grid(base: &DlacConfig) -> Vec<DlacConfig> {
    let mut g = Vec::new();
    for out_buffers in [2, 3, 4] {
        for window in [4, 8, 12] {
            for scan_rate in [2, 3, 4] {
                for dead_channel_share in [0.0, 0.25, 0.5, 0.75] {
                    g.push(DlacConfig { out_buffers, window, scan_rate, dead_channel_share, ..base.clone() });
                }
            }
        }
    }
    g
}

/// The orientation candidates' grid (session 10): grids from tall (64x8: one weight per PE
/// row, the inputs `out_buffers` at a time down 8 columns) to wide (8x64), the given FIFO
/// depths or windows, and the orientation rule; buffer reads never the limit. 540 points.
fn orientation_grid(base: &DlacConfig, windows: [usize; 5]) -> Vec<DlacConfig> {
    let mut g = Vec::new();
    for (rows, cols) in [(64, 8), (32, 16), (16, 32), (8, 64)] {
        for out_buffers in [2, 3, 4] {
            for window in windows {
                for scan_rate in [2, 3, 4] {
                    for orientation in Orientation::ALL {
                        g.push(DlacConfig { rows, cols, out_buffers, window, scan_rate, orientation, ..base.clone() });
                    }
                }
            }
        }
    }
    g
}

fn candidates() -> Vec<Candidate> {
    let base = DlacConfig::fp32_train();
    let with = |swap_operands, compressed_fifos, feature_map_zeros| DlacConfig {
        swap_operands,
        compressed_fifos,
        feature_map_zeros,
        ..base.clone()
    };
    let unlimited = |c: DlacConfig| DlacConfig { read_words_per_cycle: 1 << 20, ..c };
    const UNITS: &str = "grid shape and units per PE, out_buffers, window, scan_rate, read_words_per_cycle";
    const ORIENT: &str = "grid shape, out_buffers, window, scan_rate, orientation rule";
    let plain = |label, engine, what, first_operand_on, swap, compressed, fmap| Candidate {
        label,
        engine,
        what,
        first_operand_on,
        free: UNITS,
        grid: unit_grid(&with(swap, compressed, fmap)),
    };
    vec![
        plain("fast-rows", Engine::Fast, "fast (window barrier)", "PE rows", false, false, false),
        plain("fast-cols", Engine::Fast, "fast (window barrier)", "PE columns", true, false, false),
        plain("event-rows", Engine::Event, "event (decoupled FIFOs)", "PE rows", false, false, false),
        plain("event-cols", Engine::Event, "event (decoupled FIFOs)", "PE columns", true, false, false),
        plain("event-rows-compressed", Engine::Event, "event, compressed FIFOs", "PE rows", false, true, false),
        plain("fast-rows-fmap", Engine::Fast, "fast, input zeros on the feature map", "PE rows", false, false, true),
        plain("event-rows-fmap", Engine::Event, "event, input zeros on the feature map", "PE rows", false, false, true),
        Candidate {
            label: "event-rows-fmap-dead",
            engine: Engine::Event,
            what: "event, input zeros on the feature map with dead channels",
            first_operand_on: "PE rows",
            free: "out_buffers, window, scan_rate, dead-channel share (64x8 PEs)",
            grid: dead_channel_grid(&unlimited(with(false, false, true))),
        },
        Candidate {
            label: "fast-orient",
            engine: Engine::Fast,
            what: "fast, orientation rule searched",
            first_operand_on: "per rule",
            free: ORIENT,
            grid: orientation_grid(&unlimited(with(false, false, false)), [4, 8, 12, 16, 24]),
        },
        Candidate {
            label: "event-fmap-orient",
            engine: Engine::Event,
            what: "event, input zeros on the feature map, orientation rule searched",
            first_operand_on: "per rule",
            free: ORIENT,
            grid: orientation_grid(&unlimited(with(false, false, true)), [3, 4, 5, 6, 8]),
        },
    ]
}

/// One config's structure and constants, as the output's fold and best-fit lines show them.
fn describe(c: &DlacConfig) -> String {
    format!(
        "{}x{} PEs, {} unit(s) and {} output buffers per PE, window {}, scan rate {}, {} buffer words/cycle, \
         dead-channel share {}, orientation {}",
        c.rows,
        c.cols,
        c.units,
        c.out_buffers,
        c.window,
        c.scan_rate,
        c.read_words_per_cycle,
        c.dead_channel_share,
        c.orientation.name()
    )
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: validate FILE.csv [TILES [ONLY [SEED]]]");
    let event_tiles: usize = args.next().map_or(16, |s| s.parse().expect("TILES: a count"));
    let only = args.next().unwrap_or_default();
    let seed: u64 = args.next().map_or(0, |s| s.parse().expect("SEED: a whole number"));
    let w = Workload::load(std::path::Path::new(&path)).expect("workload");
    let want: Vec<f64> = w.ops.iter().map(|o| o.reference_flops_per_cycle.expect("a flops_per_cycle column")).collect();
    println!("{} rows, seed offset {seed}, event-engine tiles per op {event_tiles} (0: all)", w.ops.len());
    println!("| candidate | engine | first operand on | grid points | in-sample mean / max % | LOO mean / max % | LOO rows within 15 % |");
    println!("|---|---|---|---:|---:|---:|---:|");
    for cand in candidates().into_iter().filter(|c| c.label.contains(&only)) {
        let tiles = (cand.engine == Engine::Event && event_tiles > 0).then_some(event_tiles);
        let g = &cand.grid;
        // err[c][r]: |relative error| of config c on row r
        let err: Vec<Vec<f64>> = g
            .par_iter()
            .map(|cfg| {
                w.ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        let r = cand.engine.simulate_op(op, cfg, seed + i as u64, tiles);
                        (r.flops_per_cycle - want[i]).abs() / want[i]
                    })
                    .collect()
            })
            .collect();
        let mean_without = |c: usize, skip: Option<usize>| {
            let (s, n) = err[c]
                .iter()
                .enumerate()
                .filter(|(r, _)| Some(*r) != skip)
                .fold((0.0, 0), |(s, n), (_, e)| (s + e, n + 1));
            s / n as f64
        };
        let best_without = |skip: Option<usize>| {
            (0..g.len()).min_by(|&a, &b| mean_without(a, skip).total_cmp(&mean_without(b, skip))).unwrap()
        };
        let best = best_without(None);
        let in_max = err[best].iter().cloned().fold(0.0, f64::max);
        let folds: Vec<usize> = (0..want.len()).map(|r| best_without(Some(r))).collect();
        let held: Vec<f64> = folds.iter().enumerate().map(|(r, &c)| err[c][r]).collect();
        let loo_mean = held.iter().sum::<f64>() / held.len() as f64;
        let loo_max = held.iter().cloned().fold(0.0, f64::max);
        let within = held.iter().filter(|&&e| e <= 0.15).count();
        println!(
            "| {} | {} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} of {} |",
            cand.label,
            cand.what,
            cand.first_operand_on,
            g.len(),
            100.0 * mean_without(best, None),
            100.0 * in_max,
            100.0 * loo_mean,
            100.0 * loo_max,
            within,
            held.len()
        );
        println!("  free parameters: {}", cand.free);
        let rows: Vec<String> =
            w.ops.iter().zip(&held).map(|(op, e)| format!("{} {:.1}", op.name, 100.0 * e)).collect();
        println!("  held-out error % per row: {}", rows.join(", "));
        // which configs the folds chose, and how often
        let mut chosen: Vec<(usize, usize)> = Vec::new();
        for &c in &folds {
            match chosen.iter_mut().find(|(x, _)| *x == c) {
                Some((_, n)) => *n += 1,
                None => chosen.push((c, 1)),
            }
        }
        let picks: Vec<String> = chosen.iter().map(|&(c, n)| format!("{} x{n}", describe(&g[c]))).collect();
        println!("  the folds chose: {}", picks.join("; "));
        println!("  best fit on all rows: {}", describe(&g[best]));
    }
}
