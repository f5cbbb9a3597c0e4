"""The register tiles of the kernels: the GEMM's outer-product tile, and attention's 4 x 4 dot products.

`outer_tile` (matmul.py's micro-kernel) is described there and in gemm_ladder.py, step 4. The rest of this
docstring is about `dot_tile`, a 4 x 4 tile of dot products over a K-range.

Both operands keep K contiguous (`x @ w.T` with w [N, K] is the checkpoint layout), so the tile is written
as 16 dot products: per step of k it loads 4 values of A and 4 of B and does 16 multiply-adds. With
`fastmath` reassociation LLVM vectorises the k-loop (8 or 16 lanes per accumulator), keeping the 16
accumulators in registers; that is what makes it fast. The tile size is fixed here, not a runtime value,
because LLVM only vectorises loops whose body it can see in full.
"""
import llvmlite.binding as llvm
import numba
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

MR = 4  # rows of A per tile
NR = 4  # rows of B (columns of C) per tile

# fastmath without 'nnan'/'ninf': reassociation lets LLVM vectorise reductions, while -inf masks and NaNs
# keep their IEEE meaning. Every kernel also uses error_model="numpy": under Numba's default ("python") each
# float division checks for zero to raise ZeroDivisionError, and that branch keeps a loop with a division
# (erf's p / q, quick_gelu's x / (1 + e)) from vectorising: gelu measured 3.1 -> 0.31 ns per element.
FAST = {"reassoc", "contract", "nsz", "arcp", "afn"}
JIT = {"fastmath": FAST, "error_model": "numpy", "cache": True}  # every kernel's Numba options


def target_has_avx512():
    """Does Numba compile for AVX-512? It takes NUMBA_CPU_FEATURES if set, else the host's features, whatever
    NUMBA_CPU_NAME says: on an AVX-512 host, AVX2 code needs NUMBA_CPU_NAME=haswell NUMBA_CPU_FEATURES=""."""
    features = numba.config.CPU_FEATURES
    if features is None:
        features = llvm.get_host_cpu_features().flatten()
    return "+avx512f" in features.split(",")


@njit(inline="always", **JIT)
def dot_tile(a, i0, b, j0, k0, kc):  # a [>= i0+4, K], b [>= j0+4, K] -> 4x4 tuple of sum_k a[i, k] * b[j, k]
    z = np.float32(0.0)
    c00 = c01 = c02 = c03 = z
    c10 = c11 = c12 = c13 = z
    c20 = c21 = c22 = c23 = z
    c30 = c31 = c32 = c33 = z
    for k in range(k0, k0 + kc):
        a0 = a[i0, k]
        a1 = a[i0 + 1, k]
        a2 = a[i0 + 2, k]
        a3 = a[i0 + 3, k]
        b0 = b[j0, k]
        b1 = b[j0 + 1, k]
        b2 = b[j0 + 2, k]
        b3 = b[j0 + 3, k]
        c00 += a0 * b0
        c01 += a0 * b1
        c02 += a0 * b2
        c03 += a0 * b3
        c10 += a1 * b0
        c11 += a1 * b1
        c12 += a1 * b2
        c13 += a1 * b3
        c20 += a2 * b0
        c21 += a2 * b1
        c22 += a2 * b2
        c23 += a2 * b3
        c30 += a3 * b0
        c31 += a3 * b1
        c32 += a3 * b2
        c33 += a3 * b3
    return ((c00, c01, c02, c03), (c10, c11, c12, c13), (c20, c21, c22, c23), (c30, c31, c32, c33))


@intrinsic
def stack_tile(typingctx, rows, cols):  # -> [rows, cols] float32 on the stack, uninitialised; rows, cols constants
    """A register tile written as an array. An `np.empty` array is allocated by Numba's runtime, which LLVM
    cannot see through (it might alias A or B), so every `acc[i, j] +=` would stay a load and a store. A
    stack buffer (`alloca`) of constant size whose indices are constants once the loops over i and j are
    unrolled is split by LLVM (SROA) into scalars, which then live in registers."""
    if not (isinstance(rows, types.IntegerLiteral) and isinstance(cols, types.IntegerLiteral)):
        return None
    r, c = rows.literal_value, cols.literal_value
    tile = types.Array(types.float32, 2, "C")

    def codegen(context, builder, sig, args):
        f32 = context.get_value_type(types.float32)
        data = cgutils.alloca_once(builder, f32, size=r * c)
        array = context.make_array(tile)(context, builder)
        intp = context.get_value_type(types.intp)
        context.populate_array(array, data=data, shape=[intp(r), intp(c)], strides=[intp(4 * c), intp(4)],
                               itemsize=intp(4), meminfo=None)
        return array._getvalue()
    return tile(rows, cols), codegen


# The outer-product tile by register file (the register budget is in matmul.py's docstring): MR rows of A
# (vector lanes: 2 zmm or 4 ymm) x NR rows of W (broadcast)
OUTER_MR, OUTER_NR = (32, 10) if target_has_avx512() else (32, 3)


@njit(**JIT)  # a call per tile, not inlined: the same speed, and 2 s less to compile the GEMM
def outer_tile(ap, w, j0, k0, kc, c, i0, m, n, accumulate):
    # ap [>= kc, MR]: A[i0:i0+MR, k0:k0+kc] k-major; w [N, K] -> c[i0+i, j0+j] (+)= sum_k A[i0+i, k] w[j0+j, k]
    # for the part inside [m, n]; rows of w past n - 1 read row n - 1 (computed, not stored)
    acc = stack_tile(OUTER_NR, OUTER_MR)  # C^T's tile: acc[j, i]
    for j in range(OUTER_NR):
        for i in range(OUTER_MR):
            acc[j, i] = 0.0
    for k in range(kc):  # a rank-1 update per k: no reductions, no shuffles
        kk = np.uint64(k0 + k)  # unsigned: no negative-index wrap-around check in the loop
        for i in range(OUTER_MR):  # (i outside j: LLVM vectorises this loop, MR / lanes loads of A)
            aki = ap[k, i]
            for j in range(OUTER_NR):
                acc[j, i] += w[np.uint64(min(j0 + j, n - 1)), kk] * aki  # one broadcast per row of w
    for i in range(min(OUTER_MR, m - i0)):  # bounded by MR, NR: LLVM unrolls, acc's indices stay constants
        for j in range(min(OUTER_NR, n - j0)):
            ii, jj = np.uint64(i0 + i), np.uint64(j0 + j)
            if accumulate:
                c[ii, jj] += acc[j, i]
            else:
                c[ii, jj] = acc[j, i]
