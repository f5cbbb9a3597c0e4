"""The one switch between plain NumPy and the Numba kernels of `kernels/` (installed as `altclip_np.kernels`).

The model's maths is written once, in NumPy, in layers.py; each op there asks `uses(family)` whether to hand
its work to a Numba kernel instead. The families are "matmul" (the hand-written GEMM), "attention" (fused
scaled-dot-product attention) and "elementwise" (LayerNorm, activations, the bias+activation and
bias+residual fusions).
  "numpy"  plain NumPy: the readable reference (its matmuls run on NumPy's OpenBLAS).
  "numba"  every family on this project's Numba kernels.
  "auto"   (default) what was measured to be faster on this machine (autotune.py: timed once, cached per CPU,
           thread count and version): for each class of GEMM rows the Numba GEMM or OpenBLAS, the fused
           Numba attention or BLAS + the Numba softmax; LayerNorm, activations and the fusions on Numba.
Pick with `set_backend(...)`, or the environment variable ALTCLIP_NP_BACKEND (read when the backend is first
used; a bad value is a ValueError then, naming the allowed ones). The kernels package (and Numba with it) is
imported only when a backend that uses it first runs an op.
"""
import os

BACKENDS = ("numpy", "numba", "auto")
DEFAULT = "auto"
FAMILIES = {"numpy": frozenset(), "numba": frozenset({"matmul", "attention", "elementwise"}),
            "auto": frozenset({"elementwise"})}  # and, as measured, matmul (by rows) and attention
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


def uses(family, tokens=None):
    """True when the current backend runs `family` ("matmul", "attention", "elementwise") on Numba (for attention:
    over `tokens` keys)."""
    name = get_backend()
    if name == "auto" and family == "attention":
        from . import autotune
        return autotune.attention_on_numba(tokens)
    return family in FAMILIES[name]


def gemm_on_numba(rows):
    """True when a Linear over `rows` rows should run on the Numba GEMM rather than OpenBLAS."""
    if get_backend() == "auto":
        from . import autotune
        return autotune.gemm_on_numba(rows)
    return uses("matmul")


def kernels():
    from altclip_np import kernels
    return kernels

