"""Read PyTorch `torch.save` checkpoints (`pytorch_model.bin`, sharded or not) without torch.

A torch checkpoint is a zip archive `<top>/data.pkl` + `<top>/data/<key>` raw storages. The pickle is
read by a restricted unpickler: it resolves only the handful of globals a plain state dict needs, to
our own sealed NumPy stand-ins, and refuses anything else, so no code from the file ever runs and no
state outside the load is touched. Storages are memory-mapped from the zip when stored uncompressed
(torch always stores them so, 64-byte aligned).

Sizes are checked before anything is allocated: the pickle only yields tensor *records* (storage, offset,
size, stride), checked against the storage's byte count in the zip; a tensor is materialised only when
asked for (a model asks only for the tensors it expects, after comparing their shapes), and a compressed
storage is decompressed only as far as the tensors asked for reach, within a budget of their total size.
"""
import io
import mmap
import pickle
import reprlib
import struct
import zipfile
from collections import OrderedDict
from pathlib import Path, PurePosixPath

import numpy as np

__all__ = ["CheckpointError", "UnsafeCheckpointError", "TorchCheckpoint", "open_torch_checkpoint", "load_torch_checkpoint",
           "load_torch_shards"]


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
# data.pkl only names tensors (~150 bytes each: 0.15 MB for BAAI/AltCLIP's ~1000; 768 KiB holds ~5000). Its
# opcodes can build objects up to ~240x their size (one-byte EMPTY_SET), so this also bounds what unpickling
# allocates: ~185 MiB.
_MAX_PICKLE_BYTES = 768 << 10
_MAX_NDIM = 32  # NumPy allows 64; no weight has more than a handful
_SLACK = 64 << 20  # decompressed bytes allowed beyond the size of the tensors read (storage gaps, shared storages)
_repr = reprlib.Repr()  # a hostile value in a message stays short
_repr.maxstring = _repr.maxother = 80
_short = _repr.repr




class _Sealed:
    """What the pickle can reference: a BUILD opcode must not rewrite its attributes (nor those of the
    functions and classes behind it: the allow-list hands out only instances of this)."""

    __slots__ = ()

    def __setstate__(self, state):
        raise CheckpointError(f"the pickle tries to set the state of a {type(self).__name__.strip('_')}")


class _StorageType(_Sealed):
    """Marker returned for `torch.FloatStorage` & co.: carries a dtype, cannot be called."""

    __slots__ = ("name", "dtype")

    def __init__(self, name):
        self.name, self.dtype = name, np.dtype(_STORAGE_DTYPES[name])


