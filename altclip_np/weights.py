"""Checkpoint weights as a flat dict of NumPy arrays named by their transformers state-dict keys.

safetensors files are memory-mapped and read by hand (an 8-byte header length, a JSON header, raw data), so
float32 tensors are zero-copy views of the file and nothing is read that the model does not use.
float16 / bfloat16 tensors are upcast to float32.
"""
import json
import math
import mmap
import os
import struct
from pathlib import Path

import numpy as np

from .hub import read_weight_map

SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                      "BOOL": np.bool_}


def bf16_to_f32(bits):  # uint16 bfloat16 bits -> float32: bfloat16 is the top half of a float32
    return (bits.astype(np.uint32) << 16).view(np.float32)


def to_float32(array):  # float16 / float64 -> float32; float32 stays a zero-copy view
    return array if array.dtype == np.float32 else array.astype(np.float32)


MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit (BAAI/AltCLIP's header: ~90 KB)


def _header_entry(path, key, info, size, base):
    """(dtype, shape, begin) of one header entry, every field checked before anything is read."""
    try:
        dtype, shape, (begin, end) = info["dtype"], info["shape"], info["data_offsets"]
    except (KeyError, TypeError, ValueError):
        raise OSError(f"{path}: corrupt safetensors header entry for {key[:80]!r}") from None
    if not isinstance(dtype, str) or dtype not in SAFETENSORS_DTYPES:
        raise OSError(f"{path}: tensor {key[:80]!r} has unsupported dtype {str(dtype)[:40]}")
    if not isinstance(shape, list) or len(shape) > 32 or not all(type(d) is int and d >= 0 for d in shape) \
            or type(begin) is not int or type(end) is not int:
        raise OSError(f"{path}: corrupt safetensors header entry for {key[:80]!r}: shape and data offsets "
                      "must be non-negative integers")
    nbytes = math.prod(shape) * np.dtype(SAFETENSORS_DTYPES[dtype]).itemsize  # Python ints: no overflow
    if not 0 <= begin <= end or end - begin != nbytes or base + end > size:
        raise OSError(f"{path}: tensor {key[:80]!r} ({dtype} {shape[:8]}) has data offsets [{begin}, {end}] "
                      f"that do not fit its size or the file ({size} bytes): truncated or corrupt file")
    return dtype, tuple(shape), begin


class SafetensorsFile:
    """One memory-mapped .safetensors file: `.keys()`, `.shape(key)`, `.dtype(key)`, `.get(key)`.

    Only the header is read at open (at most MAX_HEADER_BYTES, every entry's shape and offsets checked
    against the file's size); a tensor's bytes are touched only by `.get`, after the caller has compared
    `.shape` with what it expects."""

    def __init__(self, path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 8:
                    raise OSError(f"{self.path}: truncated safetensors file ({size} bytes, no header)")
                (n,) = struct.unpack("<Q", f.read(8))
                if 8 + n > size:
                    raise OSError(f"{self.path}: truncated safetensors file: its header claims {n} bytes but the file has {size}")
                if n > MAX_HEADER_BYTES:
                    raise OSError(f"{self.path}: corrupt safetensors file: a header of {n} bytes (at most "
                                  f"{MAX_HEADER_BYTES})")
                header = json.loads(f.read(n))
                self._mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
            raise OSError(f"{self.path}: corrupt safetensors header ({type(e).__name__}: {str(e)[:200]})") from None
        if not isinstance(header, dict):
            raise OSError(f"{self.path}: corrupt safetensors header (not a JSON object)")
        header.pop("__metadata__", None)
        self._base = 8 + n
        self._entries = {key: _header_entry(self.path, key, info, size, self._base) for key, info in header.items()}

    def keys(self):
        return self._entries.keys()

    def shape(self, key):
        return self._entries[key][1]

    def get(self, key):  # float tensors come back as float32; float32 ones are read-only views of the file
        dtype, shape, begin = self._entries[key]
        np_dtype = SAFETENSORS_DTYPES[dtype]
        count = math.prod(shape)
        array = np.frombuffer(self._mm, np_dtype, count, self._base + begin).reshape(shape)
        if dtype == "BF16":
            return bf16_to_f32(array)
        return to_float32(array) if array.dtype.kind == "f" else array


def open_safetensors(directory):
    """{key: SafetensorsFile} for model.safetensors or a sharded model.safetensors.index.json."""
    directory = Path(directory)
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_weight_map(index)  # shard names checked: inside `directory`, each once, present
        files = {name: SafetensorsFile(directory / name) for name in sorted(set(weight_map.values()))}
        sources = {}
        for name, f in files.items():
            for key in f.keys():
                sources.setdefault(key, f)
        sources.update({key: files[name] for key, name in weight_map.items() if key in files[name].keys()})
        missing = sorted(k for k, name in weight_map.items() if k not in files[name].keys())
        if missing:
            raise OSError(f"{index} lists tensors that its shards do not hold: {', '.join(missing[:20])}")
        return sources
    single = directory / "model.safetensors"
    if single.is_file():
        f = SafetensorsFile(single)
        return {key: f for key in f.keys()}
    raise OSError(f"no model.safetensors or model.safetensors.index.json in {directory}")


class TensorSource:
    """A lazily read flat state dict: key -> (shape, getter), and the `files` it reads (None: in memory).
    Safetensors and other formats plug in here."""

    def __init__(self, shapes, getter, files=None):
        self.shapes, self.getter, self.files = shapes, getter, files

    @classmethod
    def from_safetensors(cls, directory):
        sources = open_safetensors(directory)
        return cls({k: f.shape(k) for k, f in sources.items()}, lambda k: sources[k].get(k),
                   sorted({f.path for f in sources.values()}))

    @classmethod
    def from_arrays(cls, arrays):  # an in-memory state dict {key: array}
        arrays = {k: np.asarray(v) for k, v in arrays.items()}
        return cls({k: v.shape for k, v in arrays.items()},
                   lambda k: to_float32(arrays[k]) if arrays[k].dtype.kind == "f" else arrays[k])

    @classmethod
    def from_torch(cls, weights_file):  # pytorch_model.bin or its index: a tensor is read only when asked for
        from .torch_pickle import open_torch_checkpoint
        ckpt = open_torch_checkpoint(weights_file)

        def get(key):
            array = ckpt.get(key)
            return to_float32(array) if array.dtype.kind == "f" else array
        return cls(ckpt.shapes, get, [Path(weights_file)])


# ---- key names: every spelling of a key maps to the one the official BAAI/AltCLIP checkpoint uses ----

def canonical_key(key):
    """transformers 5 saves `encoder.layer.N` for both towers and a tower saved alone drops its prefix;
    the official checkpoint has `text_model.roberta.encoder.layer.N` and `vision_model.encoder.layers.N`."""
    if key.startswith(("roberta.", "transformation.", "pre_LN.")):
        key = "text_model." + key
    elif key.startswith(("embeddings.", "encoder.", "pre_layrnorm.", "post_layernorm.")):
        key = "vision_model." + key
    if key.startswith("text_model.roberta.encoder.layers."):
        key = key.replace("encoder.layers.", "encoder.layer.", 1)
    elif key.startswith("vision_model.encoder.layer."):
        key = key.replace("encoder.layer.", "encoder.layers.", 1)
    return key


class Weights(dict):
    """{checkpoint key: array}, as load_weights returns them, and what the fast path keeps beside them:
    `files`, the checkpoint files the arrays come from (None for arrays in memory), and `panels`, the GEMM's
    packed copy of the Linear weights ({id(array): (array, its panels)}), made on first use (model.py)."""

    def __init__(self, arrays=(), files=None):
        super().__init__(arrays)
        self.files, self.panels = files, None


def load_weights(source, expected, where):
    """Read the tensors named in `expected` ({canonical key: shape}) from a TensorSource.

    Every missing or mis-shaped tensor is reported at once; keys the model does not use are ignored.
    """
    by_canonical = {}
    for key in source.shapes:
        by_canonical.setdefault(canonical_key(key), key)
    missing = [k for k in expected if k not in by_canonical]
    wrong = [f"{k}: expected {list(shape)}, found {list(source.shapes[by_canonical[k]])}"
             for k, shape in expected.items()
             if k in by_canonical and tuple(source.shapes[by_canonical[k]]) != tuple(shape)]
    if missing or wrong:
        lines = [f"checkpoint {where} does not match the config:"]
        if missing:
            lines.append(f"  missing tensors ({len(missing)}): " + ", ".join(missing))
        if wrong:
            lines.append(f"  mis-shaped tensors ({len(wrong)}):\n    " + "\n    ".join(wrong))
        raise ValueError("\n".join(lines))
    return Weights({k: source.getter(by_canonical[k]) for k in expected}, source.files)


def open_checkpoint(kind, weights_file):
    """The TensorSource of a weights file found by hub.resolve_weights: "safetensors" (single or sharded) or
    "torch" (pytorch_model.bin or its index, read without torch by a restricted unpickler)."""
    if kind == "safetensors":
        return TensorSource.from_safetensors(Path(weights_file).parent)
    return TensorSource.from_torch(weights_file)


# ---- giving pages back ----------------------------------------------------------------------------------

PAGE = mmap.PAGESIZE


def _mapping(array):
    """The mmap an array views (through its chain of bases), or None for an in-memory array."""
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None) if isinstance(base, np.ndarray) else getattr(base, "obj", None)
    return base


def release(arrays):
    """Drop the pages of memory-mapped weights from this process's resident set (madvise DONTNEED).

    The data stays in the OS page cache, so the next use maps it back with a cheap minor fault; called after
    each encoder layer, it keeps the resident weights to about one layer instead of the whole model."""
    for a in arrays:
        mm = _mapping(a)
        if mm is None or not hasattr(mm, "madvise"):
            continue
        offset = a.__array_interface__["data"][0] - np.frombuffer(mm, np.uint8, 1).__array_interface__["data"][0]
        start = -(-offset // PAGE) * PAGE  # only whole pages inside the tensor: neighbours keep theirs
        end = (offset + a.nbytes) // PAGE * PAGE
        if end > start:
            mm.madvise(mmap.MADV_DONTNEED, start, end - start)
