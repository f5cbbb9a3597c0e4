"""Every step of kernels/gemm_ladder.py against the NumPy reference `a @ b.T`, on awkward shapes (M, N, K not
multiples of any tile or block; M = 1; K = 1; K past one KC block), and the AVX2 build of the BLIS steps on a
machine that may have AVX-512. No timing here: `python tools/bench.py --gemm-ladder` times them.

Tolerance: float32 sums of K products of standard normals, in a different order than OpenBLAS's, differ by
rounding ~ sqrt(K) ulp of the result; 2e-5 * sqrt(K) absolute + 1e-5 relative (max abs difference observed:
1.1e-4 at K = 1029, bound 6.4e-4; 1.1e-5 at K = 70; 0 at K = 1)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from altclip_np.kernels import gemm_ladder as L

RNG = np.random.default_rng(0)
# (M, K, N): tiny; M = 1; K = 1; nothing a multiple of 4, MR or NR; more rows than MC; K past KC
SHAPES = [(1, 1, 1), (1, 37, 70), (7, 1, 9), (13, 70, 45), (L.MC + 7, 33, 2 * L.NR + 3), (9, L.KC + 5, 50)]
SLOW = ("1 naive", "2 dot")  # one scalar or vector dot product per element: small shapes only


def check(step, m, k, n):
    a = RNG.standard_normal((m, k), dtype=np.float32)
    b = RNG.standard_normal((n, k), dtype=np.float32)
    c = np.full((m, n), np.nan, np.float32)  # every element must be written
    step(a, b, c)
    np.testing.assert_allclose(c, L.gemm_numpy(a, b), atol=2e-5 * math.sqrt(k), rtol=1e-5)


@pytest.mark.parametrize("name", list(L.STEPS))
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_step_matches_numpy(name, m, k, n):
    if name in SLOW and m * k * n > 1e6:
        pytest.skip("the scalar steps only on small shapes")
    check(L.STEPS[name], m, k, n)


def hot_loop(asm):  # the innermost loop with the most FMAs in an x86 listing: its instructions
    lines, loops = asm.splitlines(), []
    for i, line in enumerate(lines):
        label = re.match(r"^(\.LBB\w+):", line)
        back = label and next((j for j in range(i + 1, len(lines))
                               if re.search(r"\sj\w+\s+" + re.escape(label.group(1)) + "$", lines[j])), None)
        if back:
            loops.append(lines[i + 1:back + 1])
    return max(loops, key=lambda loop: (sum("vfmadd" in x for x in loop), -len(loop)))


def register_resident(asm, mr, nr, lanes):  # the micro-kernel's loop: MR x NR / lanes FMAs, MR broadcasts
    loop = hot_loop(asm)
    fmas = [x for x in loop if "vfmadd" in x]
    assert len(fmas) == mr * nr // lanes, loop
    assert all(("zmm" if lanes == 16 else "ymm") in x for x in fmas), loop
    assert sum("vbroadcastss" in x for x in loop) == mr, loop
    assert not [x for x in loop if "rsp" in x], loop  # no spills or accumulators in memory


CHILD = r"""
import json
import numpy as np
from altclip_np.kernels import gemm_ladder as L
rng = np.random.default_rng(1)
worst = 0.0
for m, k, n in [(1, 1, 1), (7, 1, 9), (13, 70, 45), (L.MC + 7, 33, 2 * L.NR + 3), (9, L.KC + 5, 50)]:
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
    for step in (L.gemm_blis, L.gemm_parallel):
        c = np.full((m, n), np.nan, np.float32)
        step(a, b, c)
        np.testing.assert_allclose(c, a @ b.T, atol=2e-5 * k ** 0.5, rtol=1e-5)
        worst = max(worst, float(np.abs(c - a @ b.T).max()))
L.blis_block(a, b, c, 0, 1, 0, 1)
asm = L.blis_block.inspect_asm(L.blis_block.signatures[0])
print(json.dumps({"avx512": L.target_has_avx512(), "tile": [L.MR, L.NR], "worst": worst, "asm": asm}))
"""


def fresh_build(tmp_path, **env):  # the BLIS steps compiled in a child with a fresh cache (Numba shows no
    # assembly for cached code): {"avx512", "tile", "worst" (max abs difference), "asm"} of that build
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path), **env)
    run = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.splitlines()[-1])
    assert out["worst"] < 1e-3  # against a @ b.T (observed ~1e-4 at K = 1029)
    return out


@pytest.mark.slow
def test_host_build_is_register_resident(tmp_path):
    # the research finding, kept: LLVM compiles step 4's inner loop to an outer product held in registers
    out = fresh_build(tmp_path)
    lanes, registers = (16, 32) if out["avx512"] else (8, 16)
    mr, nr = out["tile"]
    assert nr % lanes == 0 and mr * nr // lanes <= registers - 2
    register_resident(out["asm"], mr, nr, lanes)


@pytest.mark.slow
def test_avx2_build(tmp_path):
    # Numba takes the host's features unless NUMBA_CPU_FEATURES is set: NUMBA_CPU_NAME=haswell alone still
    # emits AVX-512 on an AVX-512 host. An empty feature list means "the named CPU's own features".
    out = fresh_build(tmp_path, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="")
    assert not out["avx512"] and "zmm" not in out["asm"]  # 256-bit registers only
    register_resident(out["asm"], *out["tile"], 8)
