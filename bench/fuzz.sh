#!/bin/sh
# The long fuzz run of every parser of outside input (≥ 1 M mutated inputs each; the quick
# 10 k pass runs in `cargo test`). Exit status 1 if any parser panicked, gave an error that
# does not name its input, or allocated beyond its bound.
#   sh bench/fuzz.sh [N] [SEED]
cd "$(dirname "$0")/.." && cargo run --release -q -p tern --example fuzz -- "${1:-1000000}" "${2:-7}"
