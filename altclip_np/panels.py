"""The weights packed into panels for the GEMM, built once per machine and memory-mapped from a cache file.

The Numba GEMM reads W [N, K] as panels of `width` rows stored k-major ([ceil(N / width), K, width]), so the
`width` weights one step of its micro-kernel broadcasts against lie side by side and a panel is one contiguous
stream. Packing on every call would copy every weight on every forward; packing into memory at load would
double the model's resident memory. So the packed copy is written once to a file in the cache directory and
memory-mapped read-only, like the checkpoint itself: the packing is paid once per machine, and a layer's
pages can be given back after it runs (`weights.release`), so the resident set stays about one layer.

The file: `MAGIC`, format version, header length (PREFIX), a JSON header, then the data. The data begins at
the first page boundary after the header, and each tensor at a page-aligned offset from there (so one tensor's
pages can be released without touching its neighbours). The header names the key, the width and for each
tensor its panels' shape, offset and the bit patterns of the first and last few source values (a checkpoint
rewritten in place with the same size and mtime changes them). A file is used only when its header is byte for
byte the one the current checkpoint would get (nothing in it is trusted; JSON is parsed only from other keys'
files, to see whether their checkpoint is gone), and anything else (another version, truncation, garbage) is
packed again. A build writes a unique temporary file one tensor at a time (resident memory: about one packed
tensor), fsyncs it and renames it over the final name, so a reader sees either no file or a whole one, also
when two processes build at once or one is killed. A build also removes killed builds' temporaries and the
files of checkpoints that changed or are gone (a new checkpoint is a new key, so its old file would otherwise
stay: BAAI/AltCLIP's 48 encoder layers hold 604 M weights, 2.3 GiB).
"""
import hashlib
import json
import logging
import math
import mmap
import os
import secrets
import shutil
import struct
import time
from pathlib import Path

import numpy as np

from . import autotune
from .weights import PAGE, release

MAGIC = b"ALTCLIPP"
FORMAT = 1
PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length
SAMPLES = 16  # source values kept per end of each tensor
STALE_SECONDS = 600  # a temporary file untouched this long is a killed build's (a live one writes every tensor)
SPARE_BYTES = 1 << 30  # what a build leaves free on the disk
MAX_HEADER_BYTES = 100_000_000  # read from another key's file only to see whether its checkpoint is gone
log = logging.getLogger("altclip_np")


def panels_enabled():
    return os.environ.get("ALTCLIP_NP_PANELS", "").strip().lower() not in ("0", "false", "no", "off")


