"""tern's CPU inference engine against ONNX Runtime on the same network, same machine, same
call: ORT FP32 and ORT int8 (static QOperator quantisation, per-channel s8 weights, u8
activations, after quant_pre_process — the fastest ORT int8 form on this CPU) on tern's own
ONNX export of the checkpoint, batch 1, median latency; tern from `tern infer --bench`.

    python3 bench/infer_vs_ort.py --tern target/release/tern --checkpoint C [--data-flags '...']

Needs onnxruntime and onnx (pip); prints a table and one JSON line.
"""
import argparse, json, os, shlex, subprocess, sys, tempfile, time
import numpy as np
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

p = argparse.ArgumentParser()
p.add_argument("--tern", default="target/release/tern")
p.add_argument("--checkpoint", required=True)
p.add_argument("--data-flags", default="", help="tern's data flags for the checkpoint's data set")
p.add_argument("--reps", type=int, default=200)
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()

tmp = tempfile.mkdtemp()
fp32 = os.path.join(tmp, "model.onnx")
subprocess.run([a.tern, "export", "--checkpoint", a.checkpoint, "--onnx", fp32], check=True, stdout=subprocess.DEVNULL)
shape = [d.dim_value or 1 for d in __import__("onnx").load(fp32).graph.input[0].type.tensor_type.shape.dim]
rng = np.random.default_rng(0)
inputs = [rng.standard_normal(shape).astype(np.float32) for _ in range(16)]


class Reader(CalibrationDataReader):
    def __init__(self):
        self.it = iter([{"input": x} for x in inputs])

    def get_next(self):
        return next(self.it, None)


pre = os.path.join(tmp, "pre.onnx")
int8 = os.path.join(tmp, "int8.onnx")
quant_pre_process(fp32, pre)
quantize_static(pre, int8, Reader(), quant_format=QuantFormat.QOperator, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)


def ort_ms(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    for x in inputs[:3]:
        s.run(None, {"input": x})
    t = []
    for i in range(a.reps):
        x = inputs[i % len(inputs)]
        t0 = time.perf_counter()
        s.run(None, {"input": x})
        t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t))


ort_fp32, ort_int8 = ort_ms(fp32), ort_ms(int8)
cmd = [a.tern, "--threads", str(a.threads), "infer", "--checkpoint", a.checkpoint, "--bench", str(a.reps),
       "--limit", str(max(a.reps, 64)), "--json"] + shlex.split(a.data_flags)
r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
rows = [("ORT FP32", ort_fp32), ("ORT int8 (QOperator, per-channel)", ort_int8),
        ("tern FP32 forward", r["latency_ms_fp32"]), (f"tern u8 ({r['kernel']})", r["latency_ms_u8"])]
print(f"{r['model']} {shape}, batch 1, {a.threads} threads, median of {a.reps}")
print(f"{'engine':36} {'ms':>8} {'tern u8 is x faster':>20}")
for name, ms in rows:
    print(f"{name:36} {ms:8.3f} {ms / r['latency_ms_u8']:20.2f}")
print(f"tern u8 top-1 {100 * r['test_accuracy_u8']:.2f}% vs FP32 {100 * r['test_accuracy_fp32']:.2f}% "
      f"on {r['samples']} test images (agreement {100 * r['agreement']:.2f}%)")
print(json.dumps({"model": r["model"], "shape": shape, "ort_fp32_ms": ort_fp32, "ort_int8_ms": ort_int8,
                  "tern_fp32_ms": r["latency_ms_fp32"], "tern_u8_ms": r["latency_ms_u8"],
                  "vs_ort_int8": ort_int8 / r["latency_ms_u8"], "vs_ort_fp32": ort_fp32 / r["latency_ms_u8"]}))
