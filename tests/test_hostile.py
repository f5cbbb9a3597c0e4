"""Regression tests for the hostile inputs of issue 15: each ends in a clear error (or the right result) while
the process may use at most 256 MiB of address space beyond what it had before the input (RLIMIT_AS, set in
a subprocess after its imports), and nothing from the file changes the library's state.

Also the cases the fuzz targets (tests/fuzz_targets.py) are built around: shard indexes, safetensors shapes
whose int64 product wraps, config files that would size an allocation, and the tokenizer's cut.
"""
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from fuzz_targets import big_png_header, torch_state_pickle, torch_tensor_pickle, train_sentencepiece

ROOT = Path(__file__).resolve().parents[1]
HEADROOM = 256 << 20

# Run in a fresh interpreter: imports first, then the address-space cap, then the body, which prints JSON.
LIMITED = """
import json, resource, sys, traceback
from pathlib import Path
import numpy as np
import altclip_np
from altclip_np import torch_pickle
from altclip_np.image_processing import load_image
from altclip_np.tokenizer import XLMRobertaTokenizer
def status(field):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(field + ":"))
def outcome(fn):
    try:
        value = fn()
        return {"ok": True, "value": value}
    except MemoryError:
        return {"ok": False, "error": "MemoryError", "message": ""}
    except Exception as e:
        return {"ok": False, "error": type(e).__name__, "message": str(e),
                "bases": [c.__name__ for c in type(e).__mro__]}
SETUP
resource.setrlimit(resource.RLIMIT_AS, (status("VmSize") + HEADROOM, resource.RLIM_INFINITY))
open("/proc/self/clear_refs", "w").write("5")  # peak RSS := current RSS
rss = status("VmRSS")
results = BODY
results = {"results": results, "rss_growth_mib": (status("VmHWM") - rss) / 2**20}
print(json.dumps(results))
"""


def run_limited(body, setup="", args=(), timeout=120):
    """Run `body` (an expression giving a JSON-able value) under the cap; -> its value and its peak-RSS rise."""
    code = LIMITED.replace("SETUP", setup).replace("BODY", body).replace("HEADROOM", str(HEADROOM))
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "OPENBLAS_NUM_THREADS": "1",
                                                "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["rss_growth_mib"] < HEADROOM / 2**20
    return out["results"], out["rss_growth_mib"]


def write_torch_zip(path, tensors, storages, compressed=()):
    """tensors: {name: (storage key, storage type, numel, offset, size, stride)}; storages: {key: bytes}."""
    pkl = torch_state_pickle([(k, torch_tensor_pickle(*v)) for k, v in tensors.items()])
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for key, data in storages.items():
            z.writestr(f"archive/data/{key}", data, zipfile.ZIP_DEFLATED if key in compressed else zipfile.ZIP_STORED)
    return path


def claim_size(path, record, size):
    """Make the zip's local and central headers claim `size` uncompressed bytes for `record` (CRC untouched)."""
    blob = bytearray(path.read_bytes())
    info = zipfile.ZipFile(path).getinfo(record)
    blob[info.header_offset + 22: info.header_offset + 26] = size.to_bytes(4, "little")
    central = blob.index(b"PK\x01\x02")
    while blob[central + 46: central + 46 + len(record)] != record.encode():
        central = blob.index(b"PK\x01\x02", central + 4)
    blob[central + 24: central + 28] = size.to_bytes(4, "little")
    path.write_bytes(bytes(blob))


@pytest.fixture(scope="module")
def tiny_state(tiny):
    """The tiny "base" checkpoint as a float32 state dict, and its directory (for config.json)."""
    from altclip_np.weights import open_safetensors
    directory = tiny["base"][0]
    return directory, {k: np.array(f.get(k), order="C") for k, f in open_safetensors(directory).items()}


