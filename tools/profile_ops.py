"""Where a forward's time goes, per op, on altclip_np and on the peers (ONNX Runtime, OpenVINO), on this machine.

    python tools/profile_ops.py [--job vision:1 | text:8:77 | mixed:16:77] [--side ours|encode|onnxruntime|openvino]
                                [--threads 2] [--reps 3] [--checkpoint DIR]

Runs one of tools/bench.py's jobs on the bench's full-size random checkpoint (made by `python tools/bench.py`)
`reps` times after a warm-up, in this process, and prints a Markdown table: each op class's milliseconds per
forward (mean), its share of the forward and, for the GEMMs and attention, its GFLOP/s. Ours: the methods of
altclip_np.fast.Fast are timed (each Linear's GEMM by its M x K x N, with its epilogue and its Python around it);
the peers: OpenVINO's PERF_COUNT report, ONNX Runtime's profiler, by op type. Timing each call costs a little, so
the totals run a little slower than the bench's. Run one side at a time, alone on the machine.
"""
import argparse
import os
import sys
from pathlib import Path

ARGS = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
ARGS.add_argument("--job", default="vision:1", help="vision:BATCH, text:BATCH:TOKENS or mixed:BATCH:TOKENS")
ARGS.add_argument("--side", default="encode", choices=("ours", "encode", "onnxruntime", "openvino"))
ARGS.add_argument("--threads", type=int, default=2)
ARGS.add_argument("--reps", type=int, default=3)
ARGS.add_argument("--checkpoint", help="the checkpoint (default: tools/bench.py's)")
OPTS = ARGS.parse_args()
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(OPTS.threads)
sys.argv[1:] = ["--threads", str(OPTS.threads)] + (["--checkpoint", OPTS.checkpoint] if OPTS.checkpoint else [])

import json  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402  (the checkpoint, the jobs' inputs and FLOP counts)
import bench_peers  # noqa: E402


def profile_ours(inputs, kind):
    import altclip_np
    from altclip_np import fast

    altclip_np.runtime.tune_process()
    model = altclip_np.AltCLIPModel.from_pretrained(bench.CKPT, release_weights=False)
    if OPTS.side == "ours":
        run = model.get_image_features if kind == "vision" else model.get_text_features
    else:
        run = model.encode_image if kind == "vision" else model.encode_text
    times, flops, on = defaultdict(float), defaultdict(float), [False]

    def timed(method, key, work):  # method, timed per call under the label key(...) once `on`
        def wrapper(self, *args, **kwargs):
            if not on[0]:
                return method(self, *args, **kwargs)
            t = time.perf_counter()
            out = method(self, *args, **kwargs)
            label = key(self, *args, **kwargs)
            times[label] += time.perf_counter() - t
            flops[label] += work(self, *args, **kwargs)
            return out
        return wrapper

    def gemm_label(self, x, weight, *a, **k):
        m = int(np.prod(x.shape[:-1]))
        return f"GEMM {m} x {x.shape[-1]} x {weight.shape[0]} ({'Numba' if self.gemm_on_numba(m) else 'BLAS'})"

    patches = {
        "linear": (gemm_label, lambda self, x, w, *a, **k: 2.0 * np.prod(x.shape[:-1]) * x.shape[-1] * w.shape[0]),
        "attention": (lambda self, q, k, *a, **kw: f"attention, {k.shape[2]} keys "
                      f"({'Numba' if self.attention_on_numba(k.shape[2]) else 'BLAS + softmax'})",
                      lambda self, q, k, *a, **kw: 4.0 * np.prod(q.shape) * k.shape[2]),
        "layer_norm": (lambda self, x, *a, **k: "LayerNorm", lambda *a, **k: 0.0),
    }
    for name, (key, work) in patches.items():
        setattr(fast.Fast, name, timed(getattr(fast.Fast, name), key, work))
    run(**inputs)  # warm-up: kernels loaded, weights mapped in
    walls, on[0] = [], True
    for _ in range(OPTS.reps):
        t = time.perf_counter()
        run(**inputs)
        walls.append(time.perf_counter() - t)
    return times, flops, sum(walls), f"altclip_np {OPTS.side}, backend {altclip_np.get_backend()}"


def profile_peer(inputs, kind):
    path = bench_peers.onnx_dir(bench.CKPT) / f"{kind}.onnx"
    times = defaultdict(float)
    walls = []
    if OPTS.side == "openvino":
        import openvino as ov

        config = {**bench_peers.openvino_config(OPTS.threads), "PERF_COUNT": True}
        request = ov.Core().compile_model(str(path), "CPU", config).create_infer_request()
        request.infer(inputs)
        for _ in range(OPTS.reps):
            t = time.perf_counter()
            request.infer(inputs)
            walls.append(time.perf_counter() - t)
            for info in request.get_profiling_info():
                times[f"{info.node_type} ({info.exec_type})"] += info.real_time.total_seconds()
        return times, {}, sum(walls), "OpenVINO (PERF_COUNT: real time per node type)"
    import onnxruntime as ort

    options = bench_peers.ort_options(OPTS.threads)
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(bench.CACHE) / "ort-profile")
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    sess.run(None, inputs)
    for _ in range(OPTS.reps):
        t = time.perf_counter()
        sess.run(None, inputs)
        walls.append(time.perf_counter() - t)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink()
    runs = [e for e in events if e.get("name") == "model_run"]
    first = sorted(e["ts"] for e in runs)[1]  # skip the warm-up run's nodes
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= first:
            times[e["args"]["op_name"]] += e["dur"] / 1e6
    return times, {}, sum(walls), "ONNX Runtime (profiler: kernel time per op type)"


def main():
    kind, batch, *tokens = OPTS.job.split(":")
    job = (kind, int(batch), int(tokens[0]) if tokens else None)
    inputs = bench.job_inputs(*job)
    kind = "vision" if kind == "vision" else "text"
    prof = profile_ours if OPTS.side in ("ours", "encode") else profile_peer
    times, flops, wall, what = prof(inputs, kind)
    reps = OPTS.reps
    total = wall / reps
    print(f"# {what}: job {OPTS.job}, {OPTS.threads} threads, {reps} forwards, {total * 1e3:.1f} ms each (mean)\n")
    print("| op | ms per forward | share | GFLOP/s |\n|---|---|---|---|")
    for label, s in sorted(times.items(), key=lambda kv: -kv[1]):
        gf = f"{flops[label] / s / 1e9:.0f}" if flops.get(label) else ""
        print(f"| {label} | {s / reps * 1e3:.1f} | {s / reps / total:.1%} | {gf} |")
    rest = total - sum(times.values()) / reps
    print(f"| everything else | {rest * 1e3:.1f} | {rest / total:.1%} | |")


if __name__ == "__main__":
    main()
