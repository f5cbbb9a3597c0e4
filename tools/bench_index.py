"""Benchmarks of the embedding index (issue 13's targets), on synthetic rows and tiny random checkpoints.

    python tools/bench_index.py [--rows 1000000] [--dim 768] [--dir /tmp/bench-index] [--skip-embed]

1. An index of ROWS synthetic L2-normalised rows (ROWS/50 clusters, like real embeddings) in shards of 65,536:
   exact search of one query (median of 10, warm page cache, the BLAS's default threads), and with faiss:
   build time, recall@10 against exact and query time (median) over 100 queries drawn from the same mixture.
2. Bytes written (this process's /proc/self/io wchar) by `index.embed` adding 1,000 text rows to that index
   with a tiny checkpoint whose projection_dim is DIM, next to the size of those rows and their metadata.
3. Embed throughput of IMAGES images on a mid-size random checkpoint (ViT 6 x 256, 224 px), single process vs
   a local:2 cluster, each side in its own process, interleaved, 3 rounds, medians; the timing starts once the
   model is loaded and has run once (in each worker). Needs torch + transformers (for the checkpoints).
"""
import argparse
import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

from altclip_np import ann, index

SHARD = 65536


def draw(rng, centers, m):  # m unit rows: a random center (of n/50) plus noise, like clustered embeddings
    rows = centers[rng.integers(0, len(centers), m)] + 0.6 * rng.standard_normal((m, centers.shape[1]),
                                                                                dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def synthetic(path, n, dim, seed=0):
    """Write n clustered unit rows as shards; -> (shards, 100 queries drawn from the same mixture)."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((max(1, n // 50), dim)).astype(np.float32)
    (path / "shards").mkdir(parents=True)
    shards = []
    for start in range(0, n, SHARD):
        m = min(SHARD, n - start)
        name = uuid.uuid4().hex
        index.write_shard(path, name, draw(rng, centers, m), [{"source": f"row {i}"} for i in range(start, start + m)])
        shards.append({"name": name, "rows": m, "replaces": []})
    return shards, draw(np.random.default_rng(seed + 1), centers, 100)


def timed(fn, repeat):  # -> (median wall seconds, median CPU seconds of all threads, last result)
    times, cpu = [], []
    for _ in range(repeat):
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn()
        times.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return float(np.median(times)), float(np.median(cpu)), out


def wchar():
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar:")).split()[1])


def make_checkpoint(directory, **config):
    import torch
    import transformers
    torch.manual_seed(0)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from make_tiny_checkpoint import make_tiny_checkpoint
    make_tiny_checkpoint(directory)  # processor files and a tiny model, then the model is replaced
    vocab = json.loads((directory / "config.json").read_text())["text_config"]["vocab_size"]
    config["text_config"] = {**config["text_config"], "vocab_size": vocab}
    model = transformers.AltCLIPModel(transformers.AltCLIPConfig(**config)).eval()
    model.save_pretrained(directory)
    return directory


TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
            project_dim=24, max_position_embeddings=66)


def search_benchmarks(args, work):
    path = work / "big"
    start = time.perf_counter()
    shards, queries = synthetic(path, args.rows, args.dim)
    model = str((work / "tiny768").resolve()) if not args.skip_embed else "synthetic"
    index.write_manifest(path, {"format": 2, "model": model, "kind": "text", "dim": args.dim, "shards": shards})
    print(f"wrote {args.rows} x {args.dim} rows in {time.perf_counter() - start:.0f} s")
    found = index.open_index(path)
    ann.search(found, queries[0], 10, exact=True)  # warm the page cache
    exact_s, exact_cpu, _ = timed(lambda: ann.search(found, queries[1], 10, exact=True), 10)
    print(f"exact search, one query: {exact_s * 1e3:.0f} ms (median of 10; {exact_cpu * 1e3:.0f} ms CPU)")
    build_s, build_cpu, info = timed(lambda: ann.build(path), 1)
    print(f"faiss build: {build_s:.0f} s ({build_cpu:.0f} s CPU), {info['method']}")
    found = index.open_index(path)
    ann.search(found, queries[0], 10)  # loads (maps) the faiss index
    faiss_index, _ = ann.load(found)
    query_times, recalls = [], []
    for q in queries:
        start = time.perf_counter()
        approx = ann.search(found, q, 10)
        query_times.append(time.perf_counter() - start)
        exact = ann.search(found, q, 10, exact=True)
        recalls.append(len({h["row"] for h in approx} & {h["row"] for h in exact}) / 10)
    warm = []
    for q in queries:  # again: the lists' pages are mapped in now
        start = time.perf_counter()
        ann.search(found, q, 10)
        warm.append(time.perf_counter() - start)
    raw = timed(lambda: faiss_index.search(queries[:1], 10), 20)[0]
    print(f"approximate: recall@10 {np.mean(recalls):.3f} (min {min(recalls):.1f}) over {len(queries)} queries; "
          f"query (with the hits' metadata) {np.median(query_times) * 1e3:.1f} ms median on first touch of the "
          f"memory-mapped lists, {np.median(warm) * 1e3:.1f} ms warm; faiss alone {raw * 1e3:.2f} ms")
    return path


def append_benchmark(path, work):
    texts = [f"new caption number {i}" for i in range(1000)]
    before = wchar()
    start = time.perf_counter()
    summary = index.embed(texts, path, kind="text", batch_size=50, shard_rows=1000, progress=False)
    written = wchar() - before
    shard = index.read_manifest(path)["shards"][-1]["name"]
    payload = sum((path / "shards" / f"{shard}{suffix}").stat().st_size for suffix in (".npy", ".jsonl"))
    manifest = (path / "manifest.json").stat().st_size
    print(f"adding 1000 rows to {summary['rows'] - 1000}: {written} bytes written in "
          f"{time.perf_counter() - start:.1f} s; the rows + metadata are {payload} bytes, the manifest {manifest}")


def warm(ckpt):  # load the model and run one forward (which loads the Numba kernels) in this process
    from altclip_np.features import bulk_model
    model, _ = bulk_model(ckpt)
    size = model.config.vision_config.image_size
    model.encode_image(np.zeros((1, 3, size, size), np.float32))


def embed_side(mode, ckpt, images, out):
    """One side of the throughput comparison, in this process: load the model (in each worker), then time
    index.embed of every image; prints {"seconds", "images"}."""
    sources = sorted(str(p) for p in Path(images).iterdir())
    with contextlib.ExitStack() as stack:
        client = None
        if mode != "single":
            from altclip_np.cluster import connect
            client = stack.enter_context(connect(mode))
            client.run(warm, ckpt)  # the model load per worker is left out of the timing
        else:
            warm(ckpt)
        start = time.perf_counter()
        index.embed(sources, out, model=ckpt, client=client, batch_size=8, progress=False)
        print(json.dumps({"seconds": time.perf_counter() - start, "images": len(sources)}))


def embed_benchmark(work, n, rounds=3):
    from PIL import Image
    ckpt = make_checkpoint(work / "mid", text_config=TEXT, projection_dim=64, vision_config=dict(
        hidden_size=256, num_hidden_layers=6, num_attention_heads=4, intermediate_size=1024, image_size=224,
        patch_size=16))
    pre = json.loads((ckpt / "preprocessor_config.json").read_text())
    pre.update(crop_size={"height": 224, "width": 224}, size={"shortest_edge": 224})
    (ckpt / "preprocessor_config.json").write_text(json.dumps(pre))
    images = work / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)).save(images / f"{i:04d}.png")
    results, rows = {"single": [], "local:2": []}, {}
    for r in range(rounds):
        for mode in results:
            out = work / f"out-{mode}-{r}"
            done = subprocess.run([sys.executable, __file__, "--side", mode, str(ckpt), str(images), str(out)],
                                  check=True, capture_output=True, text=True)
            timing = json.loads(done.stdout.strip().splitlines()[-1])
            results[mode].append(timing["images"] / timing["seconds"])
            found = index.open_index(out)
            rows[mode] = {m["source"]: v for i in range(len(found.shards))
                          for m, v in zip(found.metadata(i), np.asarray(found.rows(i)))}
            print(f"  round {r} {mode}: {timing['seconds']:.1f} s for {n} images")
    single, local = np.median(results["single"]), np.median(results["local:2"])
    diff = max(float(np.abs(rows["single"][s] - rows["local:2"][s]).max()) for s in rows["single"])
    print(f"embed throughput (model loads excluded): single process {single:.1f} img/s, local:2 {local:.1f} img/s "
          f"(ratio {local / single:.2f}); max abs row difference {diff}")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--images", type=int, default=200, help="images for the embed throughput runs")
    parser.add_argument("--dir", help="work directory (default: a temporary one, removed after)")
    parser.add_argument("--skip-embed", action="store_true", help="only the search benchmarks")
    parser.add_argument("--side", nargs=4, metavar=("MODE", "CKPT", "IMAGES", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        return embed_side(*args.side)
    work = Path(args.dir or tempfile.mkdtemp(prefix="bench-index-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if not args.skip_embed:
            make_checkpoint(work / "tiny768", text_config=TEXT, projection_dim=args.dim, vision_config=dict(
                hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37, image_size=30,
                patch_size=6))
        path = search_benchmarks(args, work)
        if not args.skip_embed:
            append_benchmark(path, work)
            embed_benchmark(work, args.images)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
