"""pytorch_model.bin without torch: bit-exact tensors, refused pickles, clear errors on damaged files.

Checkpoints are written here with torch/transformers; they are read back in a subprocess where
`import torch` fails, and compared bit for bit with what torch holds.
"""
import json
import os
import pickle
import subprocess
import sys
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from altclip_np.torch_pickle import CheckpointError, UnsafeCheckpointError, load_torch_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIX = np.arange(6, dtype=np.float32).tobytes()

# Prepended to every subprocess: any import of torch or transformers fails.
NO_TORCH = """
import sys
class _NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, _NoTorch())
"""


def run_without_torch(script, *args, timeout=300):
    code = NO_TORCH + script + "\nassert 'torch' not in sys.modules and 'transformers' not in sys.modules\n"
    proc = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def tiny_config():
    return transformers.AltCLIPConfig(
        text_config=dict(vocab_size=120, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         intermediate_size=37, max_position_embeddings=64, project_dim=24, pad_token_id=1,
                         bos_token_id=0, eos_token_id=2),
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           image_size=32, patch_size=8),
        projection_dim=16)


def official_spelling(sd):
    """Key names and buffers as in BAAI/AltCLIP's pytorch_model.bin (transformers 4 era)."""
    out = OrderedDict((k.replace("roberta.encoder.layers.", "roberta.encoder.layer."), v.clone())
                      for k, v in sd.items())
    out["text_model.roberta.embeddings.position_ids"] = torch.arange(64).expand(1, -1)  # strided, int64
    out["vision_model.embeddings.position_ids"] = torch.arange(17).unsqueeze(0)
    return out


def expected(sd):  # what altclip_np must return: bfloat16 widened to float32 (exact), all contiguous
    return {k: (v.float() if v.dtype == torch.bfloat16 else v).detach().contiguous().numpy() for k, v in sd.items()}


