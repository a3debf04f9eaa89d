"""conv2d 3x3, batch 64, 64->64 channels, 32x32, f32: tern vs PyTorch CPU in one script run.

    cargo build --release
    /work/venv/bin/python bench/conv_layer.py [--threads 2]
"""
import argparse
import json
import subprocess
import time

import torch
import torch.nn.functional as F


def best(f, reps):
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    return min(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--binary", default="target/release/tern")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tern = json.loads(subprocess.run([a.binary, "--threads", str(a.threads), "bench", "conv", "--reps", str(a.reps)],
                                     check=True, capture_output=True, text=True).stdout)
    x = torch.randn(64, 64, 32, 32, requires_grad=True)
    w = (torch.randn(64, 64, 3, 3) * 0.1).requires_grad_()
    dy = torch.randn(64, 64, 32, 32)

    def fwd():
        with torch.no_grad():
            F.conv2d(x, w, padding=1)

    def fwd_bwd():
        x.grad = None
        w.grad = None
        F.conv2d(x, w, padding=1).backward(dy)

    tf, tfb = best(fwd, a.reps), best(fwd_bwd, a.reps)
    flop = 2 * 64 * 64 * 64 * 9 * 32 * 32
    print(f"{'':<8} {'fwd ms':>8} {'fwd+bwd ms':>11} {'fwd+bwd GFLOP/s':>16}")
    print(f"{'tern':<8} {tern['forward_ms']:>8.1f} {tern['forward_backward_ms']:>11.1f} {tern['forward_backward_gflops']:>16.1f}")
    print(f"{'torch':<8} {tf * 1e3:>8.1f} {tfb * 1e3:>11.1f} {3 * flop / tfb / 1e9:>16.1f}")
    print(f"ratio (torch time / tern time): forward {tf * 1e3 / tern['forward_ms']:.2f}, "
          f"forward+backward {tfb * 1e3 / tern['forward_backward_ms']:.2f}")


if __name__ == "__main__":
    main()
