"""Process-wide settings that make the model fast on a CPU, each measured on the project's machine.

- OpenBLAS's idle worker spins on the other core for ~0.1 s after each call, which halves the speed of the
  parallel Numba kernel that runs next (measured: the Numba GEMM right after np.matmul, 87 vs 173 GFLOP/s).
  Sleeping at once costs OpenBLAS nothing measurable. OpenBLAS reads OPENBLAS_THREAD_TIMEOUT when NumPy is
  first imported, so it only helps when altclip_np is imported first (as the altclip-np command does).
- glibc's malloc serves big blocks (the model's activations, 1-4 MiB per image) with fresh mmaps and hands
  them back on free, so every forward page-faults its activations in again: ~37,000 faults per image, 6-9%
  of a vision forward. `tune_malloc` (run when a model is built) keeps freed memory for reuse instead: blocks
  up to 32 MiB come from the heap, which is not trimmed below 1 GiB. Set ALTCLIP_NP_TUNE_MALLOC=0 to leave
  malloc alone.
- Numba leaves ~120,000 long-lived objects (its type system, registries, the loaded kernels) for Python's
  cyclic GC to walk: each full collection takes ~50 ms, and interpreter exit spent 0.3-0.4 s in them
  (measured on a one-image zero-shot run, 2.5 s of process wall time). `freeze_gc_once`, run after the first
  forward (when the kernels are loaded), moves every object alive then to the GC's permanent generation, as
  Python's docs suggest for objects made at start-up: they are never collected, and later collections skip
  them. Only objects alive at that moment are affected.
"""
import ctypes
import gc
import os
import sys

os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_tuned = False
_frozen = False


def tune_malloc():
    """Keep freed activation memory in the process for reuse (glibc only; a no-op elsewhere or when disabled)."""
    global _tuned
    if _tuned or not sys.platform.startswith("linux") or os.environ.get("ALTCLIP_NP_TUNE_MALLOC", "1") == "0":
        return
    _tuned = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library; musl has no mallopt
    except (OSError, AttributeError):
        return
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum


def freeze_gc_once():
    """After the first forward: let the cyclic GC ignore every object alive now (see the module docstring)."""
    global _frozen
    if not _frozen:
        _frozen = True
        gc.freeze()
