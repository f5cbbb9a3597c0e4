"""The peers tools/bench.py measures altclip_np against: ONNX Runtime and OpenVINO, fp32 on the CPU.

    python tools/bench_peers.py CHECKPOINT [--threads 2]   # export once, then check each peer against torch

Both run the same two ONNX graphs: transformers' `get_image_features` / `get_text_features` (their
pooler_output, the projected embedding), exported once per checkpoint with torch.onnx.export (the TorchScript
exporter, opset 18, dynamic batch and sequence axes, no offline optimizer) and cached beside the checkpoint
in CHECKPOINT-onnx/. The TorchScript exporter (dynamo=False), because torch 2.13's dynamo exporter took
7-14x as long on the tiny checkpoint (35-70 s against 5 s) and needs onnxscript; the 864M-parameter export
took 4 min on a loaded 2-core machine (11.8 GiB peak RSS, with the check after it). The >2 GiB text graph
keeps its weights in one external-data file. Each peer runs fp32 on THREADS threads:
  - ONNX Runtime: CPUExecutionProvider, ORT_ENABLE_ALL, intra-op threads = THREADS, spinning off (an idle
    spinning pool steals the other side's cores on a shared machine; see shared/perf-notes.md);
  - OpenVINO: compile_model(..., "CPU", INFERENCE_PRECISION_HINT=f32, INFERENCE_NUM_THREADS=THREADS).
Exporting needs torch, transformers and onnx; running needs onnxruntime / openvino (the `bench` extra).
The check prints each peer's max abs difference from transformers on inputs of other shapes than traced.
"""
import argparse
import importlib.util
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

PEERS = ("onnxruntime", "openvino")
NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
OPSET = 18
GRAPHS = {  # name: (input names, dynamic axes of each input)
    "vision": (["pixel_values"], {"pixel_values": {0: "batch"}}),
    "text": (["input_ids", "attention_mask"], {"input_ids": {0: "batch", 1: "sequence"},
                                               "attention_mask": {0: "batch", 1: "sequence"}}),
}


def installed(peer):
    return importlib.util.find_spec(peer) is not None


def onnx_dir(checkpoint):
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name + "-onnx")


def source_stamp(checkpoint):
    """What the graphs are made from: a cache whose stamp differs is exported again."""
    import torch
    import transformers

    weights = Path(checkpoint) / "model.safetensors"
    st = weights.stat()
    return {"weights": str(weights.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "opset": OPSET,
            "torch": torch.__version__, "transformers": transformers.__version__}


def read_stamp(checkpoint):
    try:
        return json.loads((onnx_dir(checkpoint) / "stamp.json").read_text())
    except (OSError, ValueError):
        return None


def features_module(model, kind):
    """transformers' get_{image,text}_features of `model` as a module whose forward returns the embedding."""
    import torch

    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            if kind == "vision":
                return self.model.get_image_features(pixel_values=inputs[0]).pooler_output
            return self.model.get_text_features(input_ids=inputs[0], attention_mask=inputs[1]).pooler_output

    return Features().eval()  # eval: a module in training mode would export its dropouts


def sample_inputs(config):
    """Example inputs for tracing: two images; two texts, one padded (so the traced graph keeps the mask path)."""
    import torch

    size = config.vision_config.image_size
    ids = torch.randint(5, config.text_config.vocab_size, (2, 9))
    ids[:, 0], ids[0, -1], ids[1, 4], ids[1, 5:] = 0, 2, 2, 1
    mask = (ids != 1).long()
    return {"vision": (torch.zeros(2, 3, size, size),), "text": (ids, mask)}


def export_graphs(model, directory):
    """Write vision.onnx and text.onnx (each with its weights inside or in one .onnx.data file) for a float32
    transformers AltCLIPModel into `directory`."""
    import onnx
    import torch

    directory = Path(directory)
    examples = sample_inputs(model.config)
    for kind, (names, axes) in GRAPHS.items():
        out, name = f"{kind}_embeds", f"{kind}.onnx"
        scratch = Path(tempfile.mkdtemp(dir=directory))
        with torch.no_grad():
            torch.onnx.export(features_module(model, kind), examples[kind], str(scratch / name), input_names=names,
                              output_names=[out], dynamic_axes={**axes, out: {0: "batch"}}, opset_version=OPSET,
                              dynamo=False)
        if len(list(scratch.iterdir())) > 1:  # above 2 GiB the exporter writes one file per weight: gather them
            onnx.save(onnx.load(str(scratch / name)), str(directory / name), save_as_external_data=True,
                      all_tensors_to_one_file=True, location=f"{name}.data")
        else:
            (scratch / name).replace(directory / name)
        shutil.rmtree(scratch)
    return directory


def export(checkpoint):
    """The cached graphs of `checkpoint` (exported now if missing or stale); returns their directory."""
    import torch
    import transformers

    target, stamp, cached = onnx_dir(checkpoint), source_stamp(checkpoint), read_stamp(checkpoint)
    if cached is not None and {k: v for k, v in cached.items() if k != "logit_scale"} == stamp:
        return target
    print(f"exporting ONNX graphs of {checkpoint} to {target} (once) ...", file=sys.stderr, flush=True)
    model = transformers.AltCLIPModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        export_graphs(model, tmp)
        stamp["logit_scale"] = float(model.logit_scale.exp())  # for the zero-shot logits of the first-result job
        (tmp / "stamp.json").write_text(json.dumps(stamp, indent=1) + "\n")
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)  # whole, or not at all: an interrupted export leaves no half-written cache
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def prepare(checkpoint):
    """The peers a bench can run on `checkpoint` (its graphs exported first, in a process of its own: it
    needs torch), and a note for each peer left out."""
    peers = [p for p in PEERS if installed(p)]
    notes = [f"{NAMES[p]} skipped: `{p}` is not installed (pip install -e '.[bench]')" for p in PEERS
             if p not in peers]
    if peers:
        proc = subprocess.run([sys.executable, __file__, str(checkpoint), "--no-check"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode:
            why = (proc.stderr.strip().splitlines() or ["no message"])[-1]
            notes.append(f"{' and '.join(NAMES[p] for p in peers)} skipped: exporting the ONNX graphs failed: {why}")
            peers = []
    return peers, notes


def ort_options(threads):  # ONNX Runtime's session options, as the bench runs it
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def openvino_config(threads):  # OpenVINO's compile_model configuration, as the bench runs it
    return {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}


def session(peer, path, threads):
    """A callable {input name: array} -> the graph's one output, for `peer` on the CPU."""
    if peer == "onnxruntime":
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), ort_options(threads), providers=["CPUExecutionProvider"])
        return lambda inputs: sess.run(None, inputs)[0]
    if peer == "openvino":
        import openvino as ov

        compiled = ov.Core().compile_model(str(path), "CPU", openvino_config(threads))
        request = compiled.create_infer_request()
        return lambda inputs: request.infer(inputs)[0].copy()
    raise ValueError(f"unknown peer {peer!r}: expected one of {', '.join(PEERS)}")