def special_tensors():
    base = torch.randn(6, 5)
    half = torch.randn(4, 6).half()
    return OrderedDict([
        ("transposed", torch.randn(5, 3).t()),
        ("stepped", torch.randn(20)[1::3]),
        ("shared_a", base), ("shared_b", base[2:, 1:4]), ("shared_c", base.view(-1)[7:19]),  # one storage
        ("half_strided", half[:, ::2]), ("bf16_t", torch.randn(3, 4).bfloat16().t()),
        ("int64", torch.arange(-5, 5)), ("int32", torch.arange(4, dtype=torch.int32)), ("bool", torch.rand(7) > .5),
        ("uint8", torch.arange(9, dtype=torch.uint8)), ("float64", torch.randn(3, dtype=torch.float64)),
        ("scalar", torch.tensor(1.5)), ("empty", torch.zeros(0, 4)),
        ("param", torch.nn.Parameter(torch.randn(3))), ("expanded_row", torch.randn(1, 4).expand(1, 4)),
    ])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("torch_ckpts")
    torch.manual_seed(0)
    model = transformers.AltCLIPModel(tiny_config()).eval()
    sd = official_spelling(model.state_dict())
    variants = {"fp32": sd, "fp16": OrderedDict((k, v.half() if v.is_floating_point() else v) for k, v in sd.items()),
                "bf16": OrderedDict((k, v.bfloat16() if v.is_floating_point() else v) for k, v in sd.items())}
    files = {}
    for name, state in variants.items():
        (root / name).mkdir()
        model.config.to_json_file(root / name / "config.json")
        torch.save(state, root / name / "pytorch_model.bin")
        files[name] = root / name / "pytorch_model.bin"
    # hand-sharded in three parts, as transformers 4 wrote them
    shard_dir = root / "sharded"
    shard_dir.mkdir()
    model.config.to_json_file(shard_dir / "config.json")
    keys, weight_map = list(sd), {}
    for i, part in enumerate(np.array_split(np.arange(len(keys)), 3), 1):
        name = f"pytorch_model-{i:05d}-of-00003.bin"
        torch.save(OrderedDict((keys[j], sd[keys[j]]) for j in part), shard_dir / name)
        weight_map.update({keys[j]: name for j in part})
    (shard_dir / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    files["sharded"] = shard_dir / "pytorch_model.bin.index.json"
    special = special_tensors()
    torch.save(special, root / "special.bin")
    files["special"] = root / "special.bin"
    variants.update(sharded=sd, special=special)
    for name, state in variants.items():
        np.savez(root / f"{name}.npz", **expected(state))
    return root, files, model


CHECK = """
import json, sys
import numpy as np
from altclip_np.torch_pickle import load_torch_checkpoint
root, names = sys.argv[1], sys.argv[2:]
report = {}
for name, path in zip(names[::2], names[1::2]):
    got, want = load_torch_checkpoint(path), np.load(f"{root}/{name}.npz")
    bad = [k for k in want.files if k not in got or got[k].dtype != want[k].dtype
           or got[k].shape != want[k].shape or got[k].tobytes() != want[k].tobytes()]
    report[name] = {"bad": bad + sorted(set(got) - set(want.files)), "n": len(got),
                    "mmapped": sum(not a.flags.owndata and not a.flags.writeable for a in got.values()),
                    "contiguous": all(a.flags.c_contiguous for a in got.values())}
try:
    import torch
    report["torch_importable"] = True
except ImportError:
    report["torch_importable"] = False
print(json.dumps(report))
"""


@pytest.fixture(scope="module")
def torchless_report(ckpts):
    root, files, _ = ckpts
    return run_without_torch(CHECK, root, *[x for name, path in files.items() for x in (name, path)])


@pytest.mark.parametrize("variant", ["fp32", "fp16", "bf16", "sharded", "special"])
def test_tensors_equal_torch_bit_for_bit(torchless_report, variant):
    assert torchless_report["torch_importable"] is False
    result = torchless_report[variant]
    assert result["bad"] == [] and result["n"] > 10 and result["contiguous"]
    if variant in ("fp32", "fp16", "sharded"):
        assert result["mmapped"] >= result["n"] - 3  # only the strided position_ids are copied


def test_deflated_storages_are_read(ckpts, tmp_path):
    """A checkpoint re-zipped with compression cannot be memory-mapped but still loads."""
    root, files, _ = ckpts
    src, dst = zipfile.ZipFile(files["special"]), tmp_path / "deflated.bin"
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED) as out:
        for info in src.infolist():
            out.writestr(info.filename, src.read(info))
    got, want = load_torch_checkpoint(dst), np.load(root / "special.npz")
    assert all(got[k].tobytes() == want[k].tobytes() and got[k].dtype == want[k].dtype for k in want.files)


def test_big_endian_checkpoint(tmp_path):
    """torch writes a `byteorder` record; big-endian storages are swapped to native order."""
    path = write_fake_checkpoint(tmp_path / "be.bin", {"w": ("0", "FloatStorage", 6, 0, (2, 3), (3, 1))},
                                 {"0": np.arange(6, dtype=">f4").tobytes()}, byteorder=b"big")
    got = load_torch_checkpoint(path)["w"]
    assert got.dtype == np.float32 and got.dtype.isnative and got.tolist() == [[0, 1, 2], [3, 4, 5]]


# ---- the model: a pytorch_model.bin gives transformers' outputs ----

MODEL = """
import json, sys
import numpy as np
import altclip_np
root = sys.argv[1]
inputs = np.load(f"{root}/inputs.npz")
report = {}
for name in sys.argv[2:]:
    if name == "hub":  # the fp32 checkpoint in a fake HF cache, HF_HUB_OFFLINE=1
        model = altclip_np.AltCLIPModel.from_pretrained("BAAI/AltCLIP-tiny", cache_dir=f"{root}/hub")
    else:
        model = altclip_np.AltCLIPModel.from_pretrained(f"{root}/{name}")
    out = model(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                attention_mask=inputs["attention_mask"])
    want = np.load(f"{root}/{'fp32' if name == 'hub' else name}_out.npz")
    report[name] = {k: float(np.abs(np.asarray(getattr(out, k)) - want[k]).max()) for k in want.files}
print(json.dumps(report))
"""


