"""ONNX Runtime on tern's exported ONNX against `tern eval` of the same checkpoint, on the
Fashion-MNIST test set: mean loss, top-1 and top-5 from both, and the largest logit gap to
tern's own ONNX-free forward is bounded through the loss (equal losses to ~1e-6 relative mean
equal logits up to float rounding).

    tern export --checkpoint CKPT --onnx OUT.onnx
    python3 bench/onnx_check.py --tern ./target/release/tern --checkpoint CKPT --onnx OUT.onnx
"""
import argparse
import gzip
import json
import subprocess

import numpy as np
import onnxruntime as ort


def idx(path):
    with gzip.open(path) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tern", default="./target/release/tern")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--onnx", required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    a = ap.parse_args()
    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    norm = json.loads(meta["tern.normalize"])
    x = idx(f"{a.data}/t10k-images-idx3-ubyte.gz").astype(np.float32)[:, None]
    y = idx(f"{a.data}/t10k-labels-idx1-ubyte.gz").astype(np.int64)
    # tern's loader: (v / 255 − mean) · (1 / std), in f32
    mean = np.float32(norm["mean"][0])
    inv = np.float32(1.0) / np.float32(norm["std"][0])
    x = (x / np.float32(255.0) - mean) * inv
    logits = np.concatenate([sess.run(None, {"input": x[i:i + 500]})[0] for i in range(0, len(x), 500)])
    z = logits - logits.max(1, keepdims=True)
    loss = float(np.mean(np.log(np.exp(z).sum(1)) - z[np.arange(len(y)), y]))
    order = np.argsort(-logits, 1)
    top1 = float(np.mean(order[:, 0] == y))
    top5 = float(np.mean((order[:, :5] == y[:, None]).any(1)))
    t = json.loads(subprocess.run([a.tern, "eval", "--checkpoint", a.checkpoint, "--json"], capture_output=True,
                                  text=True, check=True).stdout.strip().splitlines()[-1])
    row = {"onnxruntime": ort.__version__, "ort_loss": loss, "tern_loss": t["loss"], "ort_top1": top1,
           "tern_top1": t["test_accuracy"], "ort_top5": top5, "tern_top5": t["top5"],
           "loss_rel_diff": abs(loss - t["loss"]) / abs(t["loss"])}
    print(json.dumps(row))
    ok = row["loss_rel_diff"] < 1e-5 and abs(top1 - t["test_accuracy"]) <= 2e-4
    print("agree" if ok else "DISAGREE")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