def torch_dir(tmp_path, state, extra=None, storages_extra=None, compressed=(), config_from=None):
    """A checkpoint directory with the state dict as a torch-format pytorch_model.bin (+ hostile records)."""
    tmp_path.mkdir(exist_ok=True)
    tensors, storages = {}, {}
    for i, (k, a) in enumerate(state.items()):
        kind = {np.float32: "FloatStorage", np.int64: "LongStorage"}[a.dtype.type]
        strides = tuple(s // a.itemsize for s in a.strides)
        tensors[k], storages[str(i)] = (str(i), kind, a.size, 0, a.shape, strides), a.tobytes()
    tensors.update(extra or {})
    storages.update(storages_extra or {})
    write_torch_zip(tmp_path / "pytorch_model.bin", tensors, storages, compressed)
    (tmp_path / "config.json").write_bytes((config_from / "config.json").read_bytes())
    return tmp_path


WORD = "text_model.roberta.embeddings.word_embeddings.weight"  # (120, 32) in the tiny config


# ---- the stride-0 tensor ----

def test_stride_zero_tensor(tiny_state, tmp_path):
    """torch.zeros(1).expand(200000, 200000) (149 GiB if copied): refused, whether loaded whole or by a model
    that expects the key with another shape; 70000 x 70000 (fits overcommit) too."""
    src, state = tiny_state
    bomb = tmp_path / "bomb.bin"
    write_torch_zip(bomb, {"w": ("0", "FloatStorage", 1, 0, (200000, 200000), (0, 0)),
                           "v": ("0", "FloatStorage", 1, 0, (70000, 70000), (0, 0))}, {"0": bytes(4)})
    assert bomb.stat().st_size < 2000
    model_dir = torch_dir(tmp_path / "m", {k: v for k, v in state.items() if k != WORD},
                          extra={WORD: ("z", "FloatStorage", 1, 0, (200000, 200000), (0, 0))},
                          storages_extra={"z": bytes(4)}, config_from=src)
    right_shape = torch_dir(tmp_path / "r", {k: v for k, v in state.items() if k != WORD},
                            extra={WORD: ("z", "FloatStorage", 1, 0, (120, 32), (0, 0))},
                            storages_extra={"z": bytes(4)}, config_from=src)
    results, grew = run_limited(
        "[outcome(lambda: torch_pickle.load_torch_checkpoint(sys.argv[1])), "
        " outcome(lambda: torch_pickle.open_torch_checkpoint(sys.argv[1]).get('v')), "
        " outcome(lambda: altclip_np.AltCLIPModel.from_pretrained(sys.argv[2]) and None), "
        " outcome(lambda: altclip_np.AltCLIPModel.from_pretrained(sys.argv[3]) and None)]",
        args=(bomb, model_dir, right_shape))
    whole, one, model, aliased = results
    for r in (whole, one, aliased):
        assert r["error"] == "CheckpointError" and "ValueError" in r["bases"], r
        assert "overlapping strides" in r["message"] and "expand-like tensors are refused" in r["message"]
    assert model["error"] == "ValueError" and f"{WORD}: expected [120, 32], found [200000, 200000]" in model["message"]
    print(f"peak RSS rise {grew:.1f} MiB")


# ---- a 2 GB numel in a compressed storage ----

def test_two_gigabyte_compressed_storage(tiny_state, tmp_path):
    """A deflated storage whose zip headers and pickle claim 2^29 float32 (2 GiB) but that holds 16 MiB: a model
    load reads only the prefix its tensor needs; a tensor placed beyond the budget of the expected weights is
    refused without decompressing; the whole-file loader stops where the data really ends."""
    src, state = tiny_state
    numel = 1 << 29
    rest = {k: v for k, v in state.items() if k != WORD}
    real = np.arange(3840, dtype=np.float32).tobytes() + bytes((16 << 20) - 15360)  # 16 MiB; the model reads 15 KiB
    cases = {
        "misshaped": (0, (numel,), (1,)),  # the pickle's tensor is the whole 2 GiB storage
        "prefix": (0, (120, 32), (32, 1)),  # right shape at the start: 15 KiB decompressed
        "far": (numel - 3840, (120, 32), (32, 1)),  # right shape at the end: would need 2 GiB decompressed
    }
    dirs = []
    for name, (offset, size, stride) in cases.items():
        d = torch_dir(tmp_path / name, rest, extra={WORD: ("big", "FloatStorage", numel, offset, size, stride)},
                      storages_extra={"big": real}, compressed={"big"}, config_from=src)
        claim_size(d / "pytorch_model.bin", "archive/data/big", numel * 4)
        assert (d / "pytorch_model.bin").stat().st_size < 1 << 20
        dirs.append(d)
    results, grew = run_limited(
        "[outcome(lambda: altclip_np.AltCLIPModel.from_pretrained(d).weights[sys.argv[-1]][:2, :3].tolist()) "
        " for d in sys.argv[1:4]] + [outcome(lambda: torch_pickle.load_torch_checkpoint(Path(sys.argv[1]) / "
        "'pytorch_model.bin') and None)]", args=(*dirs, WORD))
    misshaped, prefix, far, whole = results
    assert misshaped["error"] == "ValueError" and "expected [120, 32], found [536870912]" in misshaped["message"]
    assert prefix["ok"] and prefix["value"] == [[0, 1, 2], [32, 33, 34]]
    assert far["error"] == "CheckpointError" and "would decompress 2147483648 bytes" in far["message"]
    assert whole["error"] == "CheckpointError" and "ends after 16777216 bytes" in whole["message"]
    print(f"peak RSS rise {grew:.1f} MiB")


# ---- BUILD on a rebuild function ----

BUILD_PAYLOAD = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}X\x05\x00\x00\x00ownedK\x01sb."


