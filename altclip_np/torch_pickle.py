"""Read PyTorch `torch.save` checkpoints (`pytorch_model.bin`, sharded or not) without torch.

A torch checkpoint is a zip archive `<top>/data.pkl` + `<top>/data/<key>` raw storages. The pickle is
read by a restricted unpickler: it resolves only the handful of globals a plain state dict needs, to
our own NumPy stand-ins, and refuses anything else, so no code from the file ever runs. Storages are
memory-mapped from the zip when stored uncompressed (torch always stores them so, 64-byte aligned).
"""
import io
import json
import mmap
import pickle
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "load_torch_checkpoint", "load_torch_shards"]


class CheckpointError(ValueError):
    """A checkpoint file is truncated, corrupt, or not a plain state dict."""


class UnsafeCheckpointError(CheckpointError, pickle.UnpicklingError):
    """The pickle asked for a global outside the allow-list (it might run code)."""


# Legacy typed-storage names that torch still writes into persistent ids -> NumPy dtype.
# bfloat16 is read as its raw uint16 bits and widened to float32 exactly (see _finish).
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": np.uint16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_, "UntypedStorage": np.uint8,
}
_MAX_PICKLE_BYTES = 1 << 28  # data.pkl only names tensors: a few MB even for billions of parameters


class _Sealed:
    """Stand-ins the pickle can reference: a BUILD opcode must not rewrite their attributes."""

    def __setstate__(self, state):
        raise CheckpointError(f"the pickle tries to set the state of a {type(self).__name__[1:]}")


class _StorageType(_Sealed):
    """Marker returned for `torch.FloatStorage` & co.: carries a dtype, cannot be called."""

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Tensor(_Sealed):
    """A rebuilt tensor before dtype fix-ups; `array` views the storage."""

    def __init__(self, array, bfloat16):
        self.array, self.bfloat16 = array, bfloat16


def _int_tuple(value, what):
    if not isinstance(value, tuple) or not all(type(v) is int and v >= 0 for v in value):
        raise CheckpointError(f"bad tensor {what}: {value!r}")
    return value


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: a (possibly strided) view of the storage."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is {type(storage).__name__}, not a storage record")
    if type(storage_offset) is not int or storage_offset < 0:
        raise CheckpointError(f"bad tensor storage offset: {storage_offset!r}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    flat = storage.array
    if 0 in size:
        return _Tensor(np.zeros(size, flat.dtype), storage.bfloat16)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= flat.size:
        raise CheckpointError(f"tensor (offset {storage_offset}, size {size}, stride {stride}) reaches "
                              f"element {last} of a storage of {flat.size} elements ({storage.key})")
    view = np.ndarray(size, flat.dtype, buffer=flat, offset=storage_offset * flat.itemsize,
                      strides=[s * flat.itemsize for s in stride])
    view.flags.writeable = False  # views of a shared storage (or the file's mmap) must stay intact
    return _Tensor(view, storage.bfloat16)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


class _Storage(_Sealed):
    def __init__(self, array, key, bfloat16):
        self.array, self.key, self.bfloat16 = array, key, bfloat16


# (module, name) -> what the restricted unpickler hands back. Nothing else is ever resolved.
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    **{("torch", name): _StorageType(name) for name in _STORAGE_DTYPES},
    **{("torch.storage", name): _StorageType(name) for name in ("UntypedStorage",)},
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, data, archive, path):
        super().__init__(data)
        self._archive, self._path, self._storages = archive, path, {}

    def find_class(self, module, name):
        found = _ALLOWED.get((module, name))
        if found is None:
            raise UnsafeCheckpointError(f"refusing to load '{module}.{name}' from {self._path}: "
                                        "only tensor data is allowed in a checkpoint")
        return found

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel), as written by torch.save
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise CheckpointError(f"unexpected persistent id {pid!r}")
        _, kind, key, _location, numel = pid
        if (key, kind.name) not in self._storages:
            array = self._archive.storage(key, kind.dtype, numel)
            self._storages[key, kind.name] = _Storage(array, key, kind.name == "BFloat16Storage")
        return self._storages[key, kind.name]


