"""Fuzz targets for the parsers of untrusted input, run by hypothesis in a memory-capped subprocess.

tests/test_fuzz.py runs every target in the default test command (~2 minutes in all). A longer run is

    python tests/fuzz_targets.py [TARGET ...] --examples 200000 [--seed 1]

(or ALTCLIP_FUZZ_EXAMPLES=200000 python -m pytest tests/test_fuzz.py). Each input must succeed or raise one
of the target's documented error types with a message, within DEADLINE_MS, while the process may use at
most 256 MiB of address space beyond what it had after setup (RLIMIT_AS), and the marker file that the
payloads spliced into pickles would create if they ran must never appear. Inputs are mutated real files
(bit flips, truncations, insertions, huge numbers, spliced headers), structurally mutated ones (JSON values,
zip records, pickle opcodes) and generated ones. What a run finds goes into tests/test_hostile.py.
"""
import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # before NumPy: no thread pools appearing mid-run

import argparse  # noqa: E402  (the rest too)
import faulthandler
import io
import json
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np
import random
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

ROOT = Path(__file__).resolve().parents[1]

DEADLINE_MS = 2000
HEADROOM = 256 << 20  # bytes of address space an input may add
# ~10-15 s each on a shared 2-core Zen 4 (~2 minutes for all eight, subprocess start-up included)
DEFAULT_EXAMPLES = {"safetensors": 2000, "torch": 1200, "config": 1000, "preprocessor": 600,
                    "tokenizer_files": 600, "charsmap": 1500, "text": 800, "image": 1000}
HUGE = [b"99999999999999999999", b"-1", b"1e400", b"18446744073709551615", b"\xff" * 8, b"\x00" * 8, b"NaN",
        b"[" * 64, b"\x7f\xff\xff\xff", b"4294967296", b"-9223372036854775809", b"2147483648"]
HOSTILE_JSON = [10**30, -1, 0, 2**63, 2**64 + 1, 1e308, float("nan"), float("inf"), -0.0, True, None, "",
                "x" * 300, [], {}, [[]], {"a": {}}, [1, 2], [224, 224, 3], {"shortest_edge": 10**9},
                {"height": 70000, "width": 70000}, {"content": "<mask>", "lstrip": True}, "<mask>", 2**31]


class Hang(BaseException):
    """Raised by the watchdog: a BaseException, so no `except Exception` in the code under test hides it."""


def _watchdog(signum, frame):
    raise Hang(f"an input ran for more than {4 * DEADLINE_MS} ms")


# ---- mutations (plain `random`, seeded by hypothesis: ~50x cheaper per input than drawing structure) ------

def _position(rng, n):  # headers live at the start: half the positions fall in the first 64 bytes
    return rng.randrange(min(n, 64) + 1) if rng.random() < 0.5 else rng.randrange(n + 1)


def mutate_bytes(rng, data, donor=b"", max_ops=4):
    """Up to `max_ops` of: bit flip, truncation, insertion, a huge number written over, a splice from `donor`."""
    data = bytearray(data)
    for _ in range(rng.randint(1, max_ops)):
        op, pos = rng.randrange(5), _position(rng, len(data))
        if op == 0 and pos < len(data):
            data[pos] ^= 1 << rng.randrange(8)
        elif op == 1:
            del data[pos:]
        elif op == 2:
            data[pos:pos] = rng.randbytes(rng.randint(1, 16))
        elif op == 3:
            huge = rng.choice(HUGE)
            data[pos:pos + len(huge)] = huge
        elif donor:  # e.g. another file's header over this one's
            start, n = rng.randrange(len(donor)), rng.randint(1, 4096)
            data[pos:pos + n] = donor[start:start + n]
    return bytes(data)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def hostile_value(rng, depth=0):
    r = rng.random()
    if r < 0.5 or depth > 2:
        return json.loads(json.dumps(rng.choice(HOSTILE_JSON)))  # a copy: later edits must not reach the list
    if r < 0.6:
        return rng.randint(-2**70, 2**70)
    if r < 0.7:
        return "".join(chr(rng.randrange(0x30000)) for _ in range(rng.randrange(8))).encode("utf-8", "replace").decode()
    if r < 0.85:
        return [hostile_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {rng.choice(["a", "size", "height", "hidden_size", ""]): hostile_value(rng, depth + 1)
            for _ in range(rng.randrange(4))}


def mutate_json(rng, obj):
    """Up to 3 values of a JSON object replaced by hostile ones (or deleted), then maybe byte-mutated; or a
    deeply nested document."""
    if rng.random() < 0.03:
        n = rng.choice([100, 1000, 100000])
        return b'{"a": ' + b"[" * n + b"]" * n + b"}"
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.randint(1, 3)):
        paths = list(_paths(obj))
        path = rng.choice(paths)
        if not path:
            obj = hostile_value(rng)
            continue
        parent = obj
        for k in path[:-1]:
            parent = parent[k]
        if rng.random() < 0.15:
            del parent[path[-1]]
        else:
            parent[path[-1]] = hostile_value(rng)
    data = json.dumps(obj).encode()
    return mutate_bytes(rng, data, max_ops=2) if rng.random() < 0.3 else data