@pytest.mark.parametrize("payload", [
    BUILD_PAYLOAD,
    BUILD_PAYLOAD.replace(b"}X", b"N}X").replace(b"sb.", b"s\x86b."),  # slot state: (None, {...})
    BUILD_PAYLOAD.replace(b"torch._utils\n_rebuild_tensor_v2", b"collections\nOrderedDict"),
    BUILD_PAYLOAD.replace(b"torch._utils\n_rebuild_tensor_v2", b"torch\nFloatStorage"),
    b"\x80\x02}X\x01\x00\x00\x00w" + BUILD_PAYLOAD[2:-1] + b"s.",  # the function inside a state dict
])
def test_build_on_allow_listed_globals(tmp_path, payload):
    """The issue's 60-byte data.pkl: a clear error, and no attribute set on any function, class or module."""
    assert len(BUILD_PAYLOAD) < 60
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", payload)
    results, _ = run_limited(
        "[outcome(lambda: torch_pickle.load_torch_checkpoint(sys.argv[1])), "
        " sorted(vars(torch_pickle._rebuild_tensor_v2)), sorted(vars(torch_pickle._rebuild_parameter)), "
        " 'owned' in vars(torch_pickle), 'owned' in vars(OrderedDict), "
        " all(not hasattr(v, 'owned') for v in torch_pickle._ALLOWED.values())]",
        setup="from collections import OrderedDict", args=(path,))
    err, fn_attrs, param_attrs, in_module, in_class, none_owned = results
    assert err["error"] == "CheckpointError" and str(path) in err["message"]
    assert ("set the state" in err["message"] or "plain state dict" in err["message"]), err
    assert fn_attrs == [] and param_attrs == [] and not in_module and not in_class and none_owned


# ---- a 10 MB line ----

@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sp")
    train_sentencepiece(d)
    return d


def long_lines():
    lines = [line for line in (ROOT / "tests" / "data" / "multilingual.txt").read_text("utf-8").split("\n") if line]
    cjk = "".join(line for line in lines if any("\u4e00" <= c <= "\u9fff" for c in line)).replace(" ", "")
    return {"words": " ".join(lines), "cjk_run": cjk, "no_spaces": "".join(lines).replace(" ", ""),
            "one_letter": "a", "unknown_then_words": "\ue000" * 5000 + " " + " ".join(lines)}


