"""Hub resolution, offline only: a fake Hugging Face cache (models--org--name/{blobs,refs,snapshots})."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from altclip_np.hub import PROCESSOR_FILES, find_weights, resolve_pretrained, resolve_weights

REPO = "BAAI/AltCLIP-tiny"
MAIN, PR7 = "a" * 40, "b" * 40
NO_NETWORK = {"HF_HUB_OFFLINE": "1", "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
              "NO_PROXY": ""}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for k, v in NO_NETWORK.items():
        monkeypatch.setenv(k, v)


def add_snapshot(cache, repo, commit, files, refs=()):
    """Lay files out as huggingface_hub does: content-addressed blobs, symlinked from the snapshot."""
    folder = Path(cache) / ("models--" + repo.replace("/", "--"))
    for name, data in files.items():
        blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = folder / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (folder / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (folder / "refs" / ref).write_text(commit)
    return folder / "snapshots" / commit


CONFIG = json.dumps({"model_type": "altclip"}).encode()


@pytest.fixture
def cache(tmp_path):
    """main: pytorch_model.bin only (like BAAI/AltCLIP); refs/pr/7: model.safetensors too."""
    cache = tmp_path / "hub"
    processor = {name: b"x" for name in ("tokenizer_config.json", "sentencepiece.bpe.model",
                                         "preprocessor_config.json")}
    add_snapshot(cache, REPO, MAIN, {"config.json": CONFIG, "pytorch_model.bin": b"torch", **processor}, ["main"])
    add_snapshot(cache, REPO, PR7, {"config.json": CONFIG, "pytorch_model.bin": b"torch",
                                    "model.safetensors": b"st", **processor}, ["refs/pr/7"])
    return cache


def test_local_directory_is_used_as_is(tmp_path):
    (tmp_path / "config.json").write_bytes(CONFIG)
    (tmp_path / "pytorch_model.bin").write_bytes(b"torch")
    assert resolve_pretrained(tmp_path, ["config.json"]) == tmp_path
    assert resolve_weights(str(tmp_path)) == (tmp_path, "torch", tmp_path / "pytorch_model.bin")


def test_preference_order(tmp_path):
    def index(name, shards):
        (tmp_path / name).write_text(json.dumps({"weight_map": {f"k{i}": s for i, s in enumerate(shards)}}))
        for s in shards:
            (tmp_path / s).write_bytes(b"")
    index("pytorch_model.bin.index.json", ["pytorch_model-00001-of-00002.bin", "pytorch_model-00002-of-00002.bin"])
    assert find_weights(tmp_path) == ("torch", tmp_path / "pytorch_model.bin.index.json")
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    assert find_weights(tmp_path) == ("torch", tmp_path / "pytorch_model.bin")
    index("model.safetensors.index.json", ["model-00001-of-00001.safetensors"])
    assert find_weights(tmp_path) == ("safetensors", tmp_path / "model.safetensors.index.json")
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert find_weights(tmp_path) == ("safetensors", tmp_path / "model.safetensors")
    assert find_weights(tmp_path, kinds=("torch",)) == ("torch", tmp_path / "pytorch_model.bin")


def test_cached_repo_offline(cache):
    directory, kind, weights = resolve_weights(REPO, cache_dir=cache, local_files_only=True)
    assert (kind, weights.name) == ("torch", "pytorch_model.bin") and directory.name == MAIN
    assert (directory / "config.json").read_bytes() == CONFIG
    directory, kind, weights = resolve_weights(REPO, revision="refs/pr/7", cache_dir=cache, local_files_only=True,
                                               extra_patterns=PROCESSOR_FILES)
    assert (kind, weights.name, directory.name) == ("safetensors", "model.safetensors", PR7)
    assert resolve_weights(REPO, revision=PR7, cache_dir=cache, local_files_only=True)[1] == "safetensors"


def test_hf_hub_offline_env_and_default_cache(cache):
    """HF_HUB_OFFLINE=1 with the cache found through HF_HUB_CACHE (no cache_dir argument)."""
    code = ("import sys, json; from altclip_np.hub import resolve_weights\n"
            "d, kind, w = resolve_weights(sys.argv[1], revision=sys.argv[2])\n"
            "print(json.dumps([str(d), kind, w.name]))")
    env = {**os.environ, **NO_NETWORK, "HF_HUB_CACHE": str(cache)}
    for revision, want in [("main", "torch"), ("refs/pr/7", "safetensors")]:
        proc = subprocess.run([sys.executable, "-c", code, REPO, revision], env=env, capture_output=True,
                              text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        directory, kind, name = json.loads(proc.stdout)
        assert kind == want and Path(directory).parent.parent.name == "models--BAAI--AltCLIP-tiny"


@pytest.mark.parametrize("name, revision, match", [
    ("BAAI/not-cached", None, "'BAAI/not-cached' is not a local directory and could not be fetched"),
    (REPO, "v9", "revision v9"),
    ("/no/such/dir/here", None, "neither a local directory nor a valid Hub repo id"),
    ("bad name!!", None, "neither a local directory nor a valid Hub repo id"),
])
def test_unresolvable_names(cache, name, revision, match):
    with pytest.raises(OSError, match=match):
        resolve_weights(name, revision=revision, cache_dir=cache, local_files_only=True)


def test_missing_weights(cache, tmp_path):
    add_snapshot(cache, "org/config-only", "c" * 40, {"config.json": CONFIG}, ["main"])
    with pytest.raises(OSError, match=r"no model.safetensors, model.safetensors.index.json, pytorch_model.bin "
                                     r"or pytorch_model.bin.index.json in .*snapshots/c{40}"):
        resolve_weights("org/config-only", cache_dir=cache, local_files_only=True)
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"w": "model-1.safetensors"}}))
    with pytest.raises(OSError, match="lists shards that are not in .*: model-1.safetensors"):
        resolve_weights(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{broken")
    with pytest.raises(OSError, match="cannot read shard index"):
        resolve_weights(tmp_path)
    with pytest.raises(OSError, match="is a file"):
        resolve_weights(tmp_path / "model.safetensors.index.json")


@pytest.mark.parametrize("remote, want_kind, calls", [
    (["config.json", "pytorch_model.bin", "tokenizer.json"], "torch", 2),
    (["config.json", "pytorch_model.bin", "model.safetensors"], "safetensors", 1),
    (["config.json", "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors",
      "model.safetensors.index.json", "pytorch_model.bin"], "safetensors", 1),
])
def test_online_fetches_only_the_needed_weights(monkeypatch, tmp_path, remote, want_kind, calls):
    """snapshot_download is replaced by a fake Hub: safetensors are preferred, the .bin is never fetched then."""
    import fnmatch
    import huggingface_hub
    seen = []

    def fake_snapshot_download(repo_id, revision=None, cache_dir=None, local_files_only=False, allow_patterns=None):
        seen.append(allow_patterns)
        snapshot = tmp_path / "snapshot"
        snapshot.mkdir(exist_ok=True)
        for name in remote:
            if any(fnmatch.fnmatch(name, p) for p in allow_patterns):
                shards = {"w1": "model-00001-of-00002.safetensors", "w2": "model-00002-of-00002.safetensors"}
                (snapshot / name).write_text(json.dumps({"weight_map": shards}) if name.endswith(".json") else "")
        return str(snapshot)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    directory, kind, weights = resolve_weights("org/model", extra_patterns=["tokenizer.json"])
    assert kind == want_kind and len(seen) == calls
    fetched = {p.name for p in directory.iterdir()}
    assert ("pytorch_model.bin" in fetched) == (want_kind == "torch")
    assert "config.json" in fetched and ("tokenizer.json" in fetched) == ("tokenizer.json" in remote)
