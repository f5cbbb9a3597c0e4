"""How the kernels are compiled: each for one signature, on first use, in a child process, cached on disk.

- One signature per kernel (`kernel(*argtypes)`): inputs are typed read-only and of any layout the kernel
  accepts, outputs writable. After that signature is compiled the dispatcher compiles nothing more, so a call
  with a writable array, or a C-contiguous one where the signature says any layout, runs the same machine
  code (Numba converts the argument's type) instead of compiling a second version (measured before: a forward
  compiled the GEMM twice and attention four times, 64 s of a 97 s first run).
- Compiled in a child process, then loaded from the disk cache. Numba compiles a `parallel=True` kernel's
  loop body as a library of its own and links a copy into the kernel, where LLVM optimises it again; a
  kernel compiled in this process runs the first, one loaded from the cache in a fresh process the second
  (observed: even loaded from the cache, a kernel gives the in-process bits in the process that compiled it),
  and with fastmath reassociation the two sum in other orders. So results depended on whether the process
  compiled the kernel (a first run) or loaded it (every later run). Loading always gives the same bits cold
  or warm; and the children compile several kernels at once, one per core.
- The cache key adds a hash of every file in this package, since a kernel inlines functions from other
  files (_tile.py, elementwise.py) that Numba's own key (the kernel's file and bytecode, the CPU, Numba's
  version) does not see. The functions the kernels call (`helper`: the tile, attention's head, the GEMM
  lesson's steps) are cached under the same key.
The first compile logs one INFO line on the "altclip_np" logger (the `altclip-np` command prints it).
"""
import hashlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from numba import njit, types
from numba.core.caching import FunctionCache

log = logging.getLogger("altclip_np")
# fastmath without 'nnan'/'ninf': reassociation lets LLVM vectorise reductions, while -inf masks and NaNs
# keep their IEEE meaning. Every kernel also uses error_model="numpy": under Numba's default ("python") each
# float division checks for zero to raise ZeroDivisionError, and that branch keeps a loop with a division
# (erf's p / q, quick_gelu's x / (1 + e)) from vectorising: gelu measured 3.1 -> 0.31 ns per element.
FAST = {"reassoc", "contract", "nsz", "arcp", "afn"}
JIT = {"fastmath": FAST, "error_model": "numpy", "cache": True}  # every kernel's Numba options
SOURCES = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(Path(__file__).parent.glob("*.py")))).hexdigest()
KERNELS = {}  # name -> Kernel, in the order the modules define them
_lock = threading.Lock()


def array(ndim, layout="C", readonly=True):  # a float32 array argument type
    return types.Array(types.float32, ndim, layout, readonly=readonly)


class KernelCache(FunctionCache):
    """Numba's per-function disk cache with the package's source hash in the key."""

    def _index_key(self, sig, codegen):
        return super()._index_key(sig, codegen) + (SOURCES,)

    def has(self, sig, codegen):  # the index lists it (cheap: reads a small index file, no machine code)
        try:
            return self._index_key(sig, codegen) in self._cache_file._load_index()
        except Exception:  # noqa: BLE001 - an unreadable index (truncated, foreign): start it afresh
            self.flush()
            return False


def helper(**options):
    """numba.njit for a function the kernels call, with `cache=True` under KernelCache's key: Numba's own key
    sees only the function's file, so a cached helper outlived an edit to what it uses from another file
    (attention's head function kept a 6-row tile's block size after _tile.py went to 5 rows, and failed a
    reshape inside the new kernel)."""
    def wrap(py_func):
        dispatcher = njit(**options)(py_func)
        if options.get("cache"):
            dispatcher._cache = KernelCache(py_func)
        return dispatcher
    return wrap


