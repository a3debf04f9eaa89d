"""GPU training throughput, tern vs PyTorch (eager and torch.compile), in one script run on
the GPU machine.

Same architecture, batch and input on both sides, data already on the device, SGD with
momentum and weight decay, ternary weights with a straight-through estimator where asked
(TWN: Δ = 0.7·mean|W|, α = mean of the kept |W|, first conv kept in full precision). PyTorch
runs channels_last with cudnn.benchmark and TF32 convolutions and matmuls, as a tuned user
would; tern runs `tern bench train --device cuda`. Each side does warm-up steps, then timed
steps with a device synchronisation at both ends. Prints one JSON line per measurement and
a table of the ratios last.

    python3 bench/gpu_train.py --tern ./tern [--configs small|imagenet|all] [--steps 30]
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(__file__))
from train_throughput import resnet_cifar, vgg_small  # noqa: E402


class TernaryConv2d(nn.Conv2d):
    """Eq. 1 with TWN's threshold and layer scale; straight-through gradient to w."""

    def forward(self, x):
        w = self.weight
        a = w.abs()
        delta = 0.7 * a.mean()
        keep = (a > delta).to(w.dtype)
        alpha = (a * keep).sum() / keep.sum().clamp(min=1.0)
        q = alpha * torch.sign(w) * keep
        return self._conv_forward(x, w + (q - w).detach(), self.bias)


def ternarize(model):
    """Every conv but the first becomes ternary (tern's --ternary --fp-first-layer)."""
    convs = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    for name, m in convs[1:]:
        t = TernaryConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, bias=m.bias is not None)
        t.weight = m.weight
        t.bias = m.bias
        parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        setattr(parent, name.rsplit(".", 1)[-1], t)
    return model


def build(name, channels, side, classes):
    if name == "vgg-small":
        return vgg_small(channels, classes, 32, side)
    if name == "resnet20":
        return resnet_cifar(3, channels, classes)
    import torchvision

    return getattr(torchvision.models, name)(num_classes=classes)


