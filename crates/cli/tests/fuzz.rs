//! The quick fuzz pass: 10 000 mutated inputs per parser of outside input, seeded. No panic,
//! every rejection names the input, no single allocation beyond the parser's stated bound.
//! The long run (≥ 1 M per parser) is `bench/fuzz.sh`.

mod fuzz_targets;

#[global_allocator]
static A: fuzz_targets::Peak = fuzz_targets::Peak;

#[test]
fn every_parser_survives_ten_thousand_mutated_inputs() {
    // panics are caught and counted; keep their messages off the test output
    std::panic::set_hook(Box::new(|_| {}));
    let mut report = Vec::new();
    for (i, t) in fuzz_targets::targets().iter().enumerate() {
        let o = fuzz_targets::run(t, 10_000, 1000 + i as u64);
        report.push(format!(
            "{:<40} {:>6} inputs {:>6} accepted {:>6} rejected, peak allocation {} B (bound {} B)",
            t.name, o.inputs, o.accepted, o.rejected, o.peak.0, o.peak.1
        ));
        assert!(o.panics.is_empty(), "{}: panics: {:?}", t.name, o.panics);
        assert!(o.unnamed.is_empty(), "{}: errors that do not name the input: {:?}", t.name, o.unnamed);
        assert_eq!(o.over_bound, 0, "{}: allocations beyond the bound", t.name);
        assert!(o.rejected > o.inputs / 10, "{}: the mutations hardly break anything: {o:?}", t.name);
    }
    let _ = std::panic::take_hook();
    eprintln!("{}", report.join("\n"));
}