def test_model_outputs_match_transformers(ckpts):
    root, files, model = ckpts
    rng = np.random.default_rng(0)
    ids = rng.integers(3, 120, (2, 7))
    ids[:, 0], ids[1, 5:] = 0, 1
    mask = (ids != 1).astype(np.int64)
    pixels = rng.standard_normal((2, 3, 32, 32)).astype(np.float32)
    np.savez(root / "inputs.npz", input_ids=ids, attention_mask=mask, pixel_values=pixels)
    names = ["fp32", "sharded", "bf16"]
    for name in names:  # transformers itself loads each checkpoint (bf16 as float32, like altclip_np)
        ref = transformers.AltCLIPModel.from_pretrained(root / name, dtype=torch.float32).eval()
        with torch.no_grad():
            out = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                      pixel_values=torch.tensor(pixels))
        np.savez(root / f"{name}_out.npz", **{k: getattr(out, k).numpy() for k in
                                              ("logits_per_image", "text_embeds", "image_embeds")})
    snapshot = root / "hub" / "models--BAAI--AltCLIP-tiny" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    for f in ("config.json", "pytorch_model.bin"):
        (snapshot / f).symlink_to(root / "fp32" / f)
    report = run_without_torch(MODEL, root, *names, "hub")
    print(report)
    for name in names + ["hub"]:
        assert max(report[name].values()) <= 1e-5, (name, report[name])


# ---- restricted unpickler: payloads are refused and never run ----

class Payload:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def zip_checkpoint(path, pkl, records=(), top="archive"):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{top}/data.pkl", pkl)
        z.writestr(f"{top}/byteorder", "little")
        for name, data in dict(records).items():
            z.writestr(f"{top}/data/{name}", data)
    return path


def payloads(marker):
    import subprocess as sp
    cmd = f"touch {marker}"
    evil = {
        "os.system": Payload(os.system, cmd),
        "builtins.eval": Payload(eval, f"open({str(marker)!r}, 'w').close()"),
        "subprocess.Popen": Payload(sp.Popen, ["touch", str(marker)]),
        "builtins.exec": Payload(exec, f"open({str(marker)!r}, 'w').close()"),
    }
    blobs = {f"{name}/proto{p}": pickle.dumps(obj, protocol=p) for name, obj in evil.items() for p in (0, 2, 5)}
    blobs["os.system/inside-state-dict"] = pickle.dumps(
        OrderedDict(weight=evil["os.system"]), protocol=2)
    blobs["os.system/INST"] = f"(S'{cmd}'\nios\nsystem\n.".encode()
    blobs["builtins.getattr/chain"] = pickle.dumps(Payload(getattr, OrderedDict, "__init__"), protocol=2)
    return blobs


@pytest.mark.parametrize("name", list(payloads(Path("marker"))))
def test_malicious_pickles_are_refused(tmp_path, name):
    marker = tmp_path / "pwned"
    blob = payloads(marker)[name]
    path = zip_checkpoint(tmp_path / "pytorch_model.bin", blob)
    with pytest.raises(UnsafeCheckpointError) as err:
        load_torch_checkpoint(path)
    func = name.split("/")[0].split(".")[1]
    assert f".{func}'" in str(err.value) and str(path) in str(err.value) and "refusing" in str(err.value)
    assert isinstance(err.value, pickle.UnpicklingError) and isinstance(err.value, ValueError)
    assert not marker.exists()


def test_payload_saved_by_torch_save_is_refused(tmp_path):
    """A real torch.save checkpoint with a __reduce__ payload next to genuine tensors."""
    marker = tmp_path / "pwned"
    path = tmp_path / "pytorch_model.bin"
    torch.save({"weight": torch.ones(3), "evil": Payload(os.system, f"touch {marker}")}, path)
    with pytest.raises(UnsafeCheckpointError, match=r"'(posix|os)\.system'"):
        load_torch_checkpoint(path)
    assert not marker.exists()


