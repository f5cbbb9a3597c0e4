"""GFLOP/s of each step of kernels/gemm_ladder.py, beside the model's GEMM (matmul_nt) and OpenBLAS (`a @ b.T`).

Run as `python tools/bench.py --gemm-ladder [--threads 2] [--reps 5]` (which sets the thread counts before
numpy and numba load). Steps 1-4 run on one thread by construction; step 5, matmul_nt and OpenBLAS use all the
bench's threads. Every call of a shape is interleaved with the others (A B C ... A B C ...), medians quoted.
Two figures per cell: wall clock, and per CPU-second of this process (`time.process_time`), which on a machine
shared with other work is the steadier measure of what a core does (it leaves out the time the OS gave to
other processes; threads that spin while waiting still count). Steps 1-2 do one dot product per element of C
(~1-10 GFLOP/s), so they run on the first 16 rows of A only: the GFLOP/s per element is the same.
For the AVX2 build on an AVX-512 machine, set NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES="" and a fresh
NUMBA_CACHE_DIR (and OPENBLAS_CORETYPE=Haswell for OpenBLAS's AVX2 kernels).
"""
import time

import numba
import numpy as np

SHAPES = [(257, 1024, 1024), (257, 1024, 4096), (2056, 1024, 4096)]  # M x K x N of the model's GEMMs
SMALL_ROWS = 16  # rows of A for the two steps that do a dot product per element


def target():  # what Numba compiles for, and the BLIS tile it picked
    from altclip_np.kernels import gemm_ladder as L
    import llvmlite.binding as llvm

    cpu = numba.config.CPU_NAME or llvm.get_host_cpu_name()
    isa = "AVX-512" if L.target_has_avx512() else "AVX2"
    return f"Numba target {cpu} ({isa}), BLIS tile MR x NR = {L.MR} x {L.NR}, KC {L.KC}, MC {L.MC}, NC {L.NC}"


def ladder_section(reps, threads):
    from altclip_np.kernels import gemm_ladder as L
    from altclip_np.kernels import matmul_nt

    rng = np.random.default_rng(0)
    names = [*L.STEPS, "matmul_nt", "OpenBLAS"]
    head = " | ".join(f"{m} x {k} x {n}" for m, k, n in SHAPES)
    rows = [f"{target()}; {threads} threads for step 5, matmul_nt, OpenBLAS", "",
            f"| step | {head} |", "|---" * (len(SHAPES) + 1) + "|"]
    cells = {name: [] for name in names}
    for m, k, n in SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((n, k), dtype=np.float32)
        c, small = np.empty((m, n), np.float32), np.empty((SMALL_ROWS, n), np.float32)
        calls = {name: (lambda f=f: f(a[:SMALL_ROWS], b, small)) if name in ("1 naive", "2 dot")
                 else (lambda f=f: f(a, b, c)) for name, f in L.STEPS.items()}
        calls.update({"matmul_nt": lambda: matmul_nt(a, b, c), "OpenBLAS": lambda: np.matmul(a, b.T, out=c)})
        wall, cpu = {x: [] for x in calls}, {x: [] for x in calls}
        for rep in range(reps + 1):  # the first round warms up (and compiles nothing: kernels are cached)
            for name, f in calls.items():
                t, p = time.perf_counter(), time.process_time()
                f()
                if rep:
                    wall[name].append(time.perf_counter() - t)
                    cpu[name].append(time.process_time() - p)
        for name in names:
            flop = 2 * (SMALL_ROWS if name in ("1 naive", "2 dot") else m) * k * n
            gw, gc = flop / np.median(wall[name]) / 1e9, flop / np.median(cpu[name]) / 1e9
            spread = flop / max(wall[name]) / 1e9, flop / min(wall[name]) / 1e9
            cells[name].append(f"{gw:.0f} ({spread[0]:.0f}-{spread[1]:.0f}); {gc:.0f}/cpu-s")
    rows += [f"| {name} | " + " | ".join(cells[name]) + " |" for name in names]
    rows += ["", "GFLOP/s: median wall clock (range over the runs); per CPU-second of this process"]
    return rows
