"""Process-wide tunings, applied only when asked for: `tune_process()`.

altclip_np is imported into other people's programs, so importing it, building a model or running a forward
changes nothing in the process (environment, allocator, GC). The tunings below were each measured to pay on the
project's machine (2-core AMD EPYC) and are what the `altclip-np` command turns on first thing. A program that
runs the model a lot can call `tune_process()` itself, as early as possible (before NumPy is imported, and
before the first forward); each tuning can be left out by keyword.

- `openblas_thread_timeout`: OpenBLAS's idle worker spins on the other core for ~0.1 s after each call, which
  halves the speed of the parallel Numba kernel that runs next (measured: the Numba GEMM right after np.matmul,
  87 vs 173 GFLOP/s). OPENBLAS_THREAD_TIMEOUT=4 puts it to sleep at once. OpenBLAS reads it when NumPy is
  first imported, so it takes effect only before that; child processes inherit it.
- `omp_wait_policy`: Numba's parallel kernels run on OpenMP (libgomp), whose idle threads spin before they
  sleep: by default ~5 ms, which starves an OpenBLAS GEMM that runs next on the same cores (measured: a GEMM +
  attention pair 10-20x slower; a 128 x 1024 x 1024 GEMM after a Numba kernel 3.8 ms against 1.6); not
  spinning at all (OMP_WAIT_POLICY=PASSIVE) makes every kernel wake the other thread (257 x 1024 x 1024:
  1.45 against 1.32 ms). GOMP_SPINCOUNT=10000 spins ~0.2 ms: a model's kernels, which follow each other
  within that, find the threads awake (one image +6%, 8 x 16 texts +14%, 16 mixed texts +11%, against
  PASSIVE, on Zen 5) and OpenBLAS after one waits ~0.2 ms (1.77 against 1.56 ms). Left alone when the user
  set OMP_WAIT_POLICY or GOMP_SPINCOUNT; libgomp reads it when Numba first starts its threads.
- `malloc`: glibc's malloc serves big blocks (the model's activations, 1-4 MiB per image) with fresh mmaps, or
  trims the heap they came from when they are freed, so a forward can page-fault its activations in again:
  eight images (Zen 4, 2026-12-08), 71,000 faults and 0.32 s of system time a forward, 600 and 0.02 s with
  this (one image: none either way; 8 x 77 texts 6,100 and 0.02 s, none). `mallopt` keeps freed memory for
  reuse instead: blocks up to 32 MiB come from the heap, which is not trimmed below 1 GiB (so the process may
  keep up to 1 GiB of freed memory).
- `gc_freeze`: Numba leaves ~120,000 long-lived objects (its type system, registries, the loaded kernels) for
  Python's cyclic GC to walk: each full collection takes ~50 ms, and interpreter exit spent 0.3-0.4 s in them
  (one-image zero-shot process: 2.71 -> 2.37 s). After the first forward that follows, every object alive then
  (the host program's too) moves to the GC's permanent generation (`gc.freeze`), as Python's docs suggest for
  objects made at start-up: they are never collected, and later collections skip them.
"""
import ctypes
import gc
import os
import sys

TUNINGS = ("openblas_thread_timeout", "omp_wait_policy", "malloc", "gc_freeze")
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
_gc_freeze = None  # None, then "armed" by tune_process, then "done" after the next forward


def tune_process(openblas_thread_timeout=True, omp_wait_policy=True, malloc=True, gc_freeze=True):
    """Apply the tunings of the module docstring to this process. Returns {tuning: what happened}, each value
    "applied", "already set" (by the user or an earlier call: left as it is), "too late: ..." or "skipped"."""
    return {
        "openblas_thread_timeout": (_set_env("OPENBLAS_THREAD_TIMEOUT", "4", too_late="numpy" in sys.modules
                                             and "NumPy (and OpenBLAS) already loaded")
                                    if openblas_thread_timeout else "skipped"),
        "omp_wait_policy": ("already set" if "OMP_WAIT_POLICY" in os.environ else
                            _set_env("GOMP_SPINCOUNT", "10000", too_late=_library_loaded("libgomp")
                                     and "OpenMP's threads already started")
                            if omp_wait_policy else "skipped"),
        "malloc": _tune_malloc() if malloc else "skipped",
        "gc_freeze": _arm_gc_freeze() if gc_freeze else "skipped",
    }


def after_forward():
    """Called by the models after each forward: the armed GC freeze happens once, here (see `gc_freeze`)."""
    global _gc_freeze
    if _gc_freeze == "armed":
        _gc_freeze = "done"
        gc.freeze()


def _set_env(name, value, too_late):
    if name in os.environ:
        return "already set"
    os.environ[name] = value  # set even when late: child processes (e.g. workers) read it at their start
    return f"too late: {too_late}" if too_late else "applied"


def _library_loaded(name):  # is a shared library with this name mapped into the process? (Linux)
    try:
        with open("/proc/self/maps") as maps:
            return any(name in line for line in maps)
    except OSError:
        return False


_malloc_tuned = False


def _tune_malloc():
    global _malloc_tuned
    if _malloc_tuned:
        return "already set"
    if not sys.platform.startswith("linux"):
        return "skipped: glibc's mallopt is Linux-only"
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the process's own C library; musl has no mallopt
    except (OSError, AttributeError):
        return "skipped: this C library has no mallopt"
    mallopt(M_TRIM_THRESHOLD, 1 << 30)
    mallopt(M_MMAP_THRESHOLD, 32 << 20)  # glibc's maximum
    _malloc_tuned = True
    return "applied"


def _arm_gc_freeze():
    global _gc_freeze
    if _gc_freeze is not None:
        return "already set"
    _gc_freeze = "armed"
    return "applied (at the end of the next forward)"