# ---- targets --------------------------------------------------------------------------------------------

class Target:
    allowed = (OSError, ValueError)

    def __init__(self, work, marker):
        self.work, self.marker = work, marker
        self.dir = work / "ckpt"
        self.dir.mkdir()

    def fresh_dir(self):
        shutil.rmtree(self.dir)
        self.dir.mkdir()
        return self.dir


def _st_file(tensors, dtypes):
    """A safetensors file by hand (any dtype name, e.g. BF16)."""
    header, blobs, offset = {}, [], 0
    for (name, array), dtype in zip(tensors.items(), dtypes):
        raw = array.tobytes()
        header[name] = {"dtype": dtype, "shape": list(array.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    return len(text).to_bytes(8, "little") + text + b"".join(blobs)


class Safetensors(Target):
    """weights.SafetensorsFile / open_safetensors / load_weights: header, body and shard index."""

    def __init__(self, work, marker):
        super().__init__(work, marker)
        rng = np.random.default_rng(0)
        a, b = rng.standard_normal((4, 4)).astype(np.float32), np.arange(6, dtype=np.int64)
        h, bf = rng.standard_normal((2, 3)).astype(np.float16), np.arange(5, dtype=np.uint16)
        self.seeds = [_st_file({"a": a, "b": b}, ["F32", "I64"]), _st_file({"h": h, "bf": bf}, ["F16", "BF16"]),
                      _st_file({"a": a}, ["F32"])]
        self.expected = {"a": (4, 4), "b": (6,)}
        self.index = {"metadata": {}, "weight_map": {"a": "model-1.safetensors", "b": "model-2.safetensors"}}
        self.shards = [_st_file({"a": a}, ["F32"]), _st_file({"b": b}, ["I64"])]

    def generate(self, rng):
        r = rng.random()
        if r < 0.6:
            return "single", mutate_bytes(rng, rng.choice(self.seeds), rng.choice(self.seeds))
        if r < 0.8:
            return "index", mutate_json(rng, self.index)
        i = rng.randrange(2)
        return "shard", (i, mutate_bytes(rng, self.shards[i], self.shards[1 - i]))

    def run(self, example):
        from altclip_np.weights import TensorSource, load_weights
        kind, data = example
        d = self.fresh_dir()
        if kind == "single":
            (d / "model.safetensors").write_bytes(data)
        else:
            index = json.dumps(self.index).encode() if kind == "shard" else data
            (d / "model.safetensors.index.json").write_bytes(index)
            for i, blob in enumerate(self.shards, 1):
                (d / f"model-{i}.safetensors").write_bytes(data[1] if kind == "shard" and data[0] == i - 1 else blob)
        source = TensorSource.from_safetensors(d)
        for key in source.shapes:
            source.getter(key)
        load_weights(source, self.expected, str(d))


def _p_int(n):  # pickle protocol 2 integer opcodes
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + n.to_bytes(2, "little")
    if -2**31 <= n < 2**31:
        return b"J" + n.to_bytes(4, "little", signed=True)
    raw = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(raw)]) + raw


def _p_str(s):
    raw = s.encode("utf-8", "surrogatepass")
    return b"X" + len(raw).to_bytes(4, "little") + raw


def _p_tuple(items):
    return b"(" + b"".join(items) + b"t"


def _p_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def torch_tensor_pickle(key, storage_type, numel, offset, size, stride):
    """The opcodes torch.save writes for one tensor (protocol 2)."""
    pid = _p_tuple([_p_str("storage"), _p_global("torch", storage_type), _p_str(key), _p_str("cpu"), _p_int(numel)])
    return (_p_global("torch._utils", "_rebuild_tensor_v2") + b"(" + pid + b"Q" + _p_int(offset)
            + _p_tuple(map(_p_int, size)) + _p_tuple(map(_p_int, stride)) + b"\x89"
            + _p_global("collections", "OrderedDict") + b")R" + b"tR")


