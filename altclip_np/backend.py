"""The one switch between plain NumPy and the Numba kernels of `kernels/` (installed as `altclip_np.kernels`).

The model's maths is written once, in NumPy, in layers.py; each op there asks `uses(family)` whether to hand
its work to a Numba kernel instead. The families are "matmul" (the hand-written GEMM), "attention" (fused
scaled-dot-product attention) and "elementwise" (LayerNorm, activations, the bias+activation and
bias+residual fusions).
  "numpy"  plain NumPy: the readable reference (its matmuls run on NumPy's OpenBLAS).
  "numba"  every family on this project's Numba kernels.
  "auto"   (default) the fastest combination measured with tools/bench.py on the project's machine: the
           Numba GEMM for Linears of up to AUTO_NUMBA_GEMM_ROWS rows (one image, a few texts: with its
           dynamic scheduling it matches or beats OpenBLAS there), OpenBLAS above that; the fused Numba
           attention, LayerNorm, activations and the fusions on Numba (README, "Speed").
Pick with `set_backend(...)`, or the environment variable ALTCLIP_NP_BACKEND (read when the backend is first
used; a bad value is a ValueError then, naming the allowed ones). The kernels package (and Numba with it) is
imported only when a backend that uses it first runs an op.
"""
import os

BACKENDS = ("numpy", "numba", "auto")
DEFAULT = "auto"
FAMILIES = {"numpy": frozenset(), "numba": frozenset({"matmul", "attention", "elementwise"}),
            "auto": frozenset({"attention", "elementwise"})}
AUTO_NUMBA_GEMM_ROWS = 1024
_backend = None  # chosen at first use: set_backend(...), else ALTCLIP_NP_BACKEND, else DEFAULT


def set_backend(name):
    global _backend
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {name!r}")
    _backend = name


def get_backend():
    global _backend
    if _backend is None:
        name = os.environ.get("ALTCLIP_NP_BACKEND", DEFAULT)
        if name not in BACKENDS:
            raise ValueError(f"ALTCLIP_NP_BACKEND must be one of {', '.join(BACKENDS)}; got {name!r}")
        _backend = name
    return _backend


def uses(family):
    """True when the current backend runs `family` ("matmul", "attention", "elementwise") on Numba."""
    return family in FAMILIES[get_backend()]


def gemm_on_numba(rows):
    """True when a Linear over `rows` rows should run on the Numba GEMM rather than OpenBLAS."""
    return uses("matmul") or (get_backend() == "auto" and rows <= AUTO_NUMBA_GEMM_ROWS)


def kernels():
    from altclip_np import kernels
    return kernels

