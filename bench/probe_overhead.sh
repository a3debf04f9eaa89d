#!/usr/bin/env bash
# Cost of the sparsity probe: training steps of the same model with and without exact
# non-zero counting, in one script run.   Usage: bench/probe_overhead.sh [MODEL] [THREADS]
set -euo pipefail
model=${1:-vgg-small}
threads=${2:-2}
bin=${BIN:-target/release/tern}
plain=$($bin --threads "$threads" bench train --model "$model" --steps 6 --warmup 1 | sed 's/.*"step_ms":\([0-9.]*\).*/\1/')
probed=$($bin --threads "$threads" bench train --model "$model" --steps 6 --warmup 1 --probe | sed 's/.*"step_ms":\([0-9.]*\).*/\1/')
python3 -c "p=$plain; q=$probed; print(f'$model: step {p:.1f} ms, with probe {q:.1f} ms, overhead {100*(q-p)/p:.1f}%')"
