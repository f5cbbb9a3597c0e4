"""Single-precision GEMM `C = A @ B.T` (B in the checkpoint's [out, in] layout), GotoBLAS/BLIS style.

The maths is one line (`matmul_nt_numpy`); the Numba version is about where the data sits:
  - B is cut into blocks of NC rows (output columns) x KC of K. A block is packed into a contiguous,
    zero-padded buffer (128 KiB: it stays in L2) and reused against every row of A.
  - A is walked MR rows at a time; its MR x KC micro-panel is packed too (8 KiB: it stays in L1; rows past
    M repeat the last row, so the micro-kernel never sees a ragged edge) and reused against every NR rows
    of the B block.
  - The micro-kernel (`_tile.dot_tile`) keeps an MR x NR tile of C in registers while it runs over KC.
  - `prange` runs over the B blocks: each thread owns whole columns of C (no write sharing), and with
    N >= 1024 there are >= 8 blocks, so 2 threads stay balanced even when M = 257.
"""
import numpy as np
from numba import njit, prange

from ._tile import FAST, MR, NR, dot_tile, store_tile

KC = 512  # K per packed block: MR x KC of A (8 KiB) fits L1, NC x KC of B (256 KiB) fits L2
NC = 128  # rows of B (columns of C) per block and per parallel task


def matmul_nt_numpy(a, b):  # [M, K], [N, K] -> [M, N]: C[m, n] = sum_k A[m, k] B[n, k]
    return a @ b.T


@njit(parallel=True, fastmath=FAST, cache=True)
def _matmul_nt(a, b, c):  # [M, K], [N, K] -> c [M, N] (written)
    m, k_total = a.shape
    n = b.shape[0]
    n_blocks = (n + NC - 1) // NC
    for jb in prange(n_blocks):
        n0 = jb * NC
        nc = min(NC, n - n0)
        ncp = (nc + NR - 1) // NR * NR
        bp = np.zeros((ncp, KC), np.float32)  # packed B block, rows past N stay zero
        ap = np.empty((MR, KC), np.float32)  # packed A micro-panel
        for k0 in range(0, k_total, KC):
            kc = min(KC, k_total - k0)
            for j in range(nc):
                bp[j, :kc] = b[n0 + j, k0:k0 + kc]
            for i0 in range(0, m, MR):
                for i in range(MR):
                    ap[i, :kc] = a[min(i0 + i, m - 1), k0:k0 + kc]
                for j0 in range(0, ncp, NR):
                    tile = dot_tile(ap, 0, bp, j0, 0, kc)
                    store_tile(c[:, n0:n0 + nc], i0, j0, tile, m, nc, k0 > 0)


def matmul_nt(a, b, out=None):  # [M, K], [N, K] -> [M, N]
    """`a @ b.T` in float32 with the Numba GEMM. `b` may be a read-only memory map; it is never copied whole."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = np.ascontiguousarray(b, dtype=np.float32)
    if out is None:
        out = np.empty((a.shape[0], b.shape[0]), np.float32)
    _matmul_nt(a, b, out)
    return out
