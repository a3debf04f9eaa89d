//! Golden outputs of the cycle engine on small configurations: any change in the simulated
//! cycles is a deliberate model change. Regenerate on purpose with
//! `TERN_BLESS=1 cargo test -p tern-dlac --test golden` and review the diff.

use tern_dlac::{DlacConfig, Engine, MmOp};

fn small() -> DlacConfig {
    DlacConfig {
        name: "small".into(),
        rows: 2,
        cols: 3,
        units: 1,
        out_buffers: 2,
        window: 3,
        scan_rate: 2,
        ..DlacConfig::fp32_train()
    }
}

fn op(pass: &str, k: usize, crs: usize, pq: usize, rz: f64, cz: f64) -> MmOp {
    MmOp::new(&format!("{pass}-{k}x{crs}x{pq}"), pass, k, crs, pq, rz, cz)
}

#[test]
fn small_configs_match_their_golden_cycles() {
    let ops = [
        op("forward", 5, 7, 13, 0.5, 0.3),
        op("backward", 5, 7, 13, 0.5, 0.6),
        op("weight_grad", 5, 7, 13, 0.6, 0.3),
        op("forward", 4, 9, 6, 0.0, 0.0),
        op("forward", 3, 20, 30, 0.9, 0.9),
    ];
    let mut lines = Vec::new();
    for (cfg_name, cfg) in [("small", small()), ("fp32-train", DlacConfig::fp32_train())] {
        for (i, o) in ops.iter().enumerate() {
            let r = Engine::Fast.simulate_op(o, &cfg, 42 + i as u64, None);
            lines.push(format!("{cfg_name} {} cycles {} dense {}", o.name, r.cycles, r.dense_cycles));
        }
    }
    let latency = DlacConfig { fma_latency: 3, ..small() };
    for (cfg_name, cfg) in [("event small", small()), ("event latency-3", latency), ("event", DlacConfig::fp32_event())]
    {
        for (i, o) in ops.iter().enumerate() {
            let r = Engine::Event.simulate_op(o, &cfg, 42 + i as u64, None);
            lines.push(format!("{cfg_name} {} cycles {} dense {}", o.name, r.cycles, r.dense_cycles));
        }
    }
    let got = lines.join("\n") + "\n";
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/small.txt");
    if std::env::var_os("TERN_BLESS").is_some() {
        std::fs::write(&path, &got).unwrap();
    }
    let want = std::fs::read_to_string(&path).expect("golden file (TERN_BLESS=1 writes it)");
    assert_eq!(got, want, "cycle engine output changed; bless on purpose if intended");
}