class _Archive:
    """The zip records of one checkpoint; storages come back as read-only views of a file mmap."""

    def __init__(self, path, zf, raw):
        self.path, self.zip, self.raw = path, zf, raw
        pkls = [n for n in zf.namelist() if PurePosixPath(n).name == "data.pkl" and n.count("/") == 1]
        if len(pkls) != 1:
            if any(n.endswith("/constants.pkl") for n in zf.namelist()):
                raise CheckpointError(f"{path} is a TorchScript archive, not a state dict")
            raise CheckpointError(f"{path}: zip holds {len(pkls)} top-level data.pkl records, expected 1")
        self.prefix = pkls[0][: -len("data.pkl")]
        order = self.read("byteorder").decode("ascii", "replace") if self.has("byteorder") else "little"
        if order not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder record {order!r}")
        self.byteorder = "<" if order == "little" else ">"

    def has(self, name):
        return self.prefix + name in self.zip.NameToInfo

    def read(self, name):
        return self.zip.read(self.prefix + name)

    def storage(self, key, dtype, numel):
        name = f"data/{key}"
        if not self.has(name):
            raise CheckpointError(f"{self.path}: storage record {self.prefix}{name} is missing")
        info = self.zip.getinfo(self.prefix + name)
        dtype = dtype.newbyteorder(self.byteorder)
        if info.file_size != numel * dtype.itemsize:
            raise CheckpointError(f"{self.path}: storage {name} holds {info.file_size} bytes, the pickle "
                                  f"expects {numel} x {dtype.itemsize}")
        if info.compress_type != zipfile.ZIP_STORED or info.flag_bits & 1:
            return np.frombuffer(self.zip.read(info), dtype)  # rare: re-zipped with compression
        return np.frombuffer(self.raw, dtype, numel, self._data_offset(info))

    def _data_offset(self, info):
        # The data follows the local header: 30 fixed bytes, the name, then an extra field whose
        # length may differ from the central directory's copy, so read it from the local header.
        header = self.raw[info.header_offset: info.header_offset + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: bad local zip header for {info.filename}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        name = self.raw[info.header_offset + 30: info.header_offset + 30 + name_len]
        if name != info.filename.encode("utf-8") or start + info.file_size > len(self.raw):
            raise CheckpointError(f"{self.path}: zip record {info.filename} is truncated or its header "
                                  "is inconsistent")
        return start


def _finish(value):
    """Turn a rebuilt tensor into a C-contiguous native-endian array; bfloat16 bits become float32."""
    array = value.array
    if value.bfloat16:
        bits = array.astype(np.uint32, order="C")
        bits <<= 16  # in place: keeps 0-d arrays arrays
        array = bits.view(np.float32)
    elif not array.dtype.isnative:
        array = array.astype(array.dtype.newbyteorder("="), order="C")
    return array if array.flags.c_contiguous else array.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _open_zip(path):
    with open(path, "rb") as f:
        head = f.read(4)
        if head[:1] == b"\x80":
            raise CheckpointError(f"{path} uses torch's legacy (pre-1.6, non-zip) format; re-save it with "
                                  "a recent torch or convert it with tools/convert_checkpoint.py")
        if head != b"PK\x03\x04":
            raise CheckpointError(f"{path} is not a PyTorch zip checkpoint")
        size = f.seek(0, 2)
        raw = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
    try:
        return zipfile.ZipFile(path), raw
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt: {e}") from e


def load_torch_checkpoint(path):
    """Load `pytorch_model.bin` (or a `pytorch_model.bin.index.json`) as {name: np.ndarray}.

    Contiguous tensors are read-only views of a memory map of the file; strided, big-endian and
    bfloat16 (widened to float32) tensors are copies. Raises CheckpointError (a ValueError; for
    refused pickle globals the subclass UnsafeCheckpointError) naming the file.
    """
    path = Path(path)
    if path.name.endswith(".index.json"):
        return load_torch_shards(path)
    zf, raw = _open_zip(path)
    with zf:
        try:
            archive = _Archive(path, zf, raw)
            if zf.getinfo(archive.prefix + "data.pkl").file_size > _MAX_PICKLE_BYTES:
                raise CheckpointError(f"{path}: data.pkl is too large to be a state dict's index")
            data = archive.read("data.pkl")
        except CheckpointError:
            raise
        except Exception as e:  # bad CRC, unsupported compression, encryption, ...
            raise CheckpointError(f"{path}: cannot read data.pkl or byteorder: {type(e).__name__}: {e}") from e
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), archive, path).load()
        except CheckpointError as e:
            if str(path) in str(e):
                raise
            raise type(e)(f"{path}: {e}") from e
        except Exception as e:  # malformed pickle: any opcode error is a corrupt file, never a crash
            raise CheckpointError(f"{path}: corrupt data.pkl: {type(e).__name__}: {e}") from e
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                            for k, v in obj.items()):
        raise CheckpointError(f"{path} does not hold a plain state dict (str -> tensor)")
    return {k: _finish(v) for k, v in obj.items()}


def load_torch_shards(index_path):
    """Load every shard listed in a `pytorch_model.bin.index.json` weight_map, checking the map."""
    index_path = Path(index_path)
    try:
        weight_map = json.loads(index_path.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{index_path} is not a valid shard index: {e}") from e
    if not isinstance(weight_map, dict):
        raise CheckpointError(f"{index_path} is not a valid shard index: weight_map is not an object")
    state = {}
    for shard in sorted(set(weight_map.values())):
        rel = PurePosixPath(str(shard))
        if rel.is_absolute() or ".." in rel.parts:
            raise CheckpointError(f"{index_path}: shard name {shard!r} leaves the checkpoint directory")
        shard_path = index_path.parent / rel
        if not shard_path.is_file():
            raise OSError(f"shard {shard_path} listed in {index_path} does not exist")
        tensors = load_torch_checkpoint(shard_path)
        expected = {k for k, v in weight_map.items() if v == shard}
        if not expected <= tensors.keys():
            missing = sorted(expected - tensors.keys())[:5]
            raise CheckpointError(f"{shard_path} lacks tensors {missing} that {index_path.name} places there")
        state.update(tensors)
    return state
