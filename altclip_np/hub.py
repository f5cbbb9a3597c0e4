"""Find a checkpoint's files: a local directory, or a Hugging Face Hub repo id fetched into the standard cache.

Hub repos are fetched with `huggingface_hub.snapshot_download`, restricted to the files we need, into
the standard cache (HF_HUB_CACHE / cache_dir), so a model fetched once also works with HF_HUB_OFFLINE=1
or local_files_only=True. Weights: safetensors when the revision has them, else pytorch_model.bin.
"""
import json
from pathlib import Path, PurePosixPath

CONFIG_FILES = ["config.json"]
PROCESSOR_FILES = ["preprocessor_config.json", "processor_config.json", "tokenizer_config.json",
                   "special_tokens_map.json", "tokenizer.json", "sentencepiece.bpe.model"]
# Single file, index, shards (transformers' names), in order of preference.
SAFETENSORS_FILES = ["model.safetensors", "model.safetensors.index.json", "model-*-of-*.safetensors"]
TORCH_FILES = ["pytorch_model.bin", "pytorch_model.bin.index.json", "pytorch_model-*-of-*.bin"]


def resolve_pretrained(name_or_path, allow_patterns, revision=None, cache_dir=None, local_files_only=False):
    """Return a local directory holding the files of `name_or_path` that match `allow_patterns`.

    A local directory is returned as is (whatever it holds); otherwise `name_or_path` is a Hub repo id
    whose matching files are fetched (or, offline, found) in the cache. Raises OSError.
    """
    path = Path(name_or_path)
    if path.is_dir():
        return path
    if path.exists():
        raise OSError(f"{name_or_path!r} is a file; pass the directory holding config.json and the weights")
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id
    try:
        validate_repo_id(str(name_or_path))
    except HFValidationError as e:
        raise OSError(f"{name_or_path!r} is neither a local directory nor a valid Hub repo id") from e
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, cache_dir=cache_dir,
                                      local_files_only=local_files_only, allow_patterns=list(allow_patterns)))
    except Exception as e:
        partial = getattr(e, "snapshot_path", None)  # IncompleteSnapshotError: offline, some files cached
        if partial is not None and Path(partial).is_dir():
            return Path(partial)
        raise OSError(f"{name_or_path!r} is not a local directory and could not be fetched from the Hub "
                      f"(revision {revision or 'main'}): {type(e).__name__}: {e}") from e


MAX_INDEX_BYTES = 64 << 20  # a shard index names each tensor once: ~100 KB for BAAI/AltCLIP


def _no_duplicate_keys(pairs):
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise ValueError(f"key {dup[:80]!r} appears twice")
    return dict(pairs)


def read_weight_map(index, error=OSError):
    """{tensor key: shard name} of a `*.index.json`, checked: every shard a plain relative name inside the
    index's directory, each shard file spelled one way, and present. Raises `error` (or OSError for a
    missing shard) saying what is wrong."""
    index = Path(index)
    try:
        if index.stat().st_size > MAX_INDEX_BYTES:
            raise ValueError(f"{index.stat().st_size} bytes, more than the {MAX_INDEX_BYTES} a shard index needs")
        weight_map = json.loads(index.read_bytes().decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        weight_map = weight_map["weight_map"]
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ValueError("weight_map is not an object of shard file names")
    except FileNotFoundError:
        raise
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as e:
        raise error(f"cannot read shard index {index}: not a valid shard index: {type(e).__name__}: {e}") from None
    spelled = {}
    for name in sorted(set(weight_map.values())):
        rel = PurePosixPath(name)
        if not name or rel.is_absolute() or ".." in rel.parts or "\\" in name or ":" in name:
            raise error(f"{index}: shard name {name[:200]!r} leaves the checkpoint directory")
        if spelled.setdefault(rel, name) != name:
            raise error(f"{index}: shard {rel} is listed twice, as {spelled[rel]!r} and {name!r}")
    missing = sorted(name for name in spelled.values() if not (index.parent / name).is_file())
    if missing:
        raise OSError(f"{index} lists shards that are not in {index.parent}: {', '.join(missing[:3])}")
    return weight_map


def _index_ready(index):
    """True when every shard an index names is present next to it (a partial cache is not usable)."""
    read_weight_map(index)
    return True


def find_weights(directory, kinds=("safetensors", "torch")):
    """Return (kind, file) for the preferred weights in `directory`, or None.

    kind is "safetensors" or "torch"; file is the single weights file or the shard index.
    """
    directory = Path(directory)
    for kind, names in (("safetensors", SAFETENSORS_FILES[:2]), ("torch", TORCH_FILES[:2])):
        if kind not in kinds:
            continue
        single, index = (directory / name for name in names)
        if single.is_file():
            return kind, single
        if index.is_file() and _index_ready(index):
            return kind, index
    return None


def resolve_weights(name_or_path, revision=None, cache_dir=None, local_files_only=False, extra_patterns=()):
    """Locate config + weights (+ files matching `extra_patterns`) of a local dir or Hub repo.

    Returns (directory, kind, weights_file): kind "safetensors" or "torch"; weights_file is
    model.safetensors / pytorch_model.bin or the matching *.index.json. Raises OSError.
    """
    common = CONFIG_FILES + list(extra_patterns)
    args = dict(revision=revision, cache_dir=cache_dir, local_files_only=local_files_only)
    directory = resolve_pretrained(name_or_path, common + SAFETENSORS_FILES, **args)
    found = find_weights(directory)
    if found is None and not Path(name_or_path).is_dir():
        # The revision has no safetensors: fetch the torch weights instead (never both).
        directory = resolve_pretrained(name_or_path, common + TORCH_FILES, **args)
        found = find_weights(directory)
    if found is None:
        names = ", ".join(SAFETENSORS_FILES[:2] + TORCH_FILES[:1]) + " or " + TORCH_FILES[1]
        raise OSError(f"no {names} in {directory}")
    return (directory, *found)