def test_ten_megabyte_line(sp_dir, tmp_path):
    """One 10 MB line with truncation=True, max_length=512: tokenized within the cap and a hang guard of 60 s
    (the full tokenization takes ~80 s); its ids equal the first 510 of the full tokenization of a 100 KB
    prefix of the same line (more than 510 tokens for each; test_long_lines_match_transformers compares such
    cuts with transformers)."""
    from altclip_np.tokenizer import XLMRobertaTokenizer
    tok = XLMRobertaTokenizer(sp_dir / "sentencepiece.bpe.model")
    bases = long_lines()
    (tmp_path / "bases.json").write_text(json.dumps(bases))
    want = {name: tok((base * (100_000 // len(base) + 1))[:100_000])["input_ids"][:511] + [2]
            for name, base in bases.items()}
    results, grew = run_limited(
        "{name: outcome(lambda: tok((base * (10_000_000 // len(base) + 1))[:10_000_000], truncation=True, "
        "max_length=512)['input_ids']) for name, base in bases.items()}",
        setup="tok = XLMRobertaTokenizer(sys.argv[1]); bases = json.loads(Path(sys.argv[2]).read_text())",
        args=(sp_dir / "sentencepiece.bpe.model", tmp_path / "bases.json"), timeout=60)
    for name in bases:
        assert results[name]["ok"] and results[name]["value"] == want[name], name
        assert len(want[name]) == 512
    print(f"peak RSS rise {grew:.1f} MiB")


def test_long_lines_match_transformers(sp_dir):
    """Lines of 30-60 KB (words, one CJK run, no spaces at all, one repeated letter, a run of unknown
    characters): truncated ids equal transformers' XLMRobertaTokenizer and our own full tokenization, for
    several max_length. Observed: identical (and on the 10 MB lines too, checked by hand: transformers 10-45 s)."""
    transformers = pytest.importorskip("transformers")
    from altclip_np.tokenizer import XLMRobertaTokenizer
    ours = XLMRobertaTokenizer(sp_dir / "sentencepiece.bpe.model")
    ref = transformers.XLMRobertaTokenizer.from_pretrained(sp_dir)
    for name, base in long_lines().items():
        line = (base * (30_000 // len(base) + 1))[:30_000 + 30_000 * (name == "unknown_then_words")]
        full = ours(line)["input_ids"]
        assert full == ref(line)["input_ids"], name
        for max_length in (2, 3, 64, 512, len(full) - 1):
            cut = ours(line, truncation=True, max_length=max_length)["input_ids"]
            assert cut == ref(line, truncation=True, max_length=max_length)["input_ids"], (name, max_length)
            assert cut == full[:max_length - 1] + [2], (name, max_length)


def test_quadratic_mask_lstrip(sp_dir):
    """An lstrip <mask> used to be `\\s*<mask>`, quadratic on a long run of spaces: 1 MB of spaces is now fast."""
    from altclip_np.tokenizer import XLMRobertaTokenizer
    tok = XLMRobertaTokenizer(sp_dir / "sentencepiece.bpe.model", mask_lstrip=True)
    assert tok(" " * 1_000_000 + "a", truncation=True, max_length=8)["input_ids"] == tok("a")["input_ids"]
    assert tok("x  \t<mask>")["input_ids"][-2] == tok.mask_token_id
    assert tok.tokenize("x  \t<mask> y") == tok.tokenize("x") + ["<mask>"] + tok.tokenize("y")


# ---- a header-declared 100-gigapixel PNG ----

def test_hundred_gigapixel_png(tmp_path):
    """Refused from the header, with Pillow's own bomb check on (its error) or off (ours): nothing decoded."""
    path = tmp_path / "huge.png"
    path.write_bytes(big_png_header(100_000, 1_000_000))
    edge = tmp_path / "edge.png"
    from PIL import Image
    Image.new("RGB", (300, 200)).save(edge)
    results, grew = run_limited(
        "[outcome(lambda: load_image(sys.argv[1]) and None), "
        " (setattr(PIL.Image, 'MAX_IMAGE_PIXELS', None), outcome(lambda: load_image(sys.argv[1]) and None))[1], "
        " outcome(lambda: altclip_np.CLIPImageProcessor()(sys.argv[1]) and None), "
        " outcome(lambda: load_image(sys.argv[2], max_pixels=59999) and None), "
        " outcome(lambda: load_image(sys.argv[2], max_pixels=60000).size)]",
        setup="import PIL.Image", args=(path, edge))
    pillow, ours, processor, over, exact = results
    for r in (pillow, ours, processor, over):
        assert r["error"] == "ImageTooLargeError" and "ValueError" in r["bases"] and "refusing to decode" in r["message"], r
    assert "100000 x 1000000 = 100000000000 pixels" in ours["message"] and "MAX_IMAGE_PIXELS" in ours["message"]
    assert exact["ok"] and exact["value"] == [300, 200]
    print(f"peak RSS rise {grew:.1f} MiB")


def test_pixel_bound_is_configurable(tmp_path, monkeypatch):
    from PIL import Image
    from altclip_np import image_processing
    path = tmp_path / "a.png"
    Image.new("RGB", (40, 30)).save(path)
    processor = image_processing.CLIPImageProcessor()
    monkeypatch.setattr(image_processing, "MAX_IMAGE_PIXELS", 1199)
    with pytest.raises(ValueError, match="40 x 30 = 1200 pixels, more than .*MAX_IMAGE_PIXELS = 1199"):
        image_processing.load_image(path)
    with pytest.raises(ValueError, match="refusing to decode image"):
        processor(Image.open(path))  # a lazily opened image, not decoded yet
    monkeypatch.setattr(image_processing, "MAX_IMAGE_PIXELS", 1200)
    assert image_processing.load_image(path).size == (40, 30)


# ---- configs that would size an allocation ----

@pytest.mark.parametrize("config, match", [
    ({"crop_size": {"height": 70000, "width": 70000}}, "at most 120000000 pixels"),
    ({"size": {"shortest_edge": 10**9}}, "at most 120000000 pixels"),
    ({"size": True}, "expected size"),
    ({"resample": 1e308}, "resample must be one of"),
    ({"resample": float("nan")}, "resample must be one of"),
])
def test_bad_preprocessor_configs(tmp_path, config, match):
    from altclip_np.image_processing import CLIPImageProcessor
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=match):
        CLIPImageProcessor.from_pretrained(tmp_path)


@pytest.mark.parametrize("text, error, match", [
    ("[1, 2]", OSError, "expected a JSON object"),
    ("[" * 100000, OSError, "not valid JSON: RecursionError"),
    ('{"model_max_length": 1e400}', ValueError, "model_max_length must be a non-negative number"),
    ('{"model_max_length": -5}', ValueError, "model_max_length must be a non-negative number"),
    ('{"model_max_length": "512"}', ValueError, "model_max_length must be a non-negative number"),
])
def test_bad_tokenizer_configs(sp_dir, tmp_path, text, error, match):
    from altclip_np.tokenizer import XLMRobertaTokenizer
    (tmp_path / "sentencepiece.bpe.model").write_bytes((sp_dir / "sentencepiece.bpe.model").read_bytes())
    (tmp_path / "tokenizer_config.json").write_text(text)
    with pytest.raises(error, match=match):
        XLMRobertaTokenizer.from_pretrained(tmp_path)


def test_bad_sentencepiece_model(tmp_path):
    from altclip_np.tokenizer import XLMRobertaTokenizer
    (tmp_path / "sentencepiece.bpe.model").write_bytes(b"\x0a\x03abc" * 3)
    with pytest.raises(OSError, match="not a readable SentencePiece model"):
        XLMRobertaTokenizer.from_pretrained(tmp_path)


def test_charsmap_damage_is_a_value_error():
    from altclip_np.charsmap import CharsMap
    from fuzz_targets import _proto_field
    trie = (4).to_bytes(4, "little") + (0xFFFFFFFF).to_bytes(4, "little")  # one unit pointing far outside
    with pytest.raises(ValueError, match="corrupt precompiled charsmap"):
        CharsMap(_proto_field(3, _proto_field(2, trie))).lookup("a")
    with pytest.raises(ValueError, match="unreadable precompiled charsmap"):
        CharsMap(_proto_field(3, _proto_field(2, b"\x01")))


@pytest.mark.parametrize("edit, match", [
    ({"num_hidden_layers": 10**9}, "more than 1024"),
    ({"vocab_size": "big"}, "vocab_size must be a positive integer"),
    ({"layer_norm_eps": [1]}, "layer_norm_eps must be a number"),
    ({"project_dim": 0}, "project_dim must be a positive integer"),
])
def test_bad_config_fields(tmp_path, edit, match):
    from altclip_np.config import AltCLIPTextConfig, read_config
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "altclip_text_model", **edit}))
    with pytest.raises(ValueError, match=match):
        read_config(AltCLIPTextConfig, tmp_path / "config.json")


# ---- safetensors and shard indexes ----

def safetensors_bytes(header, body=b""):
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


@pytest.mark.parametrize("entry, match", [
    ({"dtype": "F32", "shape": [2**62, 4], "data_offsets": [0, 0]}, "do not fit its size"),  # int64 product wraps to 0
    ({"dtype": "F32", "shape": "abc", "data_offsets": [0, 0]}, "must be non-negative integers"),
    ({"dtype": ["F32"], "shape": [1], "data_offsets": [0, 4]}, "unsupported dtype"),
    ({"dtype": "F32", "shape": [1], "data_offsets": [0.0, 4]}, "must be non-negative integers"),
    ({"dtype": "F32", "shape": [True], "data_offsets": [0, 4]}, "must be non-negative integers"),
])
def test_safetensors_header_fields(tmp_path, entry, match):
    from altclip_np.weights import open_safetensors
    (tmp_path / "model.safetensors").write_bytes(safetensors_bytes({"a": entry}, bytes(4)))
    with pytest.raises(OSError, match=match):
        open_safetensors(tmp_path)


@pytest.mark.parametrize("kind", ["safetensors", "torch"])
@pytest.mark.parametrize("index, match", [
    ('{"weight_map": {"a": "s1", "a": "s2"}}', "key 'a' appears twice"),
    ('{"weight_map": {"a": "s1", "b": "./s1"}}', "listed twice, as './s1' and 's1'"),
    ('{"weight_map": {"a": "/etc/passwd"}}', "leaves the checkpoint directory"),
    ('{"weight_map": {"a": "sub/../../s1"}}', "leaves the checkpoint directory"),
    ('{"weight_map": {"a": "C:\\\\s1"}}', "leaves the checkpoint directory"),
    ('{"weight_map": {"a": "s9"}}', "lists shards that are not in"),
    ('{"weight_map": {"a": 3}}', "weight_map is not an object of shard file names"),
])
def test_shard_index_faults(tmp_path, kind, index, match):
    from altclip_np.torch_pickle import open_torch_checkpoint
    from altclip_np.weights import open_safetensors
    if kind == "safetensors":
        (tmp_path / "s1").write_bytes(safetensors_bytes({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}},
                                                        bytes(4)))
        (tmp_path / "model.safetensors.index.json").write_text(index)
        with pytest.raises(OSError, match=match):
            open_safetensors(tmp_path)
    else:
        write_torch_zip(tmp_path / "s1", {"a": ("0", "FloatStorage", 1, 0, (1,), (1,))}, {"0": bytes(4)})
        (tmp_path / "pytorch_model.bin.index.json").write_text(index)
        with pytest.raises((OSError, ValueError), match=match):
            open_torch_checkpoint(tmp_path / "pytorch_model.bin.index.json")


