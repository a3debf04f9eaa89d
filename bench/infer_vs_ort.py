"""tern's CPU inference engine against ONNX Runtime on the same networks, same machine, same
script: ORT FP32 and ORT int8 (static QOperator quantisation, per-channel s8 weights, u8
activations, after quant_pre_process — the fastest ORT int8 form on this CPU) on tern's own
ONNX export of each checkpoint, against `tern infer --model` on tern's packed export of it.

The machine is shared and its speed drifts, so the engines are interleaved: each round times
ORT FP32, ORT int8 and tern one after another, per batch size; a ratio is taken within a round
and the median over rounds is reported.

    python3 bench/infer_vs_ort.py --tern target/release/tern --checkpoint C [--checkpoint C2 ...] \
        [--data-flags '...'] [--time-data-flags '...'] [--batches 1,16] [--rounds 3] [--reps 64]

--data-flags calibrate the u8 scales of the packed export (the checkpoint's data set);
--time-data-flags name the images tern times (default: the same; they need --reps of them).
Needs onnxruntime, onnx and sympy (pip); prints a table and one JSON line per (model, batch).
"""
import argparse, json, os, shlex, subprocess, tempfile, time
import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

p = argparse.ArgumentParser()
p.add_argument("--tern", default="target/release/tern")
p.add_argument("--checkpoint", action="append", required=True)
p.add_argument("--data-flags", default="", help="tern's data flags for the checkpoint's data set")
p.add_argument("--time-data-flags", default=None, help="data flags of the images tern times")
p.add_argument("--batches", default="1,16")
p.add_argument("--rounds", type=int, default=3)
p.add_argument("--reps", type=int, default=64,
               help="timed calls per engine and round at batch 1 (batch B: max(8, reps / B))")
p.add_argument("--threads", type=int, default=2)
a = p.parse_args()
batches = [int(b) for b in a.batches.split(",")]
time_flags = shlex.split(a.time_data_flags if a.time_data_flags is not None else a.data_flags)


class Reader(CalibrationDataReader):
    def __init__(self, inputs):
        self.it = iter([{"input": x} for x in inputs])

    def get_next(self):
        return next(self.it, None)


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def reps_at(batch):
    return max(8, a.reps // batch)


def ort_ms(s, inputs, reps):
    for x in inputs[:2]:
        s.run(None, {"input": x})
    t = []
    for i in range(reps):
        t0 = time.perf_counter()
        s.run(None, {"input": inputs[i % len(inputs)]})
        t.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(t))


def tern_ms(packed, batch, reps):
    cmd = [a.tern, "--threads", str(a.threads), "infer", "--model", packed, "--bench", str(reps),
           "--batch", str(batch), "--limit", str(reps), "--json"] + time_flags
    r = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    if r.get("timed_calls", 0) < reps:
        raise SystemExit(f"tern timed {r.get('timed_calls')} calls, wanted {reps}: give --time-data-flags "
                         f"a test split of at least --reps images")
    return r["latency_ms_u8"], r


results = []
for ck in a.checkpoint:
    tmp = tempfile.mkdtemp()
    fp32, pre, int8 = (os.path.join(tmp, n) for n in ("model.onnx", "pre.onnx", "int8.onnx"))
    packed = os.path.join(tmp, "model.tern")
    subprocess.run([a.tern, "export", "--checkpoint", ck, "--onnx", fp32], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([a.tern, "export", "--checkpoint", ck, "--packed", packed] + shlex.split(a.data_flags),
                   check=True, stdout=subprocess.DEVNULL)
    shape = [d.dim_value or 1 for d in onnx.load(fp32).graph.input[0].type.tensor_type.shape.dim]
    rng = np.random.default_rng(0)
    quant_pre_process(fp32, pre)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(16)]
    quantize_static(pre, int8, Reader(calib), quant_format=QuantFormat.QOperator, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    sessions = {"ort_fp32": session(fp32), "ort_int8": session(int8)}
    for batch in batches:
        inputs = [rng.standard_normal([batch] + shape[1:]).astype(np.float32) for _ in range(4)]
        rounds = []
        for _ in range(a.rounds):
            row = {k: ort_ms(s, inputs, reps_at(batch)) for k, s in sessions.items()}
            row["tern"], info = tern_ms(packed, batch, reps_at(batch))
            rounds.append(row)
        med = lambda f: float(np.median([f(r) for r in rounds]))
        res = {"model": info["model"], "checkpoint": ck, "shape": [batch] + shape[1:], "batch": batch,
               "threads": a.threads, "rounds": a.rounds, "reps": reps_at(batch), "kernel": info["kernel"],
               "ort_fp32_ms": med(lambda r: r["ort_fp32"]), "ort_int8_ms": med(lambda r: r["ort_int8"]),
               "tern_ms": med(lambda r: r["tern"]),
               "vs_ort_int8": med(lambda r: r["ort_int8"] / r["tern"]),
               "vs_ort_fp32": med(lambda r: r["ort_fp32"] / r["tern"]),
               "vs_ort_int8_rounds": [r["ort_int8"] / r["tern"] for r in rounds],
               "kernels": {k: sum(1 for c in info.get("kernels", []) if c["kernel"] == k)
                           for k in ("dense", "skip-zero-inputs", "skip-zero-weight-units")},
               "packed_kib": os.path.getsize(packed) / 1024, "int8_onnx_kib": os.path.getsize(int8) / 1024}
        results.append(res)
        print(json.dumps(res), flush=True)

print(f"\n{'model (checkpoint)':58} {'batch':>5} {'ORT FP32 ms':>11} {'ORT int8 ms':>11} {'tern ms':>8} "
      f"{'vs int8':>8} {'vs FP32':>8}")
for r in results:
    name = f"{r['model']} ({os.path.basename(os.path.dirname(r['checkpoint']))})"
    print(f"{name:58} {r['batch']:5} {r['ort_fp32_ms']:11.3f} {r['ort_int8_ms']:11.3f} {r['tern_ms']:8.3f} "
          f"{r['vs_ort_int8']:7.2f}x {r['vs_ort_fp32']:7.2f}x")
