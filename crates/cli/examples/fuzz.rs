//! The long fuzz run: N mutated inputs per parser of outside input (default 1 000 000),
//! with the same checks as the quick pass in `cargo test` (tests/fuzz.rs): no panic, every
//! rejection names the input, no allocation beyond the parser's bound. Prints a table.
//!
//!     cargo run --release -p tern --example fuzz -- [N] [SEED]

#[path = "../tests/fuzz_targets/mod.rs"]
mod fuzz_targets;

#[global_allocator]
static A: fuzz_targets::Peak = fuzz_targets::Peak;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let n: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(7);
    std::panic::set_hook(Box::new(|_| {}));
    println!(
        "{:<40} {:>9} {:>9} {:>9} {:>6} {:>8} {:>12} {:>8}",
        "parser", "inputs", "accepted", "rejected", "panics", "unnamed", "peak alloc B", "seconds"
    );
    let mut failed = false;
    for (i, t) in fuzz_targets::targets().iter().enumerate() {
        let start = std::time::Instant::now();
        let o = fuzz_targets::run(t, n, seed.wrapping_mul(1000) + i as u64);
        println!(
            "{:<40} {:>9} {:>9} {:>9} {:>6} {:>8} {:>12} {:>8.1}",
            t.name,
            o.inputs,
            o.accepted,
            o.rejected,
            o.panics.len(),
            o.unnamed.len(),
            o.peak.0,
            start.elapsed().as_secs_f64()
        );
        for p in o.panics.iter().chain(&o.unnamed) {
            println!("    {p}");
        }
        failed |= !o.panics.is_empty() || !o.unnamed.is_empty() || o.over_bound > 0;
    }
    std::process::exit(failed as i32);
}
