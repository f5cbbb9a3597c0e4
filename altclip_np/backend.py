"""The one switch between plain NumPy and the Numba kernels of `kernels/` (installed as `altclip_np.kernels`).

  "numpy"  plain NumPy: the readable reference (layers.py, vision.py, text.py; its matmuls run on NumPy's
           OpenBLAS).
  "numba"  the reference mapped onto this project's Numba kernels (fast.py): the Numba GEMM, the fused
           attention, LayerNorm and the bias+activation+residual fusions.
  "auto"   (default) as "numba", but for each class of GEMM rows the Numba GEMM or OpenBLAS and for each class
           of sequence length the fused Numba attention or BLAS + the Numba softmax, whichever autotune.py
           measured to be faster on this machine (timed once, cached per CPU, thread count and version).
Pick with `set_backend(...)`, or the environment variable ALTCLIP_NP_BACKEND (read when the backend is first
used; a bad value is a ValueError then, naming the allowed ones). fast.ops() reads the choice once per call;
the kernels package (and Numba with it) is imported only when a backend that uses it first runs.
"""
import os

BACKENDS = ("numpy", "numba", "auto")
DEFAULT = "auto"
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
