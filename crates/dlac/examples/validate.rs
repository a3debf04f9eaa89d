//! Leave-one-out validation of DLAC's structural candidates against a Fig. 5-style CSV (the
//! paper's odd rows): for each engine, a grid over its free parameters is simulated once;
//! then, for every row, the parameters that fit the other rows best predict the held-out one.
//! The mean and max of those held-out errors are the expected error of the model on a new
//! layer; the in-sample error of the overall best fit is printed beside them. Candidates:
//! the fast (window barrier) and the event (decoupled FIFOs) engine, each with the first
//! operand (weights, forward) broadcast along PE rows or along PE columns; and the two
//! engines on input zeros drawn on the feature map and lowered through im2col (`-fmap`,
//! `feature_map_zeros`: a zero input then appears at every window position that reads it,
//! and padding adds zeros), instead of independently in the lowered matrix.
//!
//! Run: cargo run --release -p tern-dlac --example validate -- ../shared/paper/fig5-odd-rows.csv [TILES [ONLY]]
//! (TILES: tiles simulated per op for the event engine, default 16, 0: all; the fast engine
//! does all)

use rayon::prelude::*;
use tern_dlac::{DlacConfig, Engine, Workload};

/// The free parameters searched, in every candidate.
const FREE: [&str; 5] = ["grid shape and units per PE", "out_buffers", "window", "scan_rate", "read_words_per_cycle"];

fn grid() -> Vec<DlacConfig> {
    let mut g = Vec::new();
    // 512 multiply-add units: one per PE, or two per PE (a PE then skips an input zero only
    // when it frees a whole cycle)
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
                            ..DlacConfig::fp32_train()
                        });
                    }
                }
            }
        }
    }
    g
}

/// The dead-channel candidate's grid: the fmap candidate's best PE grid (64x8, one unit per
/// PE, buffer reads never the limit) with the dead channels' share of the input zeros as
/// the fifth free parameter (3·3·3·4 = 108 points, fewer than the others' 360).
fn dead_channel_grid() -> Vec<DlacConfig> {
    let mut g = Vec::new();
    for out_buffers in [2, 3, 4] {
        for window in [4, 8, 12] {
            for scan_rate in [2, 3, 4] {
                for dead_channel_share in [0.0, 0.25, 0.5, 0.75] {
                    g.push(DlacConfig {
                        out_buffers,
                        window,
                        scan_rate,
                        read_words_per_cycle: 1 << 20,
                        feature_map_zeros: true,
                        dead_channel_share,
                        ..DlacConfig::fp32_train()
                    });
                }
            }
        }
    }
    g
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("usage: validate FILE.csv [EVENT_TILES]");
    let event_tiles: usize = args.next().map_or(16, |s| s.parse().expect("EVENT_TILES: a count"));
    // optional: only the candidates whose label (e.g. `event-rows`) contains this
    let only = args.next().unwrap_or_default();
    let w = Workload::load(std::path::Path::new(&path)).expect("workload");
    let want: Vec<f64> = w.ops.iter().map(|o| o.reference_flops_per_cycle.expect("a flops_per_cycle column")).collect();
    println!("{} rows; free parameters per candidate: {} ({})", w.ops.len(), FREE.len(), FREE.join(", "));
    println!("| engine | first operand on | grid points | in-sample mean / max % | LOO mean / max % | LOO rows within 15 % |");
    println!("|---|---|---:|---:|---:|---:|");
    let candidates = [
        (Engine::Fast, false, false, false),
        (Engine::Fast, true, false, false),
        (Engine::Event, false, false, false),
        (Engine::Event, true, false, false),
        (Engine::Event, false, true, false),
        (Engine::Fast, false, false, true),
        (Engine::Event, false, false, true),
    ];
    // the last candidate: feature-map zeros with a share of dead channels (its own grid)
    let dead_candidate = (Engine::Event, false, false, true);
    for (n, (engine, swap_operands, compressed_fifos, fmap)) in
        candidates.into_iter().chain([dead_candidate]).enumerate()
    {
        let dead = n == candidates.len();
        let label = format!(
            "{}-{}{}{}{}",
            engine.name(),
            if swap_operands { "cols" } else { "rows" },
            if compressed_fifos { "-compressed" } else { "" },
            if fmap { "-fmap" } else { "" },
            if dead { "-dead" } else { "" }
        );
        if !label.contains(&only) {
            continue;
        }
        let tiles = (engine == Engine::Event && event_tiles > 0).then_some(event_tiles);
        let g: Vec<DlacConfig> = if dead {
            dead_channel_grid()
        } else {
            grid()
                .into_iter()
                .map(|c| DlacConfig { swap_operands, compressed_fifos, feature_map_zeros: fmap, ..c })
                .collect()
        };
        // err[c][r]: |relative error| of config c on row r
        let err: Vec<Vec<f64>> = g
            .par_iter()
            .map(|cfg| {
                w.ops
                    .iter()
                    .enumerate()
                    .map(|(i, op)| {
                        let r = engine.simulate_op(op, cfg, i as u64, tiles);
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
        let best = (0..g.len()).min_by(|&a, &b| mean_without(a, None).total_cmp(&mean_without(b, None))).unwrap();
        let in_max = err[best].iter().cloned().fold(0.0, f64::max);
        let held: Vec<f64> = (0..want.len())
            .map(|r| {
                let c = (0..g.len())
                    .min_by(|&a, &b| mean_without(a, Some(r)).total_cmp(&mean_without(b, Some(r))))
                    .unwrap();
                err[c][r]
            })
            .collect();
        let loo_mean = held.iter().sum::<f64>() / held.len() as f64;
        let loo_max = held.iter().cloned().fold(0.0, f64::max);
        let within = held.iter().filter(|&&e| e <= 0.15).count();
        println!(
            "| {}{}{}{} | {} | {} | {:.1} / {:.1} | {:.1} / {:.1} | {} of {} |",
            engine.name(),
            if compressed_fifos { ", compressed FIFOs" } else { "" },
            if fmap { ", input zeros on the feature map" } else { "" },
            if dead { " with dead channels" } else { "" },
            if swap_operands { "PE columns" } else { "PE rows" },
            g.len(),
            100.0 * mean_without(best, None),
            100.0 * in_max,
            100.0 * loo_mean,
            100.0 * loo_max,
            within,
            held.len()
        );
        let rows: Vec<String> =
            w.ops.iter().zip(&held).map(|(op, e)| format!("{} {:.1}", op.name, 100.0 * e)).collect();
        println!("  held-out error % per row: {}", rows.join(", "));
        let c = &g[best];
        println!(
            "  best fit on all rows: {}x{} PEs, {} output buffers, window {}, scan rate {}, {} buffer words/cycle, \
             dead-channel share {}",
            c.rows, c.cols, c.out_buffers, c.window, c.scan_rate, c.read_words_per_cycle, c.dead_channel_share
        );
    }
}
