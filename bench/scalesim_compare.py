#!/usr/bin/env python3
"""Simulator speed: SCALE-Sim (PyPI `scalesim`, a dense systolic-array simulator) against
`tern sim` on the same mmOp list, as simulated cycles per wall-clock second.

The two simulate different machines (SCALE-Sim: a dense 64x8 output-stationary systolic
array; DLAC: the 64x8 zero-skipping PE grid of its preset), so the comparison is of simulator throughput,
not of the cycle counts. Run outside the repo's tests, with SCALE-Sim in a venv:

    /work/venv/bin/python bench/scalesim_compare.py --workload runs/prof-resnet34/workload.json \
        --tern target/release/tern [--limit N]
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
    ss_cycles = 0
    for root, _, files in os.walk(tmp):
        if "COMPUTE_REPORT.csv" in files:
            lines = open(os.path.join(root, "COMPUTE_REPORT.csv")).read().strip().splitlines()[1:]
            ss_cycles = sum(float(l.split(",")[1]) for l in lines)

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


if __name__ == "__main__":
    sys.exit(main())