class Kernel:
    """A parallel Numba kernel compiled for exactly one signature; call it like the function."""

    def __init__(self, py_func, argtypes, cost, group, warm):
        self.name = py_func.__name__
        self.dispatcher = helper(parallel=True, **JIT)(py_func)
        self.sig = tuple(argtypes)
        self.cost = cost  # seconds of CPU to compile, measured (for the message and for sharing out the work)
        self.group = group  # compiled together with the kernels of the same group, when the first is needed
        self.warm = warm  # compiled by warmup(): some command runs it
        self.loaded = False
        KERNELS[self.name] = self

    def __call__(self, *args):
        if not self.loaded:
            ensure([k for k in KERNELS.values() if k is self or self.group and k.group == self.group])
        return self.dispatcher(*args)

    def cached(self):
        return self.dispatcher._cache.has(self.sig, self.dispatcher.targetctx.codegen())

    def load(self):  # from the disk cache (or, when it is not there, compiled here), then nothing else
        self.dispatcher.compile(self.sig)
        self.dispatcher.disable_compile()
        self.loaded = True


MODEL = "model"  # the kernels every forward runs (on the "auto" and "numba" backends): compiled at once


def kernel(*argtypes, cost=5, group=None, warm=True):
    """Decorator: `py_func` as a Kernel for the signature `argtypes`."""
    return lambda py_func: Kernel(py_func, argtypes, cost, group, warm)


def _groups(kernels, n):  # share the kernels among n children, the most expensive first to the least loaded
    groups = [[] for _ in range(n)]
    for k in sorted(kernels, key=lambda k: -k.cost):
        min(groups, key=lambda g: sum(x.cost for x in g)).append(k)
    return [g for g in groups if g]


def ensure(kernels):
    """Make `kernels` callable: loaded from the disk cache, compiled first (in child processes) if missing.
    Returns the names of the kernels compiled now."""
    with _lock:  # one thread compiles; others wait for it
        todo = [k for k in kernels if not k.loaded]
        missing = [k for k in todo if not k.cached()]
        if missing:
            _compile(missing)
        for k in todo:
            try:
                k.load()
            except Exception:  # noqa: BLE001 - a damaged cache file (e.g. truncated): compile it afresh
                k.dispatcher._cache.flush()
                _compile([k])
                missing.append(k)
                k.load()
    return [k.name for k in missing]


def warmup():
    """Compile (or load) every kernel the model's forwards can run, ahead of time.
    -> [(kernel name, "compiled" | "cached")], the Numba cache directory"""
    kernels = [k for k in KERNELS.values() if k.warm]
    compiled = ensure(kernels)
    return [(k.name, "compiled" if k.name in compiled else "cached") for k in kernels], \
        kernels[0].dispatcher._cache.cache_path


def _compile(kernels):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    groups = _groups(kernels, max(1, min(cores, len(kernels))))
    estimate = max(sum(k.cost for k in g) for g in groups)
    done = threading.Event()
    log.info("compiling the Numba kernels for this CPU (once, about %.0f s)...", estimate, extra={"done": done})
    start = time.perf_counter()
    failed = []
    try:
        with tempfile.TemporaryFile("w+") as errors:
            command = [sys.executable, "-c", CHILD, json.dumps(sys.path)]
            children = [subprocess.Popen(command + [k.name for k in g], stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=errors) for g in groups]
            if any([c.wait() for c in children]):  # (a list: wait for every child)
                errors.seek(0)
                failed = errors.read().strip().splitlines()[-1:] or ["no message"]
    except OSError as e:  # no interpreter to start (an embedded Python): compile here instead
        failed = [str(e)]
    finally:
        done.set()
    if failed:  # e.g. a cache directory that cannot be written: load() then compiles in this process
        log.warning("compiling the kernels in a child process failed (%s); compiling them here", failed[0])
    log.debug("compiled %s in %.1f s", ", ".join(k.name for k in kernels), time.perf_counter() - start)


# The child imports the kernels from where this process did: it gets this process's sys.path
CHILD = ("import json, sys; sys.path[:] = json.loads(sys.argv[1]); "
         "from altclip_np.kernels._jit import compile_here; compile_here(sys.argv[2:])")


def compile_here(names):  # the child: compile (and so cache) the named kernels in this process
    for name in names:
        k = KERNELS[name]
        k.dispatcher.compile(k.sig)
        if not k.cached():
            raise OSError(f"Numba did not cache {name} (is {k.dispatcher._cache.cache_path} writable?)")
