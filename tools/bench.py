"""altclip_np against transformers + torch at the real BAAI/AltCLIP sizes, on this machine, in one run.

    python tools/bench.py [--threads 2] [--reps 5] [--quick] [--checkpoint DIR]
    python tools/bench.py --gemm-ladder   # each step of kernels/gemm_ladder.py (tools/gemm_ladder_bench.py)
    python tools/bench.py --backends      # the model jobs on the `auto` backend against the `numpy` one

The checkpoint (ViT-L/14 at 224 + XLM-R large, 864M random parameters, 3.2 GiB of safetensors) is made once
with transformers' `AltCLIPModel(config).save_pretrained` and cached under ~/.cache/altclip-np-bench, with a
small SentencePiece model and processor files so both sides can run their processors.
Every comparison alternates the two sides (A B A B ...) after a warm-up and quotes medians, because the
machine is shared. Prints Markdown tables. Needs torch and transformers (the test extra); ONNX Runtime and
OpenVINO run too where installed (`pip install -e ".[test,bench]"`; tools/bench_peers.py), on graphs
exported once from transformers. --checkpoint runs the model sections on another checkpoint (e.g. a tiny one from
tools/make_tiny_checkpoint.py, for a quick check of the bench itself: its GFLOP/s mean nothing).
"""
import argparse
import os
import sys

THREADS = int(sys.argv[sys.argv.index("--threads") + 1]) if "--threads" in sys.argv else 2
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = str(THREADS)  # before numpy, numba or torch load their thread pools
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")  # as runtime.tune_process() sets it: idle OpenBLAS sleeps

import json  # noqa: E402
import platform  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

BASE_ENV = dict(os.environ)  # for the child processes, as this process starts

ROOT = Path(__file__).resolve().parent.parent
# (not the repository root: its kernels/ folder would shadow Hugging Face's `kernels`, which transformers imports;
# altclip_np is imported from its install)
sys.path[:] = [str(ROOT / "tools")] + [p for p in sys.path if Path(p or ".").resolve() != ROOT]
import bench_peers  # noqa: E402
CACHE = Path(os.environ.get("ALTCLIP_NP_BENCH_CACHE", Path.home() / ".cache" / "altclip-np-bench"))
CKPT = CACHE / "altclip-large-random"
if "--checkpoint" in sys.argv:  # read here, like --threads: the worker processes get it on their command line
    CKPT = Path(sys.argv[sys.argv.index("--checkpoint") + 1]).resolve()
LABELS = ["a photo of a cat", "a photo of a dog", "a photo of a car"]
GEMM_SHAPES = [(m, k, n) for m in (128, 257, 512, 616, 2056)  # the rows of the model's GEMMs: texts, images
               for k, n in ((1024, 1024), (1024, 3072), (1024, 4096), (4096, 1024))]
ATTN_SHAPES = [(1, 257), (8, 257), (8, 16), (8, 77), (32, 16)]  # (batch, tokens), 16 heads of 64
TEXT = dict(vocab_size=250002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
            intermediate_size=4096, max_position_embeddings=514, type_vocab_size=1, project_dim=768,
            hidden_act="gelu", layer_norm_eps=1e-5, pad_token_id=1)
VISION = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
              image_size=224, patch_size=14, projection_dim=768, hidden_act="quick_gelu", layer_norm_eps=1e-5)


def median_alternating(fns, reps, warmup=1, best=None):
    """{name: median seconds}, running the callables in turn `reps` times after `warmup` rounds
    (and the fastest run of each in `best`, if a dict is given)."""
    for _ in range(warmup):
        for f in fns.values():
            f()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, f in fns.items():
            t = time.perf_counter()
            f()
            times[name].append(time.perf_counter() - t)
    if best is not None:
        best.update({name: min(ts) for name, ts in times.items()})
    return {name: float(np.median(ts)) for name, ts in times.items()}


# ---- the checkpoint -----------------------------------------------------------------------------------------