def torch_rate(name, batch, channels, side, classes, ternary, compiled, bf16, warmup, steps, nchw=False):
    torch.manual_seed(0)
    model = build(name, channels, side, classes)
    if ternary:
        model = ternarize(model)
    fmt = torch.contiguous_format if nchw else torch.channels_last
    model = model.cuda().to(memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(batch, channels, side, side, device="cuda").to(memory_format=fmt)
    y = torch.arange(batch, device="cuda") % classes
    fwd = torch.compile(model) if compiled else model

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(fwd(x), y)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    torch.cuda.synchronize()
    secs = (time.perf_counter() - t) / steps
    return {
        "images_per_s": batch / secs,
        "step_ms": secs * 1e3,
        "peak_allocated_bytes": torch.cuda.max_memory_allocated(),
        "peak_reserved_bytes": torch.cuda.max_memory_reserved(),
    }


def tern_rate(binary, name, batch, channels, side, classes, ternary, precision, warmup, steps, algorithms,
              layout="nhwc"):
    cmd = [binary, "bench", "train", "--device", "cuda", "--precision", precision, "--algorithms", algorithms,
           "--layout", layout, "--model", name,
           "--batch", str(batch), "--channels", str(channels), "--size", str(side), "--classes", str(classes),
           "--warmup", str(warmup), "--steps", str(steps)]
    if ternary:
        cmd += ["--ternary", "--fp-first-layer"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": out.stderr.strip()[-400:]}
    return json.loads(out.stdout)


CONFIGS = {
    # (model, batch, channels, side, classes)
    "small": [("resnet20", 128, 1, 32, 10), ("vgg-small", 128, 1, 32, 10), ("resnet20", 512, 1, 32, 10),
              ("vgg-small", 512, 1, 32, 10)],
    "imagenet": [("resnet18", 256, 3, 224, 1000), ("resnet34", 256, 3, 224, 1000)],
}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tern", default="./target/release/tern")
    ap.add_argument("--configs", default="small", choices=["small", "imagenet", "all"])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--models", default="", help="comma-separated subset of the configs' models")
    ap.add_argument("--torch-nchw", action="store_true",
                    help="also time PyTorch eager in NCHW (tern's layout) beside channels_last")
    ap.add_argument("--tern-nchw", action="store_true",
                    help="also time tern with --layout nchw beside its default nhwc")
    ap.add_argument("--algorithms", default="deterministic", choices=["deterministic", "fastest"],
                    help="tern's cuDNN algorithm choice (PyTorch's cudnn.benchmark picks the fastest)")
    ap.add_argument("--bf16-all", action="store_true",
                    help="also time bf16 (tern --precision bf16 against PyTorch's bf16 autocast) on the small configs")
    a = ap.parse_args()
    torch.backends.cudnn.benchmark = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.matmul.allow_tf32 = True
    configs = CONFIGS["small"] + CONFIGS["imagenet"] if a.configs == "all" else CONFIGS[a.configs]
    if a.models:
        configs = [c for c in configs if c[0] in a.models.split(",")]
    rows = []
    for name, batch, ch, side, classes in configs:
        r = {"model": name, "batch": batch, "side": side, "ternary": True}
        r["tern"] = tern_rate(a.tern, name, batch, ch, side, classes, True, "tf32", a.warmup, a.steps, a.algorithms)
        r["algorithms"] = a.algorithms
        if a.tern_nchw:
            r["tern_nchw"] = tern_rate(a.tern, name, batch, ch, side, classes, True, "tf32", a.warmup, a.steps,
                                       a.algorithms, layout="nchw")
        r["torch_eager"] = torch_rate(name, batch, ch, side, classes, True, False, False, a.warmup, a.steps)
        if not a.no_compile:
            try:
                r["torch_compile"] = torch_rate(name, batch, ch, side, classes, True, True, False, a.warmup, a.steps)
            except Exception as e:  # noqa: BLE001 - report and go on
                r["torch_compile"] = {"error": str(e)[-300:]}
        if side >= 224 or a.bf16_all:
            r["tern_bf16"] = tern_rate(a.tern, name, batch, ch, side, classes, True, "bf16", a.warmup, a.steps,
                                       a.algorithms)
            r["torch_bf16"] = torch_rate(name, batch, ch, side, classes, True, False, True, a.warmup, a.steps)
        if a.torch_nchw:
            r["torch_eager_nchw"] = torch_rate(name, batch, ch, side, classes, True, False, False, a.warmup, a.steps,
                                               nchw=True)
        print(json.dumps(r), flush=True)
        rows.append(r)
    print(f"\n{'model':<10} {'batch':>5} {'tern img/s':>11} {'eager':>9} {'compile':>9} {'x eager':>8} {'x compile':>9} {'tern MiB':>9} {'torch MiB':>9}")
    for r in rows:
        t = r["tern"].get("images_per_s", float("nan"))
        e = r["torch_eager"]["images_per_s"]
        c = r.get("torch_compile", {}).get("images_per_s", float("nan"))
        tm = r["tern"].get("device_memory_bytes", 0) / 2**20
        pm = r["torch_eager"]["peak_reserved_bytes"] / 2**20
        print(f"{r['model']:<10} {r['batch']:>5} {t:>11.0f} {e:>9.0f} {c:>9.0f} {t / e:>8.2f} {t / c:>9.2f} {tm:>9.0f} {pm:>9.0f}")
        if "error" in r["tern"]:
            print("   tern error:", r["tern"]["error"])
        if "tern_bf16" in r:
            tb = r["tern_bf16"].get("images_per_s", float("nan"))
            pb = r["torch_bf16"]["images_per_s"]
            tbm = r["tern_bf16"].get("device_memory_bytes", 0) / 2**20
            pbm = r["torch_bf16"]["peak_reserved_bytes"] / 2**20
            print(f"   bf16: tern {tb:.0f} img/s, PyTorch autocast {pb:.0f} -> {tb / pb:.2f}x; "
                  f"memory {tbm:.0f} vs {pbm:.0f} MiB")
            if "error" in r["tern_bf16"]:
                print("   tern bf16 error:", r["tern_bf16"]["error"])
        if "tern_nchw" in r:
            tn = r["tern_nchw"].get("images_per_s", float("nan"))
            print(f"   tern --layout nchw: {tn:.0f} img/s ({t / tn:.2f}x from nhwc)")


if __name__ == "__main__":
    main()
