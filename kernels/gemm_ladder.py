"""The GEMM as a lesson: `C = A @ B.T` (A [M, K], B [N, K], float32) from the triple loop to a BLIS-style kernel.

Each step is one short function with the same contract as `gemm_numpy`, tested against it
(tests/test_gemm_ladder.py) and timed by `python tools/bench.py --gemm-ladder`. What each buys, on a core
with two FMA pipes (Zen 4: 2 x 256-bit, so one 16-float zmm FMA or two 8-float ymm FMAs per cycle):

  1. `gemm_naive`     i-j-k loops, IEEE order: one scalar multiply-add chain per C element, latency-bound.
  2. `gemm_dot`       the same loops with reassociation: LLVM vectorises the k-contiguous dot product.
  3. `gemm_dot_tile`  a 4 x 4 register tile of dot products: each loaded vector is used 4 times.
  4. `gemm_blis`      packed micro-panels, an outer-product micro-kernel and KC/MC/NC cache blocking (BLIS).
  5. `gemm_parallel`  step 4 on blocks of C handed to the threads one at a time.

The fast GEMM the model uses is `matmul.matmul_panels`: step 5 with B (the weights) packed once, when the
model is first used, instead of on every call (kept in a memory-mapped file), A's rows broadcast where they lie
instead of packed, its tile `_tile.panel_tile`, and the bias/activation/residual epilogue fused.
"""
import numba
import numpy as np
from numba import njit, prange

from ._jit import JIT as OPTS  # the kernels' options: reassociation lets LLVM reorder sums, so vectorise them
from ._jit import helper
from ._tile import stack_tile, target_has_avx512


def gemm_numpy(a, b):  # [M, K], [N, K] -> [M, N]
    """The reference every step must equal: C[m, n] = sum_k A[m, k] B[n, k]."""
    return a @ b.T


# ---- 1. naive ----------------------------------------------------------------------------------------------

@helper(error_model="numpy", cache=True)  # no fastmath: the sum is added in the order written
def gemm_naive(a, b, c):  # [M, K], [N, K] -> c [M, N]
    """Three loops. Each k step adds to the previous sum, and IEEE addition is not associative, so LLVM must
    keep that order (and, without `contract`, a separate multiply and add): one scalar add per ~3 cycles,
    its latency, where the core could do 32 flops per cycle."""
    m, k_total = a.shape
    for i in range(m):
        for j in range(b.shape[0]):
            s = np.float32(0.0)
            for k in range(k_total):
                s += a[i, k] * b[j, k]
            c[i, j] = s


# ---- 2. vectorised dot product -----------------------------------------------------------------------------

@helper(**OPTS)
def gemm_dot(a, b, c):  # [M, K], [N, K] -> c [M, N]
    """The same loops; `reassoc` lets LLVM split the sum into 16-lane partial sums (several zmm accumulators
    in flight, so latency hides) and add the lanes at the end. A[i, :] and B[j, :] are both contiguous in k,
    so the loads are plain vector loads. Now it is load-bound: 2 loads per FMA (L1 gives 2 per cycle), and
    every row of B is streamed again for every row of A (from L2/L3 once B outgrows L1)."""
    m, k_total = a.shape
    for i in range(m):
        for j in range(b.shape[0]):
            s = np.float32(0.0)
            for k in range(k_total):
                s += a[i, k] * b[j, k]
            c[i, j] = s


# ---- 3. register tile of dot products ----------------------------------------------------------------------

DOT_MR = DOT_NR = 4  # 16 accumulators (the tile attention ran on before the panel tile)


@helper(**OPTS)
def gemm_dot_tile(a, b, c):  # [M, K], [N, K] -> c [M, N]
    """4 rows of A x 4 rows of B at a time, 16 dot products over the whole of K. Per k-vector it loads 4 + 4
    vectors and does 16 FMAs: 0.5 loads per FMA instead of 2, and B is streamed M/4 times instead of M.
    Live registers: 16 vector accumulators + 4 + 4 operand vectors = 24 - fits AVX-512's 32 zmm, but not
    AVX2's 16 ymm, where LLVM spills accumulators to the stack. Every tile still ends in 16 horizontal
    reductions (a vector of partial sums -> one float), which a long K amortises. Edge rows and columns
    reuse the last valid one (clamped index) and are not stored."""
    m, k_total = a.shape
    n = b.shape[0]
    for i0 in range(0, m, DOT_MR):
        for j0 in range(0, n, DOT_NR):
            acc = stack_tile(DOT_MR, DOT_NR)
            for i in range(DOT_MR):
                for j in range(DOT_NR):
                    acc[i, j] = 0.0
            for k in range(k_total):
                for i in range(DOT_MR):
                    for j in range(DOT_NR):
                        acc[i, j] += a[min(i0 + i, m - 1), k] * b[min(j0 + j, n - 1), k]
            for i in range(min(DOT_MR, m - i0)):
                for j in range(min(DOT_NR, n - j0)):
                    c[i0 + i, j0 + j] = acc[i, j]


