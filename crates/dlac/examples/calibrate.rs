//! Grid search of the engine's parameters against a Fig. 5-style CSV (the paper's odd
//! rows): one parameter set for all layers, minimising the mean relative FLOP/cycle error.
//! Run: cargo run --release -p tern-dlac --example calibrate -- ../shared/paper/fig5-odd-rows.csv

use rayon::prelude::*;
use tern_dlac::{simulate_op, DlacConfig, Workload};

fn main() {
    let path = std::env::args().nth(1).expect("usage: calibrate FILE.csv");
    let w = Workload::load(std::path::Path::new(&path)).expect("workload");
    let mut grid = Vec::new();
    // Every tile is simulated: sampling tiles biased an earlier, wider search (DLAC.md).
    for (rows, cols, units) in [(32, 16, 1), (64, 8, 1), (16, 32, 1), (16, 16, 2)] {
        for out_buffers in [2, 3, 4] {
            for window in [8, 12, 16, 20, 24] {
                for scan_rate in [2, 3, 4] {
                    for read_words_per_cycle in [128, 192, 1 << 20] {
                        grid.push(DlacConfig {
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
    let mut scored: Vec<(f64, f64, DlacConfig)> = grid
        .into_par_iter()
        .map(|cfg| {
            let errs: Vec<f64> = w
                .ops
                .iter()
                .enumerate()
                .map(|(i, op)| {
                    let r = simulate_op(op, &cfg, i as u64, None);
                    let want = op.reference_flops_per_cycle.unwrap();
                    (r.flops_per_cycle - want).abs() / want
                })
                .collect();
            let mean = errs.iter().sum::<f64>() / errs.len() as f64;
            let max = errs.iter().cloned().fold(0.0, f64::max);
            (mean, max, cfg)
        })
        .collect();
    scored.sort_by(|a, b| a.0.total_cmp(&b.0));
    for (mean, max, c) in scored.iter().take(10) {
        println!(
            "mean {:.1}% max {:.1}%  rows {} cols {} units {} out_buffers {} window {} scan_rate {} read_words {}",
            100.0 * mean,
            100.0 * max,
            c.rows,
            c.cols,
            c.units,
            c.out_buffers,
            c.window,
            c.scan_rate,
            c.read_words_per_cycle
        );
    }
}
