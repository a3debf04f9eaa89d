#!/bin/sh
# Builds the CUDA agreement tests and the release binary here (no CUDA needed to build) and
# copies them into .gpu/ (ignored by git), for the device machine:
#
#   sh bench/gpu_tests.sh            # here
#   # then, on the GPU machine, with .gpu carried:
#   TERN_CUDA_TESTS=1 .gpu/agreement --test-threads=1
#   python3 bench/gpu_train.py --tern .gpu/tern
set -e
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
cargo build --release -p tern
test_exe=$(cargo test --release -p tern-cuda --test agreement --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "agreement" and m.get("executable"):
        print(m["executable"])')
mkdir -p .gpu
cp target/release/tern .gpu/tern
cp "$test_exe" .gpu/agreement
strip .gpu/tern .gpu/agreement 2>/dev/null || true
ls -la .gpu