def test_unused_tensors_are_never_read(tiny_state, tmp_path):
    """A tensor the model does not use is not read: here one whose storage record is missing entirely."""
    import altclip_np
    src, state = tiny_state
    d = torch_dir(tmp_path / "m", state, extra={"unused.buffer": ("gone", "FloatStorage", 4, 0, (4,), (1,))},
                  config_from=src)
    with zipfile.ZipFile(d / "pytorch_model.bin") as z:
        assert "archive/data/gone" not in z.namelist()
    with pytest.raises(ValueError, match="storage record archive/data/gone is missing"):
        altclip_np.AltCLIPModel.from_pretrained(d)  # the record is checked when the pickle names it...
    d2 = torch_dir(tmp_path / "m2", state, extra={"unused.buffer": ("u", "FloatStorage", 4, 0, (4,), (0,))},
                   storages_extra={"u": bytes(16)}, config_from=src)
    model = altclip_np.AltCLIPModel.from_pretrained(d2)  # ...but an aliasing tensor nobody asks for is ignored
    ref = altclip_np.AltCLIPModel.from_pretrained(src)
    assert all(np.array_equal(model.weights[k], ref.weights[k]) for k in ref.weights)


# ---- found by fuzzing ----

def test_pickle_claiming_huge_bytes(tmp_path):
    """torch target: a BINBYTES opcode claiming 1.9 GB in a 300-byte data.pkl. CPython's unpickler allocates
    the claimed size before reading (a MemoryError under the cap): a corrupt-file error."""
    path = tmp_path / "pytorch_model.bin"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", b"\x80\x02}X\x01\x00\x00\x00wB" + (1903437169).to_bytes(4, "little") + b"x" * 200)
    results, _ = run_limited("[outcome(lambda: torch_pickle.load_torch_checkpoint(sys.argv[1]))]", args=(path,))
    assert results[0]["error"] == "CheckpointError" and "corrupt data.pkl" in results[0]["message"], results