def build_checkpoint():
    if (CKPT / "model.safetensors").is_file() and (CKPT / "sentencepiece.bpe.model").is_file():
        return CKPT
    if "--checkpoint" in sys.argv:
        sys.exit(f"bench: {CKPT} is not a checkpoint with model.safetensors and sentencepiece.bpe.model")
    import torch
    import transformers
    from make_tiny_checkpoint import corpus_lines, train_sentencepiece, write_processor_files

    print(f"building the full-size random checkpoint in {CKPT} (once) ...", file=sys.stderr, flush=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=CACHE))
    train_sentencepiece(tmp, corpus_lines())
    write_processor_files(tmp)
    pre = json.loads((tmp / "preprocessor_config.json").read_text())
    pre.update(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    (tmp / "preprocessor_config.json").write_text(json.dumps(pre, indent=2) + "\n")
    torch.manual_seed(0)
    config = transformers.AltCLIPConfig(text_config=TEXT, vision_config=VISION, projection_dim=768)
    transformers.AltCLIPModel(config).eval().save_pretrained(tmp)
    tmp.rename(CKPT)
    return CKPT


# ---- FLOP counts (multiply-add = 2) ---------------------------------------------------------------------------

def encoder_flops(tokens, d, f, layers, heads):  # per sequence
    dense = 2 * tokens * (4 * d * d + 2 * d * f)
    attn = 2 * 2 * tokens * tokens * d
    return layers * (dense + attn)


def vision_flops(batch):
    t = (224 // 14) ** 2 + 1
    return batch * (2 * (t - 1) * 3 * 14 * 14 * 1024 + encoder_flops(t, 1024, 4096, 24, 16) + 2 * 1024 * 768)


def text_flops(batch, tokens):
    return batch * (encoder_flops(tokens, 1024, 4096, 24, 16) + 2 * tokens * 1024 * 768 + 2 * 768 * 768)


# ---- sections ---------------------------------------------------------------------------------------------------

def gemm_section(reps):
    """GFLOP/s of the Numba GEMM (its weight packed once into panels, as the model keeps them) and OpenBLAS (in
    this process) and, where ONNX Runtime is installed, of its
    MLAS sgemm (a MatMul with the weight as an initializer, so MLAS packs it once when the session is created,
    as it does for a model) in a process of its own; `reps` rounds, the sides' order rotating, medians."""
    from altclip_np.kernels import matmul_panels, pack_panels

    rng = np.random.default_rng(0)
    mlas = Worker("mlas") if bench_peers.installed("onnxruntime") else None
    rows, peak = [], 0.0
    for m, k, n in GEMM_SHAPES:
        a = rng.standard_normal((m, k), dtype=np.float32)
        w = rng.standard_normal((n, k), dtype=np.float32)
        wp, out = pack_panels(w), np.empty((m, n), np.float32)
        calls = {"numba": lambda: matmul_panels(a, wp, n, out), "blas": lambda: a @ w.T}
        if mlas:
            calls["mlas"] = lambda: mlas.run(f"{m} {k} {n}")  # returns the seconds its process measured
        times = {name: [] for name in calls}
        sides = list(calls)
        for rep in range(reps + 1):  # the first round warms up; the order rotates, since the side that runs
            for name in sides[rep % len(sides):] + sides[:rep % len(sides)]:  # after MLAS's process finds the
                t = time.perf_counter()  # caches cold, the next one W warm (measured: up to 25% either way)
                seconds = calls[name]()
                times[name].append(seconds if name == "mlas" else time.perf_counter() - t)
        gf = {s: 2 * m * k * n / float(np.median(ts[1:])) / 1e9 for s, ts in times.items()}
        peak = max(peak, 2 * m * k * n / min(times["blas"][1:]) / 1e9)  # the sgemm peak: OpenBLAS's best run
        best = max(gf["blas"], gf.get("mlas", 0.0))
        rows.append(f"| {m} x {k} x {n} | {gf['numba']:.0f} | {gf['blas']:.0f} | "
                    + (f"{gf['mlas']:.0f} | " if mlas else "") + f"{gf['numba'] / best:.0%} |")
    if mlas:
        mlas.close()
    head = "| GEMM M x K x N | Numba GFLOP/s | OpenBLAS GFLOP/s | " + ("MLAS GFLOP/s | " if mlas else "")
    table = [head + f"Numba / {'best of OpenBLAS, MLAS' if mlas else 'OpenBLAS'} |",
             "|---" * (5 if mlas else 4) + "|", *rows]
    return table, peak


def mlas_worker():
    """ONNX Runtime's sgemm (MLAS), alone in this process: reads `M K N` lines, answers with the seconds one
    MatMul [M, K] x [K, N] took. One session per K x N, its weight an initializer (packed at session creation)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = THREADS, 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as bench_peers runs it
    sessions, inputs = {}, {}
    print("ready", flush=True)
    for line in sys.stdin:
        m, k, n = map(int, line.split())
        if (k, n) not in sessions:
            w = np.random.default_rng(1).standard_normal((k, n), dtype=np.float32)
            graph = helper.make_graph([helper.make_node("MatMul", ["a", "w"], ["c"])], "gemm",
                                      [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", k])],
                                      [helper.make_tensor_value_info("c", TensorProto.FLOAT, ["m", n])],
                                      [numpy_helper.from_array(w, "w")])
            model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
            sessions[k, n] = ort.InferenceSession(model.SerializeToString(), options,
                                                  providers=["CPUExecutionProvider"])
        if (m, k) not in inputs:
            inputs[m, k] = np.random.default_rng(2).standard_normal((m, k), dtype=np.float32)
        t = time.perf_counter()
        sessions[k, n].run(None, {"a": inputs[m, k]})
        print(time.perf_counter() - t, flush=True)


def attention_section(reps):
    from altclip_np.kernels import attention, attention_numpy

    rng = np.random.default_rng(0)
    rows = ["| attention B x T (16 heads x 64) | Numba ms | NumPy twin ms | speed-up |", "|---|---|---|---|"]
    for b, t in ATTN_SHAPES:
        # split heads as the model has them: [B, H, T, D] views of [B, T, H, D] memory
        q, k, v = (rng.standard_normal((b, t, 16, 64), dtype=np.float32).transpose(0, 2, 1, 3) for _ in range(3))
        mask = np.zeros((b, 1, 1, t), np.float32)
        mask[0, ..., t // 2:] = np.finfo(np.float32).min
        r = median_alternating({"numba": lambda: attention(q, k, v, mask, 0.125),
                                "numpy": lambda: attention_numpy(q, k, v, mask, 0.125)}, reps)
        rows.append(f"| {b} x {t} | {r['numba'] * 1e3:.2f} | {r['numpy'] * 1e3:.2f} | {r['numpy'] / r['numba']:.2f}x |")
    return rows


# (kind, batch, tokens); "mixed": texts of 6 to `tokens` tokens padded to the longest, as a caption batch is
JOBS = [("vision", 1, None), ("vision", 8, None), ("text", 8, 16), ("text", 8, 77), ("text", 32, 16),
        ("mixed", 16, 77)]


def job_inputs(kind, batch, tokens):
    rng = np.random.default_rng(0)
    config = json.loads((CKPT / "config.json").read_text())  # the real sizes, or a --checkpoint's
    if kind == "vision":
        size = config["vision_config"]["image_size"]
        return {"pixel_values": rng.standard_normal((batch, 3, size, size), dtype=np.float32)}
    tokens = min(tokens, config["text_config"]["max_position_embeddings"] - 2)
    ids = rng.integers(5, min(250000, config["text_config"]["vocab_size"]), (batch, tokens))
    ids[:, 0], ids[:, -1] = 0, 2
    mask = np.ones_like(ids)
    lengths = rng.integers(6, tokens, batch) if kind == "mixed" else [tokens, tokens // 2]
    lengths[0] = tokens  # padded to the longest
    for row, n in enumerate(lengths[1:], start=1):  # (the fixed-length jobs pad one row: the mask path runs)
        ids[row, n - 1], ids[row, n:], mask[row, n:] = 2, 1, 0
    return {"input_ids": ids, "attention_mask": mask}


def worker(side):
    """One side of the model section, in a process of its own (torch's and Numba's thread pools never share a
    process): reads `JOB_INDEX [SAVE_PATH]` lines, runs the job once, answers with the seconds it took.
    "ours" runs get_*_features (the whole tower's output, like transformers), "encode" encode_text/encode_image
    (the pooled embedding only, as the CLI does), "numpy" encode_* on the `numpy` backend, "theirs" transformers'
    get_*_features, "onnxruntime" and "openvino" the graphs exported from transformers' get_*_features
    (tools/bench_peers.py)."""
    if side == "numpy":  # encode_* on the reference (every GEMM on OpenBLAS), for the `auto` vs `numpy` table
        os.environ["ALTCLIP_NP_BACKEND"] = "numpy"
    if side in ("ours", "encode", "numpy"):
        import altclip_np
        altclip_np.runtime.tune_process()  # as the altclip-np command runs
        # throughput in a loop: weights stay mapped in, as `altclip-np embed` runs (the first-result job below
        # uses the default, which hands each layer's pages back after use)
        model = altclip_np.AltCLIPModel.from_pretrained(CKPT, release_weights=False)
        if side == "ours":
            run = {"vision": lambda x: model.get_image_features(**x).pooler_output,
                   "text": lambda x: model.get_text_features(**x).pooler_output}
        else:
            run = {"vision": lambda x: model.encode_image(**x), "text": lambda x: model.encode_text(**x)}
    elif side in bench_peers.PEERS:
        run = bench_peers.runners(side, CKPT, THREADS)
    else:
        import torch
        import transformers
        torch.set_num_threads(THREADS)
        torch.set_grad_enabled(False)
        model = transformers.AltCLIPModel.from_pretrained(CKPT, dtype=torch.float32).eval()
        tensors = lambda x: {k: torch.from_numpy(v) for k, v in x.items()}  # noqa: E731
        run = {"vision": lambda x: model.get_image_features(**tensors(x)).pooler_output.numpy(),
               "text": lambda x: model.get_text_features(**tensors(x)).pooler_output.numpy()}
    inputs = [job_inputs(*job) for job in JOBS]
    print("ready", flush=True)
    for line in sys.stdin:
        index, *save = line.split()
        kind = JOBS[int(index)][0].replace("mixed", "text")
        t = time.perf_counter()
        out = run[kind](inputs[int(index)])
        seconds = time.perf_counter() - t
        if save:
            np.save(save[0], out)
        print(seconds, flush=True)


class Worker:
    def __init__(self, side):
        self.proc = subprocess.Popen([sys.executable, __file__, "--worker", side, "--threads", str(THREADS),
                                      "--checkpoint", str(CKPT)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=BASE_ENV)
        if self.proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the {side} worker failed to start")

    def run(self, line, save=""):
        self.proc.stdin.write(f"{line} {save}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def job_label(kind, batch, tokens):  # a job's name in the tables
    unit = {"vision": "images", "text": f"texts ({tokens} tokens)", "mixed": f"texts (6-{tokens} tokens)"}
    return f"{unit[kind]} x {batch}"


def timed_rounds(workers, index, reps):
    """{side: [seconds]} of job `index` on each worker: `reps` rounds (half, at least 3, for big jobs), the order
    rotating, so no side always runs right after the same other one."""
    kind, batch, tokens = JOBS[index]
    times, sides = {side: [] for side in workers}, list(workers)
    for rep in range(reps if batch * (tokens or 257) < 2000 else max(3, reps // 2)):
        for side in sides[rep % len(sides):] + sides[:rep % len(sides)]:
            times[side].append(workers[side].run(index))
    return times


def model_section(reps, peak, quick, peers=()):
    """Throughput of each side in its own worker process, alternating A B C, B C A, ... after a warm-up run;
    a second table against the `peers` (bench_peers.PEERS), run in the same rotation."""
    workers = {side: Worker(side) for side in ("ours", "encode", "theirs", *peers)}
    jobs = [0, 2] if quick else range(len(JOBS))
    rows = ["| job | altclip_np /s | encode_* /s | transformers /s | speed-up | encode_* speed-up | "
            "altclip_np GFLOP/s (of peak) | transformers GFLOP/s (of peak) | max abs diff |",
            "|---|---|---|---|---|---|---|---|---|"]
    names = [bench_peers.NAMES[p] for p in peers]
    head = ["job", "altclip_np /s (best of get_* / encode_*)", *[f"{n} /s" for n in names],
            *[f"altclip_np / {n}" for n in names], *[f"{n} GFLOP/s (of peak)" for n in names],
            *[f"{n} max abs diff" for n in names]]
    peer_rows = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    with tempfile.TemporaryDirectory() as tmp:
        for index in jobs:
            kind, batch, tokens = JOBS[index]
            label = job_label(kind, batch, tokens)
            for side, w in workers.items():  # warm-up, and the outputs for the difference
                w.run(index, f"{tmp}/{side}.npy")
            theirs = np.load(f"{tmp}/theirs.npy")
            diffs = {side: float(np.abs(np.load(f"{tmp}/{side}.npy") - theirs).max()) for side in workers}
            diff = max(diffs["ours"], diffs["encode"])
            t = {side: float(np.median(ts)) for side, ts in timed_rounds(workers, index, reps).items()}
            # FLOPs of the whole padded batch: what get_*_features computes, on both sides
            flops = vision_flops(batch) if kind == "vision" else text_flops(batch, tokens)
            g = {side: flops / t[side] / 1e9 for side in t}
            rows.append(f"| {label} | {batch / t['ours']:.2f} | {batch / t['encode']:.2f} | "
                        f"{batch / t['theirs']:.2f} | {t['theirs'] / t['ours']:.2f}x | "
                        f"{t['theirs'] / t['encode']:.2f}x | {g['ours']:.0f} ({g['ours'] / peak:.0%}) | "
                        f"{g['theirs']:.0f} ({g['theirs'] / peak:.0%}) | {diff:.1e} |")
            print(rows[-1], file=sys.stderr, flush=True)
            if peers:
                ours = min(t["ours"], t["encode"])
                cells = [label, f"{batch / ours:.2f}", *[f"{batch / t[p]:.2f}" for p in peers],
                         *[f"{t[p] / ours:.2f}x" for p in peers], *[f"{g[p]:.0f} ({g[p] / peak:.0%})" for p in peers],
                         *[f"{diffs[p]:.1e}" for p in peers]]
                peer_rows.append("| " + " | ".join(cells) + " |")
                print(peer_rows[-1], file=sys.stderr, flush=True)
    for w in workers.values():
        w.close()
    return rows + ([""] + peer_rows if peers else [])


def backend_section(reps):
    """encode_* on the `auto` backend (the default) against the `numpy` backend (the reference: every GEMM on
    OpenBLAS), each in its own worker, alternating, medians; the spread is each side's slowest / fastest run, the
    run's noise the ratio is read against."""
    workers = {side: Worker(side) for side in ("encode", "numpy")}
    rows = ["| job | auto /s | numpy /s | auto / numpy | spread auto, numpy |", "|---|---|---|---|---|"]
    for index, (kind, batch, tokens) in enumerate(JOBS):
        for w in workers.values():
            w.run(index)  # warm-up
        times = timed_rounds(workers, index, reps)
        t = {side: float(np.median(ts)) for side, ts in times.items()}
        spread = ", ".join(f"{max(ts) / min(ts):.2f}" for ts in times.values())
        rows.append(f"| {job_label(kind, batch, tokens)} | {batch / t['encode']:.2f} | {batch / t['numpy']:.2f} | "
                    f"{t['numpy'] / t['encode']:.2f}x | {spread} |")
        print(rows[-1], file=sys.stderr, flush=True)
    for w in workers.values():
        w.close()
    return rows


FIRST_RESULT = {
    "altclip_np": """
import altclip_np
altclip_np.runtime.tune_process()  # as the altclip-np command does, first thing
import numpy as np
from PIL import Image
processor = altclip_np.AltCLIPProcessor.from_pretrained(CKPT)
model = altclip_np.AltCLIPModel.from_pretrained(CKPT)
inputs = processor(text=LABELS, images=IMAGE, padding=True)
out = model(**inputs)
print(out.logits_per_image[0].tolist())
""",
    "transformers": """
import torch
from PIL import Image
import transformers
torch.set_num_threads(THREADS)
processor = transformers.AltCLIPProcessor.from_pretrained(CKPT)
model = transformers.AltCLIPModel.from_pretrained(CKPT)
with torch.inference_mode():
    out = model(**processor(text=LABELS, images=IMAGE, padding=True, return_tensors="pt"))
print(out.logits_per_image[0].tolist())
""",
}


# The child reports its own high-water RSS: getrusage's ru_maxrss of a child counts the parent's memory at fork.
PEAK_RSS = "\nprint(next(l for l in open('/proc/self/status') if l.startswith('VmHWM')).split()[1])\n"


def first_result_section(reps, peers=()):
    """Wall time of a fresh process (import, load, preprocess, one image x three labels) and its peak RSS; for
    the `peers` also the seconds their sessions took to create (their cold start). And once with an empty Numba
    cache (NUMBA_CACHE_DIR) and cache directory (ALTCLIP_NP_CACHE_DIR), so altclip_np compiles its kernels and
    packs the weights into their panels, as a first run after an install does (transformers has nothing to
    compile: its cold run is one more run)."""
    from PIL import Image

    image = CACHE / "bench.png"
    if not image.is_file():
        rng = np.random.default_rng(0)
        Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(image)
    prelude = (f"CKPT = {str(CKPT)!r}\nTOOLS = {str(ROOT / 'tools')!r}\nLABELS = {LABELS!r}\nTHREADS = {THREADS}\n"
               f"from PIL import Image\nIMAGE = Image.open({str(image)!r})\n")
    bodies = {**FIRST_RESULT, **{p: f"PEER = {p!r}\n" + bench_peers.FIRST_RESULT for p in peers}}

    def first_result(name, env):  # -> (wall s, peak RSS GiB, logits[, session creation s])
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", prelude + bodies[name] + PEAK_RSS], capture_output=True,
                              text=True, cwd=CACHE, env=env)  # (not the root: see sys.path)
        wall = time.perf_counter() - t
        if proc.returncode:
            raise RuntimeError(f"{name} first-result job failed:\n{proc.stderr[-2000:]}")
        logits, peak_kib = proc.stdout.split("\n")[-3:-1]
        session = [float(line.split()[1]) for line in proc.stdout.split("\n") if line.startswith("cold ")]
        return (wall, int(peak_kib) / 2**20, logits, *session)

    results = {name: [] for name in bodies}
    for rep in range(reps + 1):  # the first round warms the page cache and Numba's cache
        for name in bodies:
            result = first_result(name, BASE_ENV)
            if rep:
                results[name].append(result)
    with tempfile.TemporaryDirectory() as empty, tempfile.TemporaryDirectory() as store:
        cold = {name: first_result(name, {**BASE_ENV, "NUMBA_CACHE_DIR": empty, "ALTCLIP_NP_CACHE_DIR": store})
                for name in FIRST_RESULT}
    med = {n: (np.median([r[0] for r in v]), np.median([r[1] for r in v]), v[-1][2],
               np.median([r[3] for r in v]) if len(v[0]) > 3 else None) for n, v in results.items()}
    a, b = med["altclip_np"], med["transformers"]
    ca, cb = cold["altclip_np"], cold["transformers"]
    head = "".join(f" {bench_peers.NAMES[p]} |" for p in peers)
    cells = lambda i, fmt: "".join(f" {format(med[p][i], fmt)} |" for p in peers)  # noqa: E731
    blank = " |" * len(peers)
    rows = [f"| process start to first zero-shot result | altclip_np | transformers | ratio |{head}",
            "|---|---|---|---|" + "---|" * len(peers),
            f"| wall time (s) | {a[0]:.2f} | {b[0]:.2f} | {a[0] / b[0]:.2f} |{cells(0, '.2f')}",
            f"| cold wall time (s): empty Numba cache and panel store, one run | {ca[0]:.2f} | {cb[0]:.2f} | {ca[0] / cb[0]:.2f} |"
            + blank,
            f"| peak RSS (GiB) | {a[1]:.2f} | {b[1]:.2f} | {a[1] / b[1]:.2f} |{cells(1, '.2f')}",
            f"| logits_per_image | {a[2]} | {b[2]} | |{cells(2, '')}",
            f"| cold run's logits_per_image | {'same' if ca[2] == a[2] else 'DIFFERENT'} as warm | "
            f"{'same' if cb[2] == b[2] else 'DIFFERENT'} | |" + blank]
    if peers:  # (the peers preprocess with transformers' processor, as their users would)
        rows.insert(3, "| of which session creation / compile_model (s) | | | |" + cells(3, ".2f"))
    return rows


def machine_header():
    """The CPU, the ISA flags the kernels depend on, Numba's target, and what `auto` follows on this machine."""
    import numba
    from altclip_np import autotune

    cpu = {}
    with open("/proc/cpuinfo") as f:
        for line in iter(f.readline, "\n"):  # the first processor's block
            key, _, value = line.partition(":")
            cpu[key.strip()] = value.strip()
    flags = set(cpu.get("flags", "").split())
    isa = ", ".join(f"{name} {'yes' if flags & set(names) else 'no'}" for name, names in (
        ("AVX2", ["avx2"]), ("AVX-512F", ["avx512f"]), ("VNNI", ["avx512_vnni", "avx_vnni"]),
        ("BF16", ["avx512_bf16"])))
    key, auto = autotune.cache_key(), autotune.choices()
    target = key["numba_cpu"] + (" (NUMBA_CPU_NAME)" if numba.config.CPU_NAME else " (host)")
    gemm = ", ".join(f"{m} {'Numba' if v else 'BLAS'}" for m, v in auto["gemm_numba"].items())
    attention = ", ".join(f"{t} {'Numba' if v else 'BLAS'}" for t, v in auto["attention_numba"].items())
    source = ("measured on this machine" if auto.get("source") == "measured"
              else "the prior; nothing measured on this machine yet: `altclip-np tune` measures")
    return [f"CPU: {cpu.get('model name', platform.processor())} (family {cpu.get('cpu family', '?')}, model "
            f"{cpu.get('model', '?')}), {os.cpu_count()} CPUs; {isa}",
            f"Numba target: {target}, {'AVX-512' if key['numba_avx512'] else 'no AVX-512'} code",
            f"auto picks: GEMM by rows {gemm}; attention by tokens {attention} "
            f"({source})"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2, help="threads for every library (default 2)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs per measurement (default 5)")
    parser.add_argument("--quick", action="store_true", help="kernels plus two model jobs, one first-result run")
    parser.add_argument("--skip-model", action="store_true", help="only the GEMM and attention kernels")
    parser.add_argument("--checkpoint", help="run the model sections on this checkpoint directory instead")
    parser.add_argument("--gemm-ladder", action="store_true", help="only the GEMM ladder's steps, in GFLOP/s")
    parser.add_argument("--backends", action="store_true",
                        help="only the model jobs on the `auto` backend against the `numpy` one")
    parser.add_argument("--worker", choices=("ours", "encode", "numpy", "theirs", "mlas", *bench_peers.PEERS),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return mlas_worker() if args.worker == "mlas" else worker(args.worker)
    if args.gemm_ladder:
        from gemm_ladder_bench import ladder_section
        print("\n".join(ladder_section(args.reps, THREADS)))
        return
    start = time.perf_counter()
    import altclip_np.kernels
    altclip_np.runtime.tune_process()  # as the altclip-np command runs (OpenMP's wait policy before Numba's threads)
    altclip_np.kernels.warmup()  # compiles or loads the cached kernels before anything is timed
    from altclip_np import get_backend

    print(f"# altclip_np bench: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
          f"{THREADS} threads, numpy {np.__version__}, backend {get_backend()!r}\n")
    print("\n".join(machine_header()) + "\n", flush=True)
    if args.backends:
        build_checkpoint()
        print("\n".join(backend_section(max(3, args.reps + 2))) + "\n")
        print(f"(bench took {time.perf_counter() - start:.0f} s)")
        return
    gemm, peak = gemm_section(args.reps)
    print("\n".join(gemm), f"\n\nsgemm peak (OpenBLAS's fastest run above): {peak:.0f} GFLOP/s\n", flush=True)
    print("\n".join(attention_section(args.reps)) + "\n", flush=True)
    if not args.skip_model:
        build_checkpoint()
        peers, notes = bench_peers.prepare(CKPT)
        if notes:
            print("\n".join(notes) + "\n", flush=True)
        print("\n".join(first_result_section(1 if args.quick else 2, peers)) + "\n", flush=True)
        print("\n".join(model_section(max(3, args.reps + 2), peak, args.quick, peers)) + "\n", flush=True)
    print(f"(bench took {time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
