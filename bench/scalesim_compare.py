#!/usr/bin/env python3
"""SCALE-Sim (PyPI `scalesim`, a dense systolic-array simulator) against `tern sim` on the
same mmOp list:

- speed: simulated cycles per wall-clock second (DLAC's preset, zero-skipping, vs SCALE-Sim's
  dense 64x8 output-stationary array);
- `--agreement`: dense cycles, op by op, with DLAC configured as the matching dense array
  (64 x 8 PEs, one output per PE, one unit, buffers that keep up) and every operand
  non-zero. An output-stationary systolic array streams each fold's reduction through the
  array and pays a fill/drain skew per fold that DLAC's broadcast grid does not; the script
  reports both counts, their ratio and the difference per fold.

Run outside the repo's tests, with SCALE-Sim in a venv (it needs numpy < 2):

    python3 -m venv /tmp/ss && /tmp/ss/bin/pip install scalesim "numpy<2"
    /tmp/ss/bin/python bench/scalesim_compare.py --workload W.json --tern target/release/tern \
        [--limit N] [--agreement]
"""
import argparse, json, os, subprocess, sys, tempfile, time

CFG = """[general]
run_name = tern_compare

[architecture_presets]
ArrayHeight:    64
ArrayWidth:     8
IfmapSramSzkB:    208
FilterSramSzkB:   208
OfmapSramSzkB:    64
IfmapOffset:    0
FilterOffset:   10000000
OfmapOffset:    20000000
Dataflow : os
Bandwidth : 10
ReadRequestBuffer: 32
WriteRequestBuffer: 32

[layout]
IfmapCustomLayout: False
IfmapSRAMBankBandwidth: 10
IfmapSRAMBankNum: 10
IfmapSRAMBankPort: 2
FilterCustomLayout: False
FilterSRAMBankBandwidth: 10
FilterSRAMBankNum: 10
FilterSRAMBankPort: 2

[sparsity]
SparsitySupport : false
SparseRep : ellpack_block
OptimizedMapping : false
BlockSize : 8
RandomNumberGeneratorSeed : 40

[run_presets]
InterfaceBandwidth: CALC
UseRamulatorTrace: False
"""


