"""Every step of kernels/gemm_ladder.py against the NumPy reference `a @ b.T`, on awkward shapes (M, N, K not
multiples of any tile or block; M = 1; K = 1; K past one KC block), and the AVX2 build of the BLIS steps on a
machine that may have AVX-512. No timing here: `python tools/bench.py --gemm-ladder` times them.

Tolerance: float32 sums of K products of standard normals, in a different order than OpenBLAS's, differ by
rounding ~ sqrt(K) ulp of the result; 2e-5 * sqrt(K) absolute + 1e-5 relative (max abs difference observed:
1.1e-4 at K = 1029, bound 6.4e-4; 1.1e-5 at K = 70; 0 at K = 1)."""
import math
import os
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


def test_tile_fits_the_register_file():
    # the shape chosen for the ISA Numba compiles for: accumulators + B vectors within 32 zmm / 16 ymm
    lanes, registers = (16, 32) if L._numba_target_has_avx512() else (8, 16)
    assert L.NR % lanes == 0 and L.MR * L.NR // lanes + L.NR // lanes <= registers


AVX2_CHILD = r"""
import numpy as np
from altclip_np.kernels import gemm_ladder as L
assert not L._numba_target_has_avx512() and (L.MR, L.NR) == (3, 32), (L.MR, L.NR)
rng = np.random.default_rng(1)
worst = 0.0
for m, k, n in [(1, 1, 1), (7, 1, 9), (13, 70, 45), (L.MC + 7, 33, 2 * L.NR + 3), (9, L.KC + 5, 50)]:
    a, b = rng.standard_normal((m, k), dtype=np.float32), rng.standard_normal((n, k), dtype=np.float32)
    for step in (L.gemm_blis, L.gemm_parallel):
        c = np.full((m, n), np.nan, np.float32)
        step(a, b, c)
        np.testing.assert_allclose(c, a @ b.T, atol=2e-5 * k ** 0.5, rtol=1e-5)
        worst = max(worst, float(np.abs(c - a @ b.T).max()))
asm = next(iter(L.blis_block.inspect_asm().values()))
assert "zmm" not in asm and "vfmadd231ps\t%ymm" in asm  # compiled for AVX2: 256-bit registers only
print(worst)
"""


@pytest.mark.slow
def test_avx2_build_matches_numpy(tmp_path):
    # Numba takes the host's features unless NUMBA_CPU_FEATURES is set: NUMBA_CPU_NAME=haswell alone still
    # emits AVX-512 on an AVX-512 host. An empty feature list means "the named CPU's own features".
    env = dict(os.environ, NUMBA_CPU_NAME="haswell", NUMBA_CPU_FEATURES="", NUMBA_CACHE_DIR=str(tmp_path))
    run = subprocess.run([sys.executable, "-c", AVX2_CHILD], env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert float(run.stdout.split()[-1]) < 1e-3  # max abs difference (observed ~5e-5)