# ---- 4. BLIS: packed micro-panels, outer-product micro-kernel, cache blocking ------------------------------

# Registers live in the micro-kernel's loop: MR x NR / lanes accumulators, the NR / lanes vectors of B, and
# the broadcast A values (LLVM hoists all MR broadcasts of a k step). Spill-free in the compiled loop
# (`inspect_asm`: no stack access between the FMAs), and the fastest of those measured (one thread):
#   AVX-512, 32 zmm of 16 floats: 10 x 32 = 20 acc + 2 B + 10 A = 32 zmm (6 x 32, 8 x 32, 6 x 64, 4 x 64 also
#   spill-free, within 5% of it; 12 x 32 and 14 x 32 spill).
#   AVX2, 16 ymm of 8 floats: 3 x 32 = 12 acc + 3 A + 1 B (loaded one vector at a time) = 16 ymm. The classic
#   hand-scheduled 6 x 16 (12 acc + 2 B + 1 A) spills here, as LLVM keeps its 6 broadcasts live: half the speed.
MR, NR = (10, 32) if target_has_avx512() else (3, 32)
# The textbook sizes: B's KC x NR micro-panel in L1 (32 KiB), A's MC x KC block in L2 (1 MiB), B's KC x NC
# panel in L3. Measured here (AVX-512, 6 x 32 tile, 257 x 1024 x 1024, one thread, CPU time): KC = 128, 256,
# 512, 1024 gave 57, 62, 70, 74 GFLOP/s, because each micro-kernel call ends with an MR x NR read-add-write
# of C (scalar: a vectorised one made LLVM put acc back in memory), which a long KC amortises. So KC = 1024:
# B's micro-panel (128 KiB) is reused from L2, which feeds its 128 B per k step (20 FMAs) with room to spare;
# A's block streams past it from L2/L3 at only MR floats per k step.
KC = 1024
MC = 512  # rows of A per packed block (2 MiB at KC = 1024: L3); M = 257 and 616 are one or two blocks
NC = 4096  # columns of B per packed panel (16 MiB at KC = 1024: L3); the model's N is at most 4096