def dims(op):
    """(m, red, n) of an mmOp's pass, as tern-dlac lowers it."""
    k, crs, pq = op["k"], op["crs"], op["pq"]
    return {"forward": (k, crs, pq), "backward": (crs, k, pq), "weight_grad": (k, pq, crs)}[op["pass"]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--workload", required=True)
    ap.add_argument("--tern", default="target/release/tern")
    ap.add_argument("--limit", type=int, default=0, help="first N mmOps only (0: all)")
    ap.add_argument("--threads", type=int, default=1, help="threads for tern sim (SCALE-Sim uses one)")
    ap.add_argument("--agreement", action="store_true", help="dense cycles op by op against a matching DLAC config")
    a = ap.parse_args()
    w = json.load(open(a.workload))
    ops = w["mm_ops"][: a.limit or None]
    tmp = tempfile.mkdtemp()
    topo = os.path.join(tmp, "topo.csv")
    with open(topo, "w") as f:
        f.write("Layer, M, N, K,\n")
        for i, op in enumerate(ops):
            m, red, n = dims(op)
            f.write(f"op{i}, {m}, {n}, {red},\n")
    layout = os.path.join(tmp, "layout.csv")
    with open(layout, "w") as f:
        f.write("Layer name, IFMAP Height Intraline Factor, IFMAP Width Intraline Factor, Filter Height Intraline Factor, Filter Width Intraline Factor, Channel Intraline Factor, Num Filter Intraline Factor, IFMAP Height Intraline Order, IFMAP Width Intraline Order, Channel Intraline Order, IFMAP Height Interline Order, IFMAP Width Interline Order, Channel Interline Order, Filter Height Intraline Order, Filter Width Intraline Order, Channel Intraline Order, Num Filter Intraline Order, Filter Height Interline Order, Filter Width Interline Order, Channel Interline Order, Num Filter Interline Order,\n")
        for i in range(len(ops)):
            f.write(f"op{i}, 1, 1, 1, 1, 1, 1, 0, 1, 2, 0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3,\n")
    cfg = os.path.join(tmp, "scale.cfg")
    open(cfg, "w").write(CFG)

    from scalesim.scale_sim import scalesim
    import contextlib, io
    t0 = time.perf_counter()
    s = scalesim(save_disk_space=True, verbose=False, config=cfg, topology=topo, layout=layout, input_type_gemm=True)
    with contextlib.redirect_stdout(io.StringIO()):
        s.run_scale(top_path=tmp)
    ss_secs = time.perf_counter() - t0
    ss_cycles, ss_per_op = 0, []
    for root, _, files in os.walk(tmp):
        if "COMPUTE_REPORT.csv" in files:
            lines = open(os.path.join(root, "COMPUTE_REPORT.csv")).read().strip().splitlines()[1:]
            # column 2: compute cycles ("Total Cycles"); column 1 adds the DRAM prefetch
            ss_per_op = [float(l.split(",")[2]) for l in lines]
            ss_cycles = sum(ss_per_op)

    if a.agreement:
        return agreement(a, w, ops, tmp, ss_per_op)
    sub = dict(w, mm_ops=ops)
    wl = os.path.join(tmp, "workload.json")
    json.dump(sub, open(wl, "w"))
    out = os.path.join(tmp, "tern")
    cmd = [a.tern, "--threads", str(a.threads), "sim", "--workload", wl, "--max-tiles", "0", "--out", out]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    summ = json.load(open(os.path.join(out, "summary.json")))
    t_secs, t_cycles = summ["simulation_seconds"], summ["total_cycles"]
    rows = [
        ("SCALE-Sim 3.0 (dense 64x8 OS array)", ss_cycles, ss_secs),
        (f"tern sim (DLAC 64x8, zero-skipping, {a.threads} thread(s))", t_cycles, t_secs),
    ]
    print(f"{len(ops)} mmOps from {a.workload}")
    print(f"{'simulator':<52} {'cycles':>14} {'seconds':>9} {'cycles/s':>12}")
    for name, c, sec in rows:
        print(f"{name:<52} {c:>14.4g} {sec:>9.2f} {c / sec:>12.4g}")
    ratio = (t_cycles / t_secs) / (ss_cycles / ss_secs)
    print(f"tern sim simulates {ratio:.0f}x more cycles per second")
    print(json.dumps({"ops": len(ops), "scalesim": {"cycles": ss_cycles, "seconds": ss_secs},
                      "tern": {"cycles": t_cycles, "seconds": t_secs, "threads": a.threads}, "ratio": ratio}))


DENSE_MATCH = """name = "dense-64x8-match"
rows = 64
cols = 8
units = 1
out_buffers = 1
window = 64
scan_rate = 64
read_words_per_cycle = 1048576
precision = "fp32"
clock_mhz = 500.0
weight_buffer_kib = 216
ifm_buffer_kib = 216
"""


def agreement(a, w, ops, tmp, ss_per_op):
    """Dense cycles per op: SCALE-Sim's OS array against DLAC configured to match it."""
    dense_ops = [dict(op, zero_frac=[0.0, 0.0]) for op in ops]
    wl = os.path.join(tmp, "dense.json")
    json.dump(dict(w, mm_ops=dense_ops), open(wl, "w"))
    cfg = os.path.join(tmp, "dense.toml")
    open(cfg, "w").write(DENSE_MATCH)
    out = os.path.join(tmp, "tern-dense")
    subprocess.run([a.tern, "sim", "--workload", wl, "--config", cfg, "--max-tiles", "0", "--out", out],
                   check=True, stdout=subprocess.DEVNULL)
    import csv
    tern = [float(r["cycles"]) for r in csv.DictReader(open(os.path.join(out, "layers.csv")))]
    # an output-stationary systolic fold also pays the skew of its operands through the array
    skew = 64 + 8 - 2
    print(f"{'op':<28} {'m':>6} {'red':>6} {'n':>6} {'folds':>6} {'SCALE-Sim':>11} {'tern':>11} {'ratio':>6} {'diff/fold':>9} {'tern+skew':>10} {'resid%':>7}")
    rows = []
    for op, ss, t in zip(ops, ss_per_op, tern):
        m, red, n = dims(op)
        folds = -(-m // 64) * -(-n // 8)
        with_skew = t + folds * skew
        rows.append({"op": f"{op['name']}:{op['pass']}", "m": m, "red": red, "n": n, "folds": folds,
                     "scalesim": ss, "tern": t, "ratio": t / ss, "diff_per_fold": (ss - t) / folds,
                     "tern_plus_skew": with_skew, "residual_pct": 100 * (with_skew - ss) / ss})
        r = rows[-1]
        print(f"{r['op'][:28]:<28} {m:>6} {red:>6} {n:>6} {folds:>6} {ss:>11.0f} {t:>11.0f} {r['ratio']:>6.3f} "
              f"{r['diff_per_fold']:>9.1f} {with_skew:>10.0f} {r['residual_pct']:>7.2f}")
    tot_ss, tot_t = sum(r["scalesim"] for r in rows), sum(r["tern"] for r in rows)
    tot_sk = sum(r["tern_plus_skew"] for r in rows)
    worst = max(abs(r["residual_pct"]) for r in rows)
    print(f"total: SCALE-Sim {tot_ss:.0f}, tern {tot_t:.0f} (ratio {tot_t / tot_ss:.3f}); "
          f"tern + {skew} skew cycles per fold {tot_sk:.0f} (ratio {tot_sk / tot_ss:.4f}, worst op {worst:.2f} %)")
    print(json.dumps({"ops": rows, "total_ratio": tot_t / tot_ss, "skew_ratio": tot_sk / tot_ss, "worst_residual_pct": worst}))


if __name__ == "__main__":
    sys.exit(main())