class _Call(_Sealed):
    """An allow-listed callable (a rebuild function, OrderedDict) behind a sealed instance."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


class _Storage(_Sealed):
    """A storage record: its bytes are read only when a tensor viewing it is materialised."""

    __slots__ = ("archive", "key", "dtype", "numel", "bfloat16", "data")

    def __init__(self, archive, key, dtype, numel, bfloat16):
        self.archive, self.key, self.dtype, self.numel, self.bfloat16 = archive, key, dtype, numel, bfloat16
        self.data = None  # the elements read so far (a view of the file's mmap, or a decompressed prefix)

    def elements(self, count):  # -> 1-D array of at least `count` elements
        if self.data is None or self.data.size < count:
            self.data = self.archive.storage_elements(self.key, self.dtype, self.numel, count)
        return self.data


class _Tensor(_Sealed):
    """A tensor record (a strided view of a storage) checked to lie inside it, not yet read."""

    __slots__ = ("storage", "offset", "shape", "stride", "end")

    def __init__(self, storage, offset, shape, stride, end):
        self.storage, self.offset, self.shape, self.stride, self.end = storage, offset, shape, stride, end

    @property
    def nbytes(self):
        return _numel(self.shape) * self.storage.dtype.itemsize

    def read(self):
        """The tensor as a C-contiguous native-endian array; bfloat16 bits become float32."""
        flat = self.storage
        if self.end == 0:  # no elements
            return np.zeros(self.shape, np.float32 if flat.bfloat16 else flat.dtype.newbyteorder("="))
        _check_strides(self.shape, self.stride, f"storage {flat.key[:100]}")
        data = flat.elements(self.end)
        view = np.ndarray(self.shape, data.dtype, buffer=data, offset=self.offset * data.itemsize,
                          strides=[s * data.itemsize for s in self.stride])
        view.flags.writeable = False  # views of a shared storage (or the file's mmap) must stay intact
        return _finish(view, flat.bfloat16)


def _numel(shape):
    n = 1
    for d in shape:
        n *= d
    return n


def _int_tuple(value, what):
    if not (isinstance(value, tuple) and len(value) <= _MAX_NDIM
            and all(type(v) is int and 0 <= v < 1 << 62 for v in value)):
        raise CheckpointError(f"bad tensor {what}: {_short(value)}")
    return value


def _check_strides(size, stride, where):
    """Refuse strides under which two indices reach the same element (e.g. stride 0 on a dim > 1, as
    `expand` makes): such a tensor holds more elements than its storage, so copying it is unbounded.
    Sufficient test: sorted by stride, each stride exceeds the span of the dims with smaller strides."""
    span = 0
    for s, n in sorted((s, n) for n, s in zip(size, stride) if n > 1):
        if s <= span:
            raise CheckpointError(f"tensor (size {size}, stride {stride}) of {where} has overlapping strides: "
                                  "several indices alias one element (expand-like tensors are refused)")
        span += (n - 1) * s


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    """Stand-in for torch._utils._rebuild_tensor_v2: a checked record of a strided view of the storage."""
    if not isinstance(storage, _Storage):
        raise CheckpointError(f"tensor storage is {type(storage).__name__}, not a storage record")
    if type(storage_offset) is not int or not 0 <= storage_offset < 1 << 62:
        raise CheckpointError(f"bad tensor storage offset: {_short(storage_offset)}")
    size, stride = _int_tuple(size, "size"), _int_tuple(stride, "stride")
    if len(size) != len(stride):
        raise CheckpointError(f"tensor size {size} and stride {stride} differ in length")
    if 0 in size:
        return _Tensor(storage, 0, size, stride, 0)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= storage.numel:
        raise CheckpointError(f"tensor (offset {storage_offset}, size {size}, stride {stride}) reaches "
                              f"element {last} of a storage of {storage.numel} elements ({storage.key})")
    return _Tensor(storage, storage_offset, size, stride, last + 1)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None, state=None):
    return data


# (module, name) -> what the restricted unpickler hands back. Nothing else is ever resolved.
_ALLOWED = {
    ("collections", "OrderedDict"): _Call(OrderedDict),
    ("torch._utils", "_rebuild_tensor_v2"): _Call(_rebuild_tensor_v2),
    ("torch._utils", "_rebuild_parameter"): _Call(_rebuild_parameter),
    ("torch._utils", "_rebuild_parameter_with_state"): _Call(_rebuild_parameter),
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
            raise UnsafeCheckpointError(f"refusing to load '{module[:100]}.{name[:100]}' from {self._path}: "
                                        "only tensor data is allowed in a checkpoint")
        return found

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel), as written by torch.save
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and type(pid[4]) is int and pid[4] >= 0):
            raise CheckpointError(f"unexpected persistent id {_short(pid)}")
        _, kind, key, _location, numel = pid
        if (key, kind.name) not in self._storages:
            dtype = self._archive.check_storage(key, kind.dtype, numel)
            self._storages[key, kind.name] = _Storage(self._archive, key, dtype, numel,
                                                      kind.name == "BFloat16Storage")
        return self._storages[key, kind.name]


class _Archive:
    """The zip records of one checkpoint; stored storages are read-only views of a file mmap, compressed
    ones are decompressed as far as asked, within `budget` bytes in all."""

    def __init__(self, path, zf, raw):
        self.path, self.zip, self.raw = path, zf, raw
        self.budget = self.decompressed = 0
        pkls = [n for n in zf.namelist() if PurePosixPath(n).name == "data.pkl" and n.count("/") == 1]
        if len(pkls) != 1:
            if any(n.endswith("/constants.pkl") for n in zf.namelist()):
                raise CheckpointError(f"{path} is a TorchScript archive, not a state dict")
            raise CheckpointError(f"{path}: zip holds {len(pkls)} top-level data.pkl records, expected 1")
        self.prefix = pkls[0][: -len("data.pkl")]
        order = self.read("byteorder", 16).decode("ascii", "replace") if self.has("byteorder") else "little"
        if order not in ("little", "big"):
            raise CheckpointError(f"{path}: unknown byteorder record {_short(order)}")
        self.byteorder = "<" if order == "little" else ">"

    def has(self, name):
        return self.prefix + name in self.zip.NameToInfo

    def read(self, name, limit):
        info = self.zip.getinfo(self.prefix + name)
        if info.file_size > limit:
            raise CheckpointError(f"{self.path}: {name} holds {info.file_size} bytes, more than the {limit} "
                                  "it can need")
        with self.zip.open(info) as f:
            return f.read(limit + 1)

    def check_storage(self, key, dtype, numel):  # -> the storage's dtype in the file's byte order
        name = f"data/{key}"
        if not self.has(name):
            raise CheckpointError(f"{self.path}: storage record {self.prefix}{name[:100]} is missing")
        info = self.zip.getinfo(self.prefix + name)
        dtype = dtype.newbyteorder(self.byteorder)
        if info.file_size != numel * dtype.itemsize:
            raise CheckpointError(f"{self.path}: storage {name[:100]} holds {info.file_size} bytes, the pickle "
                                  f"expects {numel} x {dtype.itemsize}")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            self._data_offset(info)  # the bytes are really in the file
        return dtype

    def storage_elements(self, key, dtype, numel, count):
        info = self.zip.getinfo(f"{self.prefix}data/{key}")
        if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 1:
            return np.frombuffer(self.raw, dtype, numel, self._data_offset(info))
        # rare: re-zipped with compression. Decompress only the prefix the tensor needs, and no more in all
        # than the tensors read so far (+ slack): the zip's own sizes are the file's word, not a bound.
        nbytes = count * dtype.itemsize
        if self.decompressed + nbytes > self.budget + _SLACK:
            raise CheckpointError(f"{self.path}: reading storage {key[:100]} would decompress {nbytes} bytes, "
                                  f"beyond the {self.budget} bytes of the tensors read (+{_SLACK} slack)")
        data = bytearray()
        with self.zip.open(info) as f:  # in chunks: memory follows the data really there, not the claim
            while len(data) < nbytes:
                chunk = f.read(min(16 << 20, nbytes - len(data)))
                if not chunk:
                    break
                data += chunk
        if len(data) != nbytes:
            raise CheckpointError(f"{self.path}: compressed storage {key[:100]} ends after {len(data)} bytes "
                                  f"of the {nbytes} its tensors need")
        self.decompressed += nbytes
        return np.frombuffer(data, dtype)

    def _data_offset(self, info):
        # The data follows the local header: 30 fixed bytes, the name, then an extra field whose
        # length may differ from the central directory's copy, so read it from the local header.
        header = self.raw[info.header_offset: info.header_offset + 30]
        if len(header) < 30 or header[:4] != b"PK\x03\x04":
            raise CheckpointError(f"{self.path}: bad local zip header for {info.filename[:100]}")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        name = self.raw[info.header_offset + 30: info.header_offset + 30 + name_len]
        if name != info.filename.encode("utf-8") or start + info.file_size > len(self.raw):
            raise CheckpointError(f"{self.path}: zip record {info.filename[:100]} is truncated or its header "
                                  "is inconsistent")
        return start


def _finish(array, bfloat16):
    """A (strided, maybe big-endian) view -> C-contiguous native-endian array; bfloat16 bits become float32."""
    if bfloat16:
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


def _reraise(path, e, what):
    if isinstance(e, MemoryError):  # not the file's fault (and must not pass for a corrupt file in fuzzing)
        raise e
    if isinstance(e, CheckpointError):
        raise (e if str(path) in str(e) else type(e)(f"{path}: {e}")) from e
    # a malformed pickle or zip record (any opcode error, bad CRC, encryption...) is a corrupt file
    raise CheckpointError(f"{path}: {what}: {type(e).__name__}: {_short(str(e))}") from e


class TorchCheckpoint:
    """One `pytorch_model.bin`, read lazily: `.shapes` {key: shape} from data.pkl alone; `.get(key)` reads
    (copies only when strided, big-endian or bfloat16) just that tensor."""

    def __init__(self, path):
        self.path = Path(path)
        zf, raw = _open_zip(self.path)
        try:
            self._archive = _Archive(self.path, zf, raw)
            data = self._archive.read("data.pkl", _MAX_PICKLE_BYTES)
        except Exception as e:
            zf.close()
            _reraise(self.path, e, "cannot read data.pkl or byteorder")
        try:
            obj = _RestrictedUnpickler(io.BytesIO(data), self._archive, self.path).load()
        except MemoryError:  # CPython allocates a counted BINBYTES at the size it claims, before reading it
            zf.close()
            raise CheckpointError(f"{self.path}: corrupt data.pkl: its {len(data)} bytes ask for more memory than "
                                  "they can hold (a damaged length field)") from None
        except Exception as e:
            zf.close()
            _reraise(self.path, e, "corrupt data.pkl")
        if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, _Tensor)
                                                for k, v in obj.items()):
            zf.close()
            raise CheckpointError(f"{self.path} does not hold a plain state dict (str -> tensor)")
        self._tensors = obj
        self.shapes = {k: t.shape for k, t in obj.items()}

    def get(self, key):
        tensor = self._tensors[key]
        self._archive.budget += tensor.nbytes
        try:
            return tensor.read()
        except Exception as e:
            _reraise(self.path, e, f"cannot read tensor {key[:100]}")


class _ShardedCheckpoint:
    """A `pytorch_model.bin.index.json` and its shards, with the same `.shapes` / `.get` as one file."""

    def __init__(self, index_path):
        from .hub import read_weight_map
        index_path = Path(index_path)
        weight_map = read_weight_map(index_path, CheckpointError)
        self._source = {}
        for shard in sorted(set(weight_map.values())):
            ckpt = TorchCheckpoint(index_path.parent / shard)
            missing = sorted(k for k, v in weight_map.items() if v == shard and k not in ckpt.shapes)
            if missing:
                raise CheckpointError(f"{ckpt.path} lacks tensors {missing[:5]} that {index_path.name} places there")
            for key in ckpt.shapes:
                if weight_map.get(key, shard) == shard:  # the index says where a key lives
                    self._source.setdefault(key, ckpt)
        self.shapes = {k: c.shapes[k] for k, c in self._source.items()}

    def get(self, key):
        return self._source[key].get(key)


def open_torch_checkpoint(path):
    """`pytorch_model.bin` (or a `pytorch_model.bin.index.json`) as an object with `.shapes` and `.get(key)`:
    data.pkl is read and checked at once, tensor data only when asked for. Raises CheckpointError (a
    ValueError; for refused pickle globals the subclass UnsafeCheckpointError) naming the file, or OSError
    for a missing shard."""
    path = Path(path)
    return _ShardedCheckpoint(path) if path.name.endswith(".index.json") else TorchCheckpoint(path)


def load_torch_checkpoint(path):
    """Load `pytorch_model.bin` (or a `pytorch_model.bin.index.json`) as {name: np.ndarray}: every tensor.

    Contiguous tensors are read-only views of a memory map of the file; strided, big-endian and
    bfloat16 (widened to float32) tensors are copies. Raises as `open_torch_checkpoint`.
    """
    ckpt = open_torch_checkpoint(path)
    return {k: ckpt.get(k) for k in ckpt.shapes}


def load_torch_shards(index_path):
    """Load every shard listed in a `pytorch_model.bin.index.json` weight_map, checking the map."""
    return load_torch_checkpoint(index_path)