@helper(**OPTS)
def pack_a(a, i0, mc, k0, kc, ap):  # A[i0:i0+mc, k0:k0+kc] -> ap [mc/MR, KC, MR]: MR-row micro-panels, k-major
    for p in range((mc + MR - 1) // MR):
        for r in range(MR):
            if p * MR + r < mc:
                ap[p, :kc, r] = a[i0 + p * MR + r, k0:k0 + kc]
            else:
                ap[p, :kc, r] = 0.0  # zero rows: the micro-kernel never sees a ragged edge


@helper(**OPTS)
def pack_b(b, j0, nc, k0, kc, bp):  # B[j0:j0+nc, k0:k0+kc] -> bp [nc/NR, KC, NR]: NR-column micro-panels, k-major
    for q in range((nc + NR - 1) // NR):
        for r in range(NR):
            if q * NR + r < nc:
                bp[q, :kc, r] = b[j0 + q * NR + r, k0:k0 + kc]  # contiguous reads, strided writes
            else:
                bp[q, :kc, r] = 0.0


@njit(inline="always", **OPTS)
def micro_kernel(ap, bp, kc, c, i0, j0, m, n, accumulate):  # ap [KC, MR], bp [KC, NR] -> c[i0:, j0:] (+)=
    acc = stack_tile(MR, NR)
    for i in range(MR):
        for j in range(NR):
            acc[i, j] = 0.0
    for k in range(kc):  # rank-1 update of the MR x NR tile per k: no reductions, no shuffles
        for j in range(NR):  # (j outside i: LLVM vectorises this loop, NR / lanes vector loads of B)
            bkj = bp[k, j]
            for i in range(MR):
                acc[i, j] += ap[k, i] * bkj  # ap[k, i] is one broadcast per row
    for i in range(min(MR, m - i0)):  # bounded by MR, NR: LLVM unrolls, acc's indices stay constants
        for j in range(min(NR, n - j0)):
            ii, jj = np.uint64(i0 + i), np.uint64(j0 + j)  # unsigned: no negative-index wrap-around check
            if accumulate:
                c[ii, jj] += acc[i, j]
            else:
                c[ii, jj] = acc[i, j]


@helper(**OPTS)
def blis_block(a, b, c, m0, m1, n0, n1):  # c[m0:m1, n0:n1] = a[m0:m1] @ b[n0:n1].T
    k_total = a.shape[1]
    ap = np.empty(((min(MC, m1 - m0) + MR - 1) // MR, KC, MR), np.float32)
    bp = np.empty(((min(NC, n1 - n0) + NR - 1) // NR, KC, NR), np.float32)
    for j0 in range(n0, n1, NC):  # loop 5: a panel of NC columns of C
        nc = min(NC, n1 - j0)
        for k0 in range(0, k_total, KC):  # loop 4: KC of K at a time; pack B's KC x NC panel (L3)
            kc = min(KC, k_total - k0)
            pack_b(b, j0, nc, k0, kc, bp)
            for i0 in range(m0, m1, MC):  # loop 3: pack A's MC x KC block (L2 / L3)
                mc = min(MC, m1 - i0)
                pack_a(a, i0, mc, k0, kc, ap)
                for q in range((nc + NR - 1) // NR):  # loop 2: one B micro-panel (L1 / L2) ...
                    for p in range((mc + MR - 1) // MR):  # loop 1: ... against every A micro-panel
                        micro_kernel(ap[p], bp[q], kc, c, i0 + p * MR, j0 + q * NR, m1, j0 + nc, k0 > 0)


@helper(**OPTS)
def gemm_blis(a, b, c):  # [M, K], [N, K] -> c [M, N]
    """The GotoBLAS/BLIS GEMM (Goto & van de Geijn 2008; Van Zee & van de Geijn 2015), five loops around a
    micro-kernel. The micro-kernel is an outer product: per k it broadcasts MR values of A, loads NR / lanes
    vectors of B, and adds their MR x NR product to accumulators that stay in registers for all KC steps, so
    C's tile is read and written once per KC, and nothing is reduced horizontally. Packing puts the operands in
    the order the micro-kernel reads them (k-major MR-row panels of A, NR-column panels of B, zero-padded),
    so its loads are contiguous and it never handles an edge. The blocking sizes each packed buffer for the
    cache level it is reused from: in the textbook B's KC x NR micro-panel in L1 (reused by all MC / MR
    micro-kernels of loop 1), A's MC x KC block in L2 (reused by every micro-panel of B), B's KC x NC panel
    in L3; here a longer KC measured faster (see KC above), so B's micro-panel is reused from L2."""
    blis_block(a, b, c, 0, a.shape[0], 0, b.shape[0])


# ---- 5. parallel blocks ------------------------------------------------------------------------------------

@helper(parallel=True, **OPTS)
def _gemm_parallel(a, b, c, n_task):  # [M, K], [N, K] -> c [M, N], in tasks of <= MC rows x n_task columns
    m, n = a.shape[0], b.shape[0]
    n_blocks = (n + n_task - 1) // n_task
    m_blocks = (m + MC - 1) // MC
    rows = ((m + m_blocks - 1) // m_blocks + MR - 1) // MR * MR  # rows split evenly, a multiple of MR
    for task in prange(n_blocks * m_blocks):
        n0 = task // m_blocks * n_task
        m0 = task % m_blocks * rows
        blis_block(a, b, c, m0, min(m, m0 + rows), n0, min(n, n0 + n_task))


def gemm_parallel(a, b, c):  # [M, K], [N, K] -> c [M, N]
    """Step 4 on blocks of C, one task each (its own packed buffers, no shared writes). Tasks are handed out
    one at a time (`parallel_chunksize(1)`, as `matmul.py` does): on a shared machine a thread whose core is
    busy takes fewer tasks instead of holding up the whole GEMM. More tasks balance better but repack more:
    each task packs its rows of A once per KC, so a narrow column block repacks A often when M is large."""
    with numba.parallel_chunksize(1):
        _gemm_parallel(a, b, c, 256 if a.shape[0] <= MC else 1024)


STEPS = {"1 naive": gemm_naive, "2 dot": gemm_dot, "3 dot tile": gemm_dot_tile, "4 blis": gemm_blis,
         "5 parallel": gemm_parallel}