def runners(peer, checkpoint, threads):
    """{"vision": f(pixel_values=...), "text": f(input_ids=..., attention_mask=...)} on `peer`."""
    directory = onnx_dir(checkpoint)
    return {kind: session(peer, directory / f"{kind}.onnx", threads) for kind in GRAPHS}


# A fresh process to its first zero-shot result, as a user of each peer would write it: transformers' processor
# (return_tensors="np"), both sessions created, one image against three labels. Prints the seconds the
# sessions took to create (the peer's cold start) before the logits.
FIRST_RESULT = """
import sys, time, json
sys.path.insert(0, TOOLS)
import numpy as np
import transformers
import bench_peers
start = time.perf_counter()
run = bench_peers.runners(PEER, CKPT, THREADS)
cold = time.perf_counter() - start
processor = transformers.AltCLIPProcessor.from_pretrained(CKPT)
inputs = processor(text=LABELS, images=IMAGE, padding=True, return_tensors="np")
image = run["vision"]({"pixel_values": inputs["pixel_values"]})
text = run["text"]({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"]})
image, text = (x / np.linalg.norm(x, axis=-1, keepdims=True) for x in (image, text))
scale = json.loads((bench_peers.onnx_dir(CKPT) / "stamp.json").read_text())["logit_scale"]
print(f"cold {cold:.3f}")
print((scale * image @ text.T)[0].tolist())
"""


def check(checkpoint, threads):
    """Max abs difference of each installed peer's embeddings from transformers', at shapes other than the
    traced ones (so the dynamic axes are exercised): {peer: {"vision": float, "text": float}}."""
    import torch
    import transformers

    model = transformers.AltCLIPModel.from_pretrained(checkpoint, dtype=torch.float32).eval()
    config, rng = model.config, np.random.default_rng(0)
    size = config.vision_config.image_size
    ids = rng.integers(5, config.text_config.vocab_size, (3, 13))
    ids[:, 0], ids[:, -1] = 0, 2
    ids[1, 6], ids[1, 7:] = 2, 1
    inputs = {"vision": {"pixel_values": rng.standard_normal((3, 3, size, size), dtype=np.float32)},
              "text": {"input_ids": ids, "attention_mask": (ids != 1).astype(np.int64)}}
    with torch.no_grad():
        tensors = {kind: {k: torch.from_numpy(v) for k, v in x.items()} for kind, x in inputs.items()}
        ref = {"vision": model.get_image_features(**tensors["vision"]).pooler_output.numpy(),
               "text": model.get_text_features(**tensors["text"]).pooler_output.numpy()}
    out = {}
    for peer in PEERS:
        if installed(peer):
            run = runners(peer, checkpoint, threads)
            out[peer] = {kind: float(np.abs(run[kind](inputs[kind]) - ref[kind]).max()) for kind in GRAPHS}
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a transformers AltCLIP checkpoint directory")
    parser.add_argument("--threads", type=int, default=2, help="threads for each peer (default 2)")
    parser.add_argument("--no-check", action="store_true", help="export only")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        print(f"graphs in {export(args.checkpoint)} ({time.perf_counter() - start:.0f} s)")
    except ImportError as e:
        sys.exit(f"bench_peers: exporting needs torch, transformers and onnx ({e})")
    if args.no_check:
        return
    for peer, diff in check(args.checkpoint, args.threads).items():
        print(f"{NAMES[peer]}: max abs diff from transformers: vision {diff['vision']:.1e}, text {diff['text']:.1e}")


if __name__ == "__main__":
    main()
