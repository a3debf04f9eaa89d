"""Whole-model training throughput, tern vs PyTorch CPU eager, in one script run.

Same architecture, batch, input and thread count on both sides; each does warm-up steps and
then timed SGD steps (forward, cross-entropy, backward, update) on random images. The two
alternate for `--rounds` rounds per model, so that a noisy moment on this shared VM hits
both; reported: every round's ratio, the median ratio, and each side's best rate.

    cargo build --release
    /work/venv/bin/python bench/train_throughput.py [--threads 2] [--steps 10] [--rounds 5]
"""
import argparse
import json
import subprocess
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def vgg_small(c_in=3, classes=10, w=32, side=32):
    layers, c = [], c_in
    for mult in (1, 2, 4):
        for _ in range(2):
            layers += [nn.Conv2d(c, w * mult, 3, 1, 1, bias=False), nn.BatchNorm2d(w * mult), nn.ReLU()]
            c = w * mult
        layers.append(nn.MaxPool2d(2, 2))
    s = side // 8
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * s * s, classes))


class Basic(nn.Module):
    def __init__(self, c_in, c_out, stride):
        super().__init__()
        self.c1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.b1 = nn.BatchNorm2d(c_out)
        self.c2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(c_out)
        self.sc = None
        if stride != 1 or c_in != c_out:
            self.sc = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        y = self.b2(self.c2(F.relu(self.b1(self.c1(x)))))
        return F.relu(y + (x if self.sc is None else self.sc(x)))


def resnet_cifar(n=3, c_in=3, classes=10, w=16):
    layers = [nn.Conv2d(c_in, w, 3, 1, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
    c = w
    for stage in range(3):
        for i in range(n):
            stride = 2 if stage > 0 and i == 0 else 1
            layers.append(Basic(c, w << stage, stride))
            c = w << stage
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes))


def torch_images_per_s(model, batch, side, warmup, steps):
    x = torch.randn(batch, 3, side, side)
    y = torch.arange(batch) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    model.train()

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def tern_images_per_s(binary, name, batch, side, warmup, steps, threads):
    out = subprocess.run(
        [binary, "--threads", str(threads), "bench", "train", "--model", name, "--batch", str(batch),
         "--size", str(side), "--warmup", str(warmup), "--steps", str(steps)],
        check=True, capture_output=True, text=True).stdout
    return json.loads(out)["images_per_s"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--binary", default="target/release/tern")
    ap.add_argument("--rounds", type=int, default=1, help="alternating tern/torch measurements per model")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} threads, batch {a.batch}, 32x32x3 input, "
          f"{a.steps} timed steps, {a.rounds} round(s)")
    print(f"{'model':<10} {'tern img/s':>11} {'torch img/s':>12} {'ratio':>6}")
    rows = []
    for name, build in [("vgg-small", vgg_small), ("resnet20", resnet_cifar)]:
        torch.manual_seed(0)
        model = build()
        rounds = []
        for _ in range(a.rounds):
            ti = tern_images_per_s(a.binary, name, a.batch, 32, a.warmup, a.steps, a.threads)
            pi = torch_images_per_s(model, a.batch, 32, a.warmup, a.steps)
            rounds.append((ti, pi))
            print(f"{name:<10} {ti:>11.1f} {pi:>12.1f} {ti / pi:>6.2f}")
        ratios = sorted(t / p for t, p in rounds)
        median = ratios[len(ratios) // 2] if len(ratios) % 2 else (ratios[len(ratios) // 2 - 1] + ratios[len(ratios) // 2]) / 2
        best_t, best_p = max(t for t, _ in rounds), max(p for _, p in rounds)
        print(f"{name:<10} median ratio {median:.2f}; best {best_t:.1f} vs {best_p:.1f} img/s = {best_t / best_p:.2f}")
        rows.append({"model": name, "rounds": [{"tern_images_per_s": t, "torch_images_per_s": p} for t, p in rounds],
                     "median_ratio": median, "best_tern": best_t, "best_torch": best_p, "best_ratio": best_t / best_p})
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