def torch_state_pickle(items):
    """{name: opcodes of a value} as a pickled dict."""
    return b"\x80\x02}(" + b"".join(_p_str(k) + v for k, v in items) + b"u."


def evil_snippets(marker):
    """Pickle fragments that push one value: code-running globals (would create `marker`), BUILD on the
    allow-listed callables, amplifying opcodes."""
    touch = _p_tuple([_p_str(f"touch {marker}")])
    return [
        _p_global("os", "system") + touch + b"R",
        _p_global("posix", "system") + touch + b"R",
        _p_global("builtins", "exec") + _p_tuple([_p_str(f"open({str(marker)!r}, 'w').close()")]) + b"R",
        _p_global("torch._utils", "_rebuild_tensor_v2") + b"}" + _p_str("owned") + _p_int(1) + b"sb",
        _p_global("torch._utils", "_rebuild_tensor_v2") + b"N}" + _p_str("owned") + _p_int(1) + b"s\x86b",
        _p_global("collections", "OrderedDict") + b"}" + _p_str("__init__") + _p_int(1) + b"sb",
        _p_global("torch", "FloatStorage") + b"}" + _p_str("dtype") + _p_int(1) + b"sb",
        _p_global("torch._utils", "_rebuild_parameter") + _p_tuple([_p_int(1)]) + b"R",
        b"(" + b"]" * 2000 + b"l",
        b"\x8b" + (1 << 30).to_bytes(4, "little"),  # LONG4 claiming 1 GiB
        b"X" + (1 << 31).to_bytes(4, "little"),  # a string claiming 2 GiB
        b"Q", b"b", b"R", b"0", b"2", b"h\x00", b"j\xff\xff\xff\x7f",
    ]


STORAGE_TYPES = ["FloatStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "ByteStorage", "BoolStorage",
                 "DoubleStorage", "UntypedStorage", "Evil"]
ITEMSIZE = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2, "LongStorage": 8, "ByteStorage": 1,
            "BoolStorage": 1, "DoubleStorage": 8, "UntypedStorage": 1, "Evil": 4}
SOME_INTS = [2**31 - 1, 2**32, 2**62, 2**63, 2**64, -1, 200000, 70000, 1 << 29, 0, 1]


def some_int(rng):
    r = rng.random()
    return rng.randrange(41) if r < 0.6 else rng.choice(SOME_INTS) if r < 0.9 else rng.randint(-2**70, 2**70)


def write_zip(path, records, compression):
    with zipfile.ZipFile(path, "w", compression) as z:
        for name, data in records.items():
            z.writestr(name, data)