@pytest.mark.parametrize("opcode", [b"]", b"}", b"\x8f", b"(\x91"])  # empty list, dict, set; frozenset
def test_amplifying_pickle_at_the_size_cap(tmp_path, opcode):
    """A data.pkl of 768 KiB (the cap) of one-object opcodes builds ~790k objects: a clear error within the
    256 MiB headroom (observed peak-RSS rise 60-185 MiB); a byte more and it is refused unread."""
    n = ((768 << 10) - 5) // len(opcode)
    for extra, match in ((0, "plain state dict"), (len(opcode), "more than the 786432 it can need")):
        path = tmp_path / f"amp{extra}.bin"
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("archive/data.pkl", b"\x80\x04(" + opcode * (n + (extra > 0)) + b"l.")
        assert path.stat().st_size < 20_000
        results, grew = run_limited("[outcome(lambda: torch_pickle.load_torch_checkpoint(sys.argv[1]) and None)]",
                                    args=(path,))
        assert results[0]["error"] == "CheckpointError" and match in results[0]["message"], results
        print(f"{opcode!r} x {n}: peak RSS rise {grew:.0f} MiB")


def test_png_chunk_claiming_two_gigabytes(tmp_path):
    """image target: a 12 x 9 PNG whose IDAT chunk claims 2 GiB. Pillow reads the claimed length at the end of
    decoding, and a file read allocates what is asked: a MemoryError under the cap with Pillow alone, not with
    load_image (its file never hands out more than it holds)."""
    from PIL import Image
    buf = __import__("io").BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (12, 9, 3), dtype=np.uint8)).save(buf, "PNG")
    png = bytearray(buf.getvalue())
    at = png.index(b"IDAT") - 4
    png[at:at + 4] = (0x7FFFFF00).to_bytes(4, "big")
    path = tmp_path / "lying.png"
    path.write_bytes(bytes(png))
    results, _ = run_limited("[outcome(lambda: PIL.Image.open(sys.argv[1]).convert('RGB') and None), "
                             " outcome(lambda: load_image(sys.argv[1]).size)]", setup="import PIL.Image", args=(path,))
    pillow, ours = results
    assert pillow["ok"] or pillow["error"] == "MemoryError"  # MemoryError here with Pillow 13 on CPython 3.11
    assert ours["ok"] and ours["value"] == [9, 12]


def test_blank_runs_across_chunks(sp_dir):
    """Blank runs are squeezed in 64K-character chunks cut before a non-blank character: runs of spaces,
    ideographic spaces, tabs, NULs and zero-width spaces around and across chunk ends give transformers' ids."""
    transformers = pytest.importorskip("transformers")
    from altclip_np.tokenizer import XLMRobertaTokenizer
    ours = XLMRobertaTokenizer(sp_dir / "sentencepiece.bpe.model")
    ref = transformers.XLMRobertaTokenizer.from_pretrained(sp_dir)
    for run in (" ", "\u3000\t", "\x00", "\u200b", " \u0301", "\r\n"):
        line = "ab " * 21843 + run * 70000 + "é x" + run * 3 + "\u0600 " * 5 + "y"
        assert ours(line)["input_ids"] == ref(line)["input_ids"], repr(run)
        assert ours(line, truncation=True, max_length=64)["input_ids"] == \
            ref(line, truncation=True, max_length=64)["input_ids"], repr(run)
