"""Convert an AltCLIP checkpoint (local dir or Hub repo id; safetensors or pytorch_model.bin, sharded or
not) into a directory with model.safetensors (sharded above --max-shard-size, with a transformers-style
model.safetensors.index.json) plus config.json and the processor files, so later loads are memory-mapped.

    python tools/convert_checkpoint.py BAAI/AltCLIP-m18 ./altclip-m18 [--max-shard-size 2GB]

Needs no torch. bfloat16 tensors become float32 (NumPy has no bfloat16); float16 ones stay float16 from
a pytorch_model.bin (safetensors sources are read through altclip_np.weights, which widens them).
"""
import argparse
import json
import re
import shutil
import sys
from pathlib import Path

from safetensors.numpy import save_file

from altclip_np.hub import CONFIG_FILES, PROCESSOR_FILES, resolve_weights
from altclip_np.torch_pickle import load_torch_checkpoint
from altclip_np.weights import open_safetensors

UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_size(text):
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]I?B|B)?\s*", text.upper())
    if not match:
        raise argparse.ArgumentTypeError(f"bad size {text!r} (e.g. 5GB, 500MB)")
    return int(float(match[1]) * UNITS[match[2] or ""])


def read_state_dict(directory, kind, weights_file):
    if kind == "torch":
        return load_torch_checkpoint(weights_file)
    return {k: f.get(k) for k, f in open_safetensors(directory).items()}


def plan_shards(state, max_bytes):
    """Split keys (in order) into shards of at most max_bytes each (a bigger tensor gets its own)."""
    shards, current, size = [], [], 0
    for key, array in state.items():
        if current and size + array.nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(key)
        size += array.nbytes
    return shards + [current] if current else shards


def convert(src, dst, max_shard_size=5 * 10**9, revision=None, local_files_only=False):
    directory, kind, weights_file = resolve_weights(src, revision=revision, local_files_only=local_files_only,
                                                    extra_patterns=PROCESSOR_FILES)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    if any(dst.glob("model*.safetensors*")):
        raise FileExistsError(f"{dst} already holds safetensors weights; pick an empty directory")
    state = read_state_dict(directory, kind, weights_file)
    shards = plan_shards(state, max_shard_size)
    metadata = {"format": "pt"}  # transformers refuses safetensors files without it
    if len(shards) == 1:
        save_file(state, str(dst / "model.safetensors"), metadata=metadata)
    else:
        weight_map = {}
        for i, keys in enumerate(shards, 1):
            name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file({k: state[k] for k in keys}, str(dst / name), metadata=metadata)
            weight_map.update(dict.fromkeys(keys, name))
        index = {"metadata": {"total_size": sum(a.nbytes for a in state.values())}, "weight_map": weight_map}
        (dst / "model.safetensors.index.json").write_text(json.dumps(index, indent=2))
    for name in CONFIG_FILES + PROCESSOR_FILES:
        if (directory / name).is_file():
            shutil.copyfile(directory / name, dst / name)
    return dst, len(shards)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="checkpoint directory or Hub repo id")
    parser.add_argument("dst", help="output directory")
    parser.add_argument("--max-shard-size", type=parse_size, default="5GB")
    parser.add_argument("--revision")
    parser.add_argument("--local-files-only", action="store_true")
    args = parser.parse_args(argv)
    try:
        dst, n = convert(args.src, args.dst, args.max_shard_size, args.revision, args.local_files_only)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {e}")
    print(f"wrote {n} safetensors shard(s) to {dst}")


if __name__ == "__main__":
    main()