def test_copyreg_extension_goes_through_the_allow_list(tmp_path):
    import copyreg
    marker = tmp_path / "pwned"
    copyreg.add_extension("posix", "system", 0x7A11)
    try:
        blob = pickle.dumps(Payload(os.system, f"touch {marker}"), protocol=2)
        assert pickle.EXT2 in blob
        with pytest.raises(UnsafeCheckpointError, match="system"):
            load_torch_checkpoint(zip_checkpoint(tmp_path / "m.bin", blob))
    finally:
        copyreg.remove_extension("posix", "system", 0x7A11)
    assert not marker.exists()


def assert_rejected(path, match=None):
    """Loading `path` fails with a CheckpointError (matching `match`) whose message names the file."""
    with pytest.raises(CheckpointError, match=match) as err:
        load_torch_checkpoint(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("blob, match", [
    (b"\x80\x02ctorch\nFloatStorage\n)R.", "corrupt data.pkl"),  # calling a storage type
    (b"\x80\x02]q\x00.", "plain state dict"),  # a list
    (b"\x80\x02}X\x01\x00\x00\x00aK\x01s.", "plain state dict"),  # an int where a tensor belongs
    (b"\x80\x02}X\x01\x00\x00\x00aX\x01\x00\x00\x00bQs.", "persistent id"),
    (b"garbage\xff\xfe", "corrupt data.pkl"),
    (b"\x80\x02}(" * 3, "corrupt data.pkl"),  # truncated pickle
])
def test_malformed_pickles(tmp_path, blob, match):
    path = zip_checkpoint(tmp_path / "m.bin", blob)
    assert_rejected(path, match)


# ---- damaged files ----

class FakeStorage:
    def __init__(self, key, kind, numel):
        self.key, self.kind, self.numel = key, kind, numel


class FakeTensor:
    def __init__(self, storage, offset, size, stride):
        self.args = storage, offset, size, stride

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (*self.args, False, OrderedDict())


class TorchLikePickler(pickle.Pickler):
    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            return "storage", getattr(torch, obj.kind), obj.key, "cpu", obj.numel
        return None


def write_fake_checkpoint(path, tensors, records, byteorder=b"little", top="archive"):
    """tensors: {name: (storage key, storage type, numel, offset, size, stride)} -> a torch-format zip."""
    import io
    storages, state = {}, OrderedDict()
    for name, (key, kind, numel, offset, size, stride) in tensors.items():
        storage = storages.setdefault(key, FakeStorage(key, kind, numel))
        state[name] = FakeTensor(storage, offset, size, stride)
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump(state)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{top}/data.pkl", buf.getvalue())
        z.writestr(f"{top}/byteorder", byteorder)
        z.writestr(f"{top}/version", "3\n")
        for key, data in records.items():
            z.writestr(f"{top}/data/{key}", data)
    return path


class StatefulTensor(FakeTensor):
    def __reduce__(self):
        return (*super().__reduce__(), {"array": "not an array"})  # a BUILD opcode on the tensor


def test_build_on_a_tensor_is_refused(tmp_path):
    import io
    buf = io.BytesIO()
    TorchLikePickler(buf, protocol=2).dump({"w": StatefulTensor(FakeStorage("0", "FloatStorage", 6), 0, (6,), (1,))})
    path = zip_checkpoint(tmp_path / "m.bin", buf.getvalue(), {"0": SIX})
    with pytest.raises(CheckpointError, match="set the state of a Tensor"):
        load_torch_checkpoint(path)


def test_fake_checkpoint_roundtrip(tmp_path):
    """The hand-made format is right (torch loads it), so the fault tests below test real faults."""
    path = write_fake_checkpoint(tmp_path / "ok.bin", {"w": ("0", "FloatStorage", 6, 1, (2, 2), (1, 2))},
                                 {"0": np.arange(6, dtype=np.float32).tobytes()}, top="weird_name")
    want = torch.load(path, weights_only=True)["w"].numpy()
    assert np.array_equal(load_torch_checkpoint(path)["w"], want) and want.tolist() == [[1, 3], [2, 4]]


@pytest.mark.parametrize("tensor, records, match", [
    (("0", "FloatStorage", 60, 0, (6,), (1,)), {"0": SIX}, "holds 24 bytes, the pickle expects 60"),
    (("0", "FloatStorage", 6, 0, (3, 3), (3, 1)), {"0": SIX}, "reaches element 8"),
    (("0", "FloatStorage", 6, 5, (2,), (1,)), {"0": SIX}, "reaches element 6"),
    (("0", "FloatStorage", 6, -1, (2,), (1,)), {"0": SIX}, "storage offset"),
    (("0", "FloatStorage", 6, 0, (2, 3), (3,)), {"0": SIX}, "differ in length"),
    (("0", "FloatStorage", 6, 0, (2, -3), (3, 1)), {"0": SIX}, "bad tensor size"),
    (("0", "FloatStorage", 6, 0, (6,), (1,)), {}, "storage record archive/data/0 is missing"),
    (("0", "HalfStorage", 6, 0, (6,), (1,)), {"0": SIX}, "holds 24 bytes, the pickle expects 6 x 2"),
])
def test_lying_headers_and_missing_records(tmp_path, tensor, records, match):
    path = write_fake_checkpoint(tmp_path / "bad.bin", {"w": tensor}, records)
    assert_rejected(path, match)


def test_central_directory_lies_about_size(ckpts, tmp_path):
    _, files, _ = ckpts
    blob = bytearray(files["special"].read_bytes())
    name = next(n for n in zipfile.ZipFile(files["special"]).namelist() if n.endswith("/data/0")).encode()
    pos = blob.index(b"PK\x01\x02")
    while blob[pos + 46: pos + 46 + len(name)] != name:  # walk the central directory to the record
        pos = blob.index(b"PK\x01\x02", pos + 4)
    blob[pos + 20: pos + 28] = (10**6).to_bytes(4, "little") * 2  # compressed and uncompressed sizes
    path = tmp_path / "lying.bin"
    path.write_bytes(bytes(blob))
    assert_rejected(path)


def test_local_header_inconsistent(ckpts, tmp_path):
    _, files, _ = ckpts
    zf = zipfile.ZipFile(files["special"])
    target = next(i for i in zf.infolist() if i.filename.endswith("/data/0"))
    blob = bytearray(files["special"].read_bytes())
    blob[target.header_offset + 26] += 1  # local name length off by one
    path = tmp_path / "lying.bin"
    path.write_bytes(bytes(blob))
    assert_rejected(path, "inconsistent")


@pytest.mark.parametrize("fraction", [0, 0.001, 0.1, 0.5, 0.9, 0.99, -1])
def test_truncated_checkpoints(ckpts, tmp_path, fraction):
    _, files, _ = ckpts
    blob = files["fp32"].read_bytes()
    cut = len(blob) - 1 if fraction == -1 else int(len(blob) * fraction)
    path = tmp_path / "pytorch_model.bin"
    path.write_bytes(blob[:cut])
    assert_rejected(path)


def test_flipped_byte_in_data_pkl(ckpts, tmp_path):
    _, files, _ = ckpts
    zf = zipfile.ZipFile(files["special"])
    info = next(i for i in zf.infolist() if i.filename.endswith("/data.pkl"))
    blob = bytearray(files["special"].read_bytes())
    blob[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # CRC no longer matches
    path = tmp_path / "flipped.bin"
    path.write_bytes(bytes(blob))
    assert_rejected(path, "data.pkl")


def test_legacy_and_foreign_formats(tmp_path):
    legacy = tmp_path / "legacy.bin"
    torch.save({"w": torch.ones(2)}, legacy, _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy"):
        load_torch_checkpoint(legacy)
    (tmp_path / "text.bin").write_text("hello")
    with pytest.raises(CheckpointError, match="not a PyTorch zip checkpoint"):
        load_torch_checkpoint(tmp_path / "text.bin")
    with zipfile.ZipFile(tmp_path / "two.bin", "w") as z:
        z.writestr("a/data.pkl", b"\x80\x02}.")
        z.writestr("b/data.pkl", b"\x80\x02}.")
    with pytest.raises(CheckpointError, match="2 top-level data.pkl"):
        load_torch_checkpoint(tmp_path / "two.bin")


def test_shard_index_faults(ckpts, tmp_path):
    _, files, _ = ckpts
    index = json.loads(files["sharded"].read_text())
    for name in set(index["weight_map"].values()):
        (tmp_path / name).write_bytes((files["sharded"].parent / name).read_bytes())
    path = tmp_path / "pytorch_model.bin.index.json"
    cases = [({**index["weight_map"], "extra.weight": "pytorch_model-00001-of-00003.bin"}, "lacks tensors"),
             ({"w": "../escape.bin"}, "leaves the checkpoint directory"),
             ({"w": "pytorch_model-00009-of-00009.bin"}, "lists shards that are not in")]
    for weight_map, match in cases:
        path.write_text(json.dumps({"weight_map": weight_map}))
        with pytest.raises((CheckpointError, OSError), match=match):
            load_torch_checkpoint(path)
    path.write_text("{not json")
    with pytest.raises(CheckpointError, match="not a valid shard index"):
        load_torch_checkpoint(path)


# ---- tools/convert_checkpoint.py ----

CONVERT = """
import json, sys
import numpy as np
sys.path.insert(0, "tools")
from convert_checkpoint import main
from altclip_np.weights import open_safetensors
root, out = sys.argv[1], sys.argv[2]
report = {}
for name, limit in [("fp32", "5GB"), ("sharded", "20KB"), ("fp16", "5GB")]:
    main([f"{root}/{name}", f"{out}/{name}", "--max-shard-size", limit])
    want = np.load(f"{root}/{name}.npz")
    files = open_safetensors(f"{out}/{name}")
    got = {k: f.get(k) for k, f in files.items()}
    report[name] = {"bad": [k for k in want.files if not np.array_equal(got[k], want[k].astype(got[k].dtype))
                            or (want[k].dtype == np.float32 and got[k].tobytes() != want[k].tobytes())],
                    "shards": len({id(f) for f in files.values()}),
                    "files": sorted(p.name for p in __import__("pathlib").Path(f"{out}/{name}").iterdir())}
print(json.dumps(report))
"""


def test_convert_checkpoint(ckpts, tmp_path):
    root, _, _ = ckpts
    report = run_without_torch(CONVERT, root, tmp_path)
    assert all(r["bad"] == [] for r in report.values()), report
    assert report["fp32"]["files"] == ["config.json", "model.safetensors"]
    assert report["sharded"]["shards"] > 1 and "model.safetensors.index.json" in report["sharded"]["files"]
    # transformers reads the sharded conversion too
    model = transformers.AltCLIPModel.from_pretrained(tmp_path / "sharded")
    assert torch.equal(model.logit_scale.detach(), torch.from_numpy(np.load(root / "sharded.npz")["logit_scale"]))


# ---- damaged safetensors files (read by altclip_np.weights) ----

@pytest.mark.parametrize("damage", ["cut:4", "cut:12", "cut:0.5", "cut:-1", "huge_header", "lying_offsets",
                                    "garbage_json"])
def test_damaged_safetensors(tmp_path, damage):
    from safetensors.numpy import save_file
    from altclip_np.weights import open_safetensors
    path = tmp_path / "model.safetensors"
    save_file({"a": np.ones((4, 4), np.float32), "b": np.arange(3)}, str(path))
    blob = bytearray(path.read_bytes())
    n = int.from_bytes(blob[:8], "little")
    kind, _, arg = damage.partition(":")
    if kind == "cut":
        x = float(arg)
        blob = blob[:len(blob) - 1 if x == -1 else int(x) if x >= 1 else int(len(blob) * x)]
    elif kind == "huge_header":
        blob[:8] = (10**12).to_bytes(8, "little")
    elif kind == "lying_offsets":
        header = json.loads(blob[8:8 + n])
        header["a"]["data_offsets"][1] += 10**6
        text = json.dumps(header).encode().ljust(n)
        blob = (len(text).to_bytes(8, "little")) + text + blob[8 + n:]
    else:
        blob[8:8 + n] = b"{" * n
    path.write_bytes(bytes(blob))
    with pytest.raises(OSError) as err:
        open_safetensors(tmp_path)
    assert str(path) in str(err.value)