class Torch(Target):
    """torch_pickle: the zip, data.pkl (restricted unpickler), storages; through load_weights and whole."""

    def __init__(self, work, marker):
        super().__init__(work, marker)
        import torch
        torch.manual_seed(0)
        base = torch.randn(6, 5)
        state = {"a": torch.randn(4, 4), "b": torch.arange(12)[::2], "c": torch.randn(3, 2).bfloat16(),
                 "d": base[1:, 2:], "e": base.t(), "f": torch.randn(2, 3).half(),
                 "pos": torch.arange(8).expand(1, -1)}
        self.expected = {"a": (4, 4), "b": (6,), "c": (3, 2), "d": (5, 3)}
        buf = io.BytesIO()
        torch.save(state, buf)
        plain = buf.getvalue()
        zf = zipfile.ZipFile(io.BytesIO(plain))
        self.records = {name: zf.read(name) for name in zf.namelist()}
        deflated = io.BytesIO()
        with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as z:
            for name, data in self.records.items():
                z.writestr(name, data)
        self.seeds = [plain, deflated.getvalue()]
        self.pkl_name = next(n for n in self.records if n.endswith("/data.pkl"))
        self.evil = evil_snippets(marker)
        from altclip_np import torch_pickle
        self.sealed = [torch_pickle._rebuild_tensor_v2, torch_pickle._rebuild_parameter]
        self.ordered_dict_attrs = set(vars(__import__("collections").OrderedDict))

    def generate(self, rng):
        """A raw-mutated zip, a re-zipped one with mutated data.pkl (opcodes, payloads spliced in) or
        records, or a generated torch-style pickle of hostile tensor records."""
        r = rng.random()
        if r < 0.3:
            return mutate_bytes(rng, rng.choice(self.seeds), rng.choice(self.seeds))
        compression = rng.choice([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
        if r < 0.65:
            records = dict(self.records)
            pkl = records[self.pkl_name]
            for _ in range(rng.randint(1, 3)):
                if rng.random() < 0.5:
                    pos = _position(rng, len(pkl))
                    pkl = pkl[:pos] + rng.choice(self.evil) + pkl[pos:]
                else:
                    pkl = mutate_bytes(rng, pkl, max_ops=1)
            records[self.pkl_name] = pkl
            if rng.random() < 0.3:  # truncate another record (a storage, byteorder)
                name = rng.choice(sorted(records))
                records[name] = records[name][:rng.randrange(len(records[name]) + 1)]
        else:
            items, storages = [], {}
            for _ in range(rng.randrange(5)):
                key, sk, kind = rng.choice(["a", "b", "c", "d", "w", "x" * 300]), rng.choice("012"), rng.choice(STORAGE_TYPES)
                numel = some_int(rng)
                size = [some_int(rng) for _ in range(rng.randrange(5))]
                stride = [some_int(rng) for _ in range(len(size) if rng.random() < 0.9 else rng.randrange(5))]
                items.append((key, torch_tensor_pickle(sk, kind, numel, some_int(rng), size, stride)))
                claimed = numel * ITEMSIZE[kind]  # storages of the claimed size when small, else any size
                storages[sk] = claimed if 0 <= claimed <= 1 << 16 and rng.random() < 0.7 else rng.randrange(4097)
            if rng.random() < 0.2:
                items.insert(rng.randrange(len(items) + 1), ("evil", rng.choice(self.evil)))
            records = {"archive/data.pkl": torch_state_pickle(items), "archive/byteorder": b"little"}
            records.update({f"archive/data/{sk}": bytes(n) for sk, n in storages.items()})
        buf = io.BytesIO()
        write_zip(buf, records, compression)
        return buf.getvalue()

    def run(self, example):
        from altclip_np.torch_pickle import load_torch_checkpoint
        from altclip_np.weights import TensorSource, load_weights
        path = self.dir / "pytorch_model.bin"
        path.write_bytes(example)
        try:
            try:
                load_weights(TensorSource.from_torch(path), self.expected, str(path))
            finally:
                self.check_sealed()
            load_torch_checkpoint(path)
        finally:
            self.check_sealed()

    def check_sealed(self):
        assert not self.marker.exists(), "a pickle payload ran"
        assert all(not vars(f) for f in self.sealed), "a pickle set attributes on a rebuild function"
        assert set(vars(__import__("collections").OrderedDict)) == self.ordered_dict_attrs


class Config(Target):
    """config.read_config on config.json (joint and tower configs), then the weight shapes it implies."""
    allowed = (OSError, ValueError, TypeError)

    def __init__(self, work, marker):
        super().__init__(work, marker)
        from altclip_np.config import AltCLIPConfig
        full = AltCLIPConfig().to_dict()
        self.seeds = [full, full["text_config"], full["vision_config"],
                      {"model_type": "altclip", "text_config_dict": {"hidden_size": 64, "num_attention_heads": 4},
                       "vision_config": {"image_size": [224, 224]}}]

    def generate(self, rng):
        return mutate_json(rng, rng.choice(self.seeds))

    def run(self, data):
        from altclip_np import config, model
        path = self.dir / "config.json"
        path.write_bytes(data)
        errors = []
        for cls, m in ((config.AltCLIPConfig, model.AltCLIPModel), (config.AltCLIPTextConfig, model.AltCLIPTextModel),
                       (config.AltCLIPVisionConfig, model.AltCLIPVisionModel)):
            try:
                m.expected_weights(config.read_config(cls, path))
            except self.allowed as e:
                errors.append(e)
        if errors:  # every class was tried; the first error is the input's (counted by the driver)
            raise errors[0]


class Preprocessor(Target):
    """CLIPImageProcessor.from_pretrained on preprocessor_config.json / processor_config.json, then a call."""
    allowed = (OSError, ValueError, TypeError)

    def __init__(self, work, marker):
        super().__init__(work, marker)
        from altclip_np.image_processing import CLIPImageProcessor
        d = CLIPImageProcessor().to_dict()
        self.seeds = [d, {"image_processor": d}, {**d, "size": 224, "crop_size": [224, 224]}]
        self.image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)

    def generate(self, rng):
        return rng.random() < 0.3, mutate_json(rng, rng.choice(self.seeds))

    def run(self, example):
        from altclip_np.image_processing import CLIPImageProcessor
        as_processor, data = example
        d = self.fresh_dir()
        (d / ("processor_config.json" if as_processor else "preprocessor_config.json")).write_bytes(data)
        CLIPImageProcessor.from_pretrained(d)(self.image)


def train_sentencepiece(directory):
    import sentencepiece as spm
    lines = (ROOT / "tests" / "data" / "multilingual.txt").read_text(encoding="utf-8").split("\n")
    spm.SentencePieceTrainer.train(sentence_iterator=iter([l for l in lines if l]), model_prefix=str(directory / "sp"),
                                   model_type="unigram", vocab_size=1200, character_coverage=0.98, num_threads=1,
                                   minloglevel=2)
    (directory / "sp.model").rename(directory / "sentencepiece.bpe.model")
    return directory / "sentencepiece.bpe.model"


TEXT_PIECES = ["<s>", "</s>", "<pad>", "<unk>", "<mask>", " <mask>", "\u2581", " ", "\u3000", "\t", "\r\n", "\u0301",
               "\u200d", "👍🏽", "🇫🇷", "ＡＢ", "東京", "한국어", "हिन्दी", "ab", "the ", "\ue000", "\x00", "<", "aaaa",
               "\u0e33", "ｶﾞ", "①", "\u0600a", "\ufeff", "\U000e0041"]
RANGES = [(0x20, 0x7F), (0xA0, 0x250), (0x300, 0x370), (0x590, 0x700), (0x900, 0xE00), (0x1100, 0x1200),
          (0x2000, 0x2070), (0x3000, 0x3100), (0x4E00, 0x4F00), (0xAC00, 0xAD00), (0xFF00, 0xFFF0),
          (0x1F300, 0x1F700), (0xE000, 0xE010), (0, 0x110000)]


def random_text(rng, n):
    """Up to n characters from scripts, marks, spaces, full-width forms, emoji, private use, anything."""
    out = []
    for _ in range(rng.randrange(n + 1)):
        lo, hi = rng.choice(RANGES)
        c = rng.randrange(lo, hi)
        out.append(chr(c) if not 0xD800 <= c < 0xE000 else "?")
    return "".join(out)


SAMPLE_TEXTS = ["Hello world", "<mask> und <s> x", "東京は  雨", "ＡＢＣ\u0301 e\u0301", "\u2581\u2581 a\u2581b", ""]


class TokenizerFiles(Target):
    """XLMRobertaTokenizer.from_pretrained on a mutated tokenizer_config.json or sentencepiece.bpe.model."""
    allowed = (OSError, ValueError, TypeError)

    def __init__(self, work, marker):
        super().__init__(work, marker)
        from altclip_np.tokenizer import XLMRobertaTokenizer
        seed_dir = work / "sp"
        seed_dir.mkdir()
        self.model = train_sentencepiece(seed_dir).read_bytes()
        tok = XLMRobertaTokenizer(seed_dir / "sentencepiece.bpe.model", model_max_length=512, mask_lstrip=True)
        tok.save_pretrained(seed_dir)
        self.config = json.loads((seed_dir / "tokenizer_config.json").read_text())

    def generate(self, rng):
        if rng.random() < 0.5:
            return "config", mutate_json(rng, self.config)
        return "model", mutate_bytes(rng, self.model)

    def run(self, example):
        from altclip_np.tokenizer import XLMRobertaTokenizer
        kind, data = example
        d = self.fresh_dir()
        (d / "tokenizer_config.json").write_bytes(data if kind == "config" else json.dumps(self.config).encode())
        (d / "sentencepiece.bpe.model").write_bytes(data if kind == "model" else self.model)
        tok = XLMRobertaTokenizer.from_pretrained(d)
        tok(SAMPLE_TEXTS, padding=True, truncation=True)
        tok.decode(list(range(min(len(tok), 50))))


def _proto_field(number, payload):  # a length-delimited protobuf field
    key, size, out = (number << 3) | 2, len(payload), b""
    for v in (key, size):
        while v >= 0x80:
            out += bytes([v & 0x7F | 0x80])
            v >>= 7
        out += bytes([v])
    return out + payload


class Charsmap(Target):
    """charsmap.CharsMap (our own reader of the .model file's precompiled map) on mutated maps and protos."""
    allowed = (ValueError,)

    def __init__(self, work, marker):
        super().__init__(work, marker)
        import sentencepiece as spm
        from altclip_np.charsmap import _field
        seed_dir = work / "sp"
        seed_dir.mkdir()
        proto = spm.SentencePieceProcessor(model_file=str(train_sentencepiece(seed_dir))).serialized_model_proto()
        self.proto = proto
        self.blob = _field(_field(proto, 3), 2)

    def generate(self, rng):
        if rng.random() < 0.7:
            proto = _proto_field(3, _proto_field(2, mutate_bytes(rng, self.blob)))
        else:
            proto = mutate_bytes(rng, self.proto)
        keys = [random_text(rng, 12) for _ in range(rng.randint(1, 4))]
        return proto, keys

    def run(self, example):
        from altclip_np.charsmap import CharsMap
        proto, keys = example
        cm = CharsMap(proto)
        for key in keys + ["Ａ", "①", "\u3000", "ﬁ", "e\u0301"]:
            cm.lookup(key)


class Text(Target):
    """The tokenizer on hostile text: truncated ids equal the first max_length - 2 of the full encoding."""
    allowed = ()

    def __init__(self, work, marker):
        super().__init__(work, marker)
        from altclip_np.tokenizer import XLMRobertaTokenizer
        seed_dir = work / "sp"
        seed_dir.mkdir()
        train_sentencepiece(seed_dir)
        self.tokenizers = [XLMRobertaTokenizer(seed_dir / "sentencepiece.bpe.model", mask_lstrip=lstrip)
                           for lstrip in (False, True)]

    def generate(self, rng):
        parts = []
        for _ in range(rng.randrange(12)):
            r = rng.random()
            part = rng.choice(TEXT_PIECES) if r < 0.5 else random_text(rng, 8)
            parts.append(part * rng.randint(1, 60) if rng.random() < 0.2 else part)
        return "".join(parts), rng.randrange(41), rng.randrange(2)

    def run(self, example):
        text, max_length, which = example
        tok = self.tokenizers[which]
        full = tok(text)["input_ids"]
        cut = tok(text, truncation=True, max_length=max_length)["input_ids"]
        assert cut == [0] + full[1:-1][:max(max_length - 2, 0)] + [2], (cut, full)
        assert len(tok.tokenize(text)) == len(full) - 2
        tok.decode(full)


class Image(Target):
    """image_processing.load_image (header check, then decode) and the processor on mutated image files."""

    def __init__(self, work, marker):
        super().__init__(work, marker)
        from PIL import Image as PILImage
        rng = np.random.default_rng(0)
        self.seeds = []
        for fmt, mode in (("PNG", "RGB"), ("PNG", "RGBA"), ("JPEG", "RGB"), ("GIF", "P"), ("BMP", "RGB"),
                          ("WEBP", "RGB"), ("TIFF", "RGB")):
            buf = io.BytesIO()
            PILImage.fromarray(rng.integers(0, 256, (12, 9, 3), dtype=np.uint8)).convert(mode).save(buf, fmt)
            self.seeds.append(buf.getvalue())
        self.seeds.append(big_png_header(100_000, 1_000_000))

    def generate(self, rng):
        return mutate_bytes(rng, rng.choice(self.seeds), rng.choice(self.seeds))

    def run(self, data):
        from altclip_np.image_processing import CLIPImageProcessor, load_image
        path = self.dir / "image"
        path.write_bytes(data)
        # a valid image of up to max_pixels needs ~4 bytes a pixel, twice: keep that inside the headroom
        CLIPImageProcessor(size=16, crop_size=16)(load_image(path, max_pixels=IMAGE_PIXELS))


IMAGE_PIXELS = 16_000_000


def big_png_header(width, height):
    """A PNG whose header declares width x height pixels, with one tiny (invalid) data chunk."""
    def chunk(kind, payload):
        return len(payload).to_bytes(4, "big") + kind + payload + zlib.crc32(kind + payload).to_bytes(4, "big")
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


TARGETS = {"safetensors": Safetensors, "torch": Torch, "config": Config, "preprocessor": Preprocessor,
           "tokenizer_files": TokenizerFiles, "charsmap": Charsmap, "text": Text, "image": Image}


def status(field):  # bytes, from /proc/self/status (VmSize: address space, VmRSS / VmHWM: resident, peak)
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise OSError(f"no {field} in /proc/self/status")


def reset_peak_rss():  # Linux: "5" resets VmHWM to the current VmRSS
    Path("/proc/self/clear_refs").write_text("5")
    return status("VmRSS")


def fuzz(name, examples, random_seed=None):
    """Run one target; -> report dict. Raises (hypothesis' falsifying example printed) on a failure."""
    work = Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    try:
        marker = work / "PWNED"
        target = TARGETS[name](work, marker)
        count = {"inputs": 0, "errors": 0}
        signal.signal(signal.SIGALRM, _watchdog)
        warnings.simplefilter("ignore")  # Pillow's and NumPy's warnings about broken inputs: expected here
        limit = status("VmSize") + HEADROOM
        resource.setrlimit(resource.RLIMIT_AS, (limit, resource.getrlimit(resource.RLIMIT_AS)[1]))
        rss_before = reset_peak_rss()

        def one(input_seed):
            example = target.generate(random.Random(input_seed))
            count["inputs"] += 1
            rss = reset_peak_rss()
            signal.setitimer(signal.ITIMER_REAL, 4 * DEADLINE_MS / 1000)
            try:
                target.run(example)
            except target.allowed as e:
                assert str(e).strip(), f"{type(e).__name__} without a message"
                count["errors"] += 1
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
                grew = status("VmHWM") - rss
                if grew > count.get("max_step", 0):
                    count["max_step"], count["max_step_input"] = grew, input_seed
            assert not marker.exists(), "a payload created the marker file"

        test = settings(max_examples=examples, deadline=DEADLINE_MS, database=None,
                        derandomize=random_seed is None, suppress_health_check=list(HealthCheck),
                        phases=[Phase.generate])(given(st.integers(0, 2**64 - 1))(one))
        if random_seed is not None:
            test = seed(random_seed)(test)
        start = time.perf_counter()
        test()
        return {"target": name, "inputs": count["inputs"], "errors": count["errors"],
                "seconds": round(time.perf_counter() - start, 1),
                "rss_growth_mib": round((status("VmRSS") - rss_before) / 2**20, 1),
                "address_space_limit_mib": round(limit / 2**20),
                "largest_input_peak_rss_mib": round(count.get("max_step", 0) / 2**20, 1),
                **({"largest_step_input": count["max_step_input"]} if os.environ.get("FUZZ_VERBOSE") else {})}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def replay(name, input_seed):
    """Run one input of a target again (a seed a fuzz run reported), without the limits: -> the example."""
    work = Path(tempfile.mkdtemp(prefix=f"replay-{name}-"))
    try:
        target = TARGETS[name](work, work / "PWNED")
        example = target.generate(random.Random(input_seed))
        try:
            target.run(example)
        except target.allowed:
            pass
        assert not target.marker.exists()
        return example
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None):
    faulthandler.enable()  # a crash in C code still says where
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", help=f"some of {', '.join(TARGETS)} (default: all)")
    parser.add_argument("--examples", type=int, help="inputs per target (default: the CI budget)")
    parser.add_argument("--seed", type=int, help="a random seed instead of the fixed (derandomized) one")
    parser.add_argument("--replay", type=int, metavar="INPUT_SEED", help="run the one input a run reported")
    args = parser.parse_args(argv)
    unknown = set(args.targets) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets {sorted(unknown)}")
    if args.replay is not None:
        for name in args.targets:
            print(f"{name} {args.replay}: {replay(name, args.replay)!r}"[:2000])
        return
    names = args.targets or list(TARGETS)
    if len(names) == 1:
        print(json.dumps(fuzz(names[0], args.examples or DEFAULT_EXAMPLES[names[0]], args.seed)), flush=True)
        return
    failed = []
    for name in names:  # each in a fresh process: the address-space cap is per process, and set after setup
        extra = [*(["--examples", str(args.examples)] if args.examples else []), *(["--seed", str(args.seed)]
                                                                                  if args.seed is not None else [])]
        if subprocess.run([sys.executable, __file__, name, *extra]).returncode:
            failed.append(name)
    if failed:
        sys.exit(f"fuzz targets failed: {', '.join(failed)}")


if __name__ == "__main__":
    main()