def panel_shape(shape, width):  # [N, K] -> [ceil(N / width), K, width]
    return [-(-shape[0] // width), shape[1], width]


def samples(w):  # the bit patterns of w's first and last SAMPLES values (C order)
    n = w.size
    index = sorted(set(range(min(SAMPLES, n))) | set(range(max(n - SAMPLES, 0), n)))
    return np.asarray(w.flat[index], np.float32).view(np.uint32).tolist()


def source_stats(source_files):  # [(resolved path, size, mtime_ns)], sorted
    stats = []
    for path in source_files:
        path = Path(path).resolve()
        st = path.stat()
        stats.append([os.fsdecode(path), st.st_size, st.st_mtime_ns])
    return sorted(stats)


def store_key(tensors, width, sources):  # sha256 hex of everything the packed file depends on but its values
    described = {"format": FORMAT, "width": width, "sources": sources,
                 "tensors": [[name, list(w.shape), str(w.dtype)] for name, w in sorted(tensors.items())]}
    return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()


def layout(tensors, width):  # [{name, shape, offset, samples}]: offsets page-aligned, from the data's start
    entries, offset = [], 0
    for name, w in sorted(tensors.items()):
        shape = panel_shape(w.shape, width)
        entries.append({"name": name, "shape": shape, "offset": offset, "samples": samples(w)})
        offset += -(-math.prod(shape) * 4 // PAGE) * PAGE
    return entries


def header_bytes(key, width, sources, entries):
    header = {"format": FORMAT, "key": key, "width": width, "sources": sources, "tensors": entries}
    return json.dumps(header, sort_keys=True, separators=(",", ":")).encode()


def file_size(header, entries):  # (bytes before the data, bytes of the whole file)
    base = -(-(PREFIX.size + len(header)) // PAGE) * PAGE
    last = entries[-1]
    return base, base + last["offset"] + math.prod(last["shape"]) * 4


def mismatch(path, header, size):
    """Why the file at `path` is not the one expected (None: it is): checked before anything is mapped."""
    with open(path, "rb") as f:
        actual = os.fstat(f.fileno()).st_size
        if actual < PREFIX.size:
            return f"truncated ({actual} bytes)"
        magic, version, length = PREFIX.unpack(f.read(PREFIX.size))
        if magic != MAGIC:
            return "not a panel file (wrong magic)"
        if version != FORMAT:
            return f"format {version}, expected {FORMAT}"
        if actual != size:
            return f"{actual} bytes, expected {size}: truncated or corrupt"
        if length != len(header) or f.read(length) != header:  # never reads more than the expected header
            return "its header does not match the checkpoint (weights changed in place, or a corrupt file)"
    return None


def map_panels(path, entries, base):  # {name: read-only view}, chained to the mmap (so weights.release works)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    return {e["name"]: np.frombuffer(mm, np.float32, math.prod(e["shape"]), base + e["offset"]).reshape(e["shape"])
            for e in entries}


def remove_stale(folder):  # temporaries of killed builds: untouched for STALE_SECONDS
    for tmp in folder.glob("*.tmp"):
        try:
            if time.time() - tmp.stat().st_mtime > STALE_SECONDS:
                tmp.unlink()
        except OSError:
            pass  # gone already (another process removed it) or not ours to remove


def recorded_sources(path):  # the sources a panel file's header names, or None if it is no readable one
    with open(path, "rb") as f:
        magic, version, length = PREFIX.unpack(f.read(PREFIX.size))
        if magic != MAGIC or version != FORMAT or length > MAX_HEADER_BYTES:
            return None
        sources = json.loads(f.read(length)).get("sources")
    valid = isinstance(sources, list) and all(
        isinstance(s, list) and len(s) == 3 and isinstance(s[0], str) and type(s[1]) is int and type(s[2]) is int
        for s in sources)
    return sources if valid else None


def remove_superseded(folder, keep):
    """Files whose checkpoint changed or is gone: their key can never match again (a process still using
    one keeps its mapping)."""
    for path in folder.glob("*.panels"):
        try:
            sources = recorded_sources(path) if path != keep else None
            if sources is not None:
                try:
                    gone = source_stats(s[0] for s in sources) != sorted(sources)
                except FileNotFoundError:
                    gone = True
                if gone:
                    path.unlink()
                    log.info("removed %s: the checkpoint it was packed from changed", path)
        except (OSError, ValueError, AttributeError, RecursionError, struct.error):
            pass  # unreadable or not ours: left alone


def build(path, tensors, width, pack, header, entries, base, size):
    """Write the file: a unique temporary, one tensor at a time, fsync, atomic rename onto `path`."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(PREFIX.pack(MAGIC, FORMAT, len(header)) + header)
            for e in entries:
                w = tensors[e["name"]]
                panels = pack(w)
                if panels.shape != tuple(e["shape"]) or panels.dtype != np.float32:
                    raise ValueError(f"pack({e['name']!r} {list(w.shape)}) returned {panels.dtype} "
                                     f"{list(panels.shape)}, expected float32 {e['shape']}")
                f.seek(base + e["offset"])  # the gap up to the page boundary reads as zeros
                f.write(np.ascontiguousarray(panels).data)
                del panels
                release([w])  # the checkpoint's pages this tensor brought in go back too
            f.truncate(size)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def open_panels(tensors, width, pack, source_files, cache_dir=None):
    """tensors: {name: [N, K] float32 array} -> {name: read-only [ceil(N/width), K, width] float32 view of a
    memory-mapped cache file}, packed by `pack` (w -> kernels.pack_panels_numpy(w, width)) when the file is
    absent or stale.
    None when the store cannot be used (disabled, unwritable, no disk space), after one WARNING."""
    cost = "the model runs without packed weights (a slower GEMM)"
    if not panels_enabled():
        log.warning("ALTCLIP_NP_PANELS=%s: %s", os.environ.get("ALTCLIP_NP_PANELS"), cost)
        return None
    if not tensors:
        return {}
    for name, w in tensors.items():
        if w.ndim != 2 or w.dtype != np.float32:
            raise ValueError(f"open_panels: {name!r} is {w.dtype} {list(w.shape)}, expected a float32 [N, K]")
    folder = Path(cache_dir if cache_dir is not None else autotune.cache_dir()) / "panels"
    try:
        sources = source_stats(source_files)
        key = store_key(tensors, width, sources)
        entries = layout(tensors, width)
        header = header_bytes(key, width, sources, entries)
        base, size = file_size(header, entries)
        path = folder / f"{key[:32]}-w{width}.panels"
        try:
            reason = mismatch(path, header, size)
        except (FileNotFoundError, NotADirectoryError):
            reason = "absent"
        except OSError as e:
            reason = f"unreadable ({e})"
        if reason is None:
            return map_panels(path, entries, base)
        if reason != "absent":
            log.warning("%s: %s; packing it again", path, reason)
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale(folder)
        remove_superseded(folder, path)
        free = shutil.disk_usage(folder).free
        if free < size + SPARE_BYTES:
            log.warning("not enough disk space in %s for the packed weights (%.2f GiB, %.2f GiB "
                        "free, %.0f GiB kept spare): %s", folder, size / 2**30, free / 2**30,
                        SPARE_BYTES / 2**30, cost)
            return None
        log.info("packing %d weights for the GEMM into %s (%.2f GiB, once)", len(entries), path,
                 size / 2**30)
        start = time.perf_counter()
        build(path, tensors, width, pack, header, entries, base, size)
        log.debug("packed the weights for the GEMM in %.1f s", time.perf_counter() - start)
        return map_panels(path, entries, base)
    except OSError as e:
        log.warning("cannot use %s for the packed weights (%s): %s", folder,
                    " ".join(str(e).split()), cost)
        return None
