"""The `altclip-np` command: zero-shot classification, embedding, search and a per-layer parity report.

    altclip-np classify cat.jpg --labels 猫 dog 고양이 [--template "a photo of a {}."] [--top-k 3] [--json]
    altclip-np embed photos/ --out index.npy          # resumable; sidecar index.npy.json
    altclip-np search index.npy "a red car" [--top-k 10]
    altclip-np parity --model DIR                     # needs torch + transformers
    altclip-np warmup                                 # compile the Numba kernels now (Docker images, CI)

User errors print one line (`altclip-np: error: ...`) and exit 1 (2 for bad arguments); set
ALTCLIP_NP_DEBUG=1 to see the traceback of an unexpected error instead.
"""
import argparse
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from .index import (INDEX_FORMAT, IndexFileError, Journal, journal_model, one_line, read_index, read_journal,
                    sidecar_path, write_index)

PROG = "altclip-np"
DEFAULT_MODEL = "BAAI/AltCLIP"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def warn(message):
    from tqdm import tqdm
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)  # does not break a running progress bar


class LibraryMessages(logging.Handler):
    """Prints the library's messages (e.g. the one-time kernel compile) as `altclip-np: ...` lines on stderr.
    While the kernels compile, the running progress bar (`bar`) keeps ticking, so it does not look frozen."""
    bar = None

    def emit(self, record):
        from tqdm import tqdm
        tqdm.write(f"{PROG}: {record.getMessage()}", file=sys.stderr)
        done = getattr(record, "done", None)  # set when the compile is over
        if self.bar is not None and done is not None:
            threading.Thread(target=tick, args=(self.bar, done), daemon=True).start()


def tick(bar, done):  # refresh the bar's elapsed time each second until `done` is set
    bar.set_postfix_str("compiling the kernels")
    while not done.wait(1.0):
        bar.refresh()
    bar.set_postfix_str("")


MESSAGES = LibraryMessages(logging.INFO)


def show_library_messages():
    logger = logging.getLogger("altclip_np")
    if MESSAGES not in logger.handlers:
        logger.addHandler(MESSAGES)
        logger.setLevel(logging.INFO)


# ---- model, texts and images ----------------------------------------------------------------------------

def model_id(name):
    """How an index records its model: an absolute path for a local directory, else the Hub id."""
    return str(Path(name).resolve()) if Path(name).is_dir() else str(name)


def load_model(name):
    from .model import AltCLIPModel
    from .processor import AltCLIPProcessor
    show_library_messages()
    try:
        return AltCLIPModel.from_pretrained(name), AltCLIPProcessor.from_pretrained(name)
    except (OSError, ValueError, KeyError) as e:
        raise CLIError(f"cannot load model {name!r}: {one_line(e)}") from None


def text_features(model, processor, texts):  # -> [n, d], L2-normalised
    # RoBERTa positions start after the padding index, so 2 of the position table's rows are never used.
    limit = min(processor.tokenizer.model_max_length, model.config.text_config.max_position_embeddings - 2)
    enc = processor(text=list(texts), padding=True, truncation=True, max_length=limit, return_tensors="np")
    return model.encode_text(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], normalize=True)


def image_features(model, pixel_values):  # -> [n, d], L2-normalised
    return model.encode_image(pixel_values=pixel_values, normalize=True)


def load_pixels(processor, path):
    """One image's pixel_values [3, H, W]; CLIError when it cannot be read."""
    if not Path(path).is_file():
        raise CLIError(f"no such image file: {path}")
    try:
        return processor(images=[str(path)], return_tensors="np")["pixel_values"][0]
    except (OSError, ValueError) as e:
        message = one_line(e)
        raise CLIError(message if str(path) in message else f"cannot read image {path}: {message}") from None


def batches(items, size):
    for start in range(0, len(items), size):
        yield items[start:start + size]


def softmax(logits):  # [n, k] -> [n, k], in float64 so each row sums to 1 to the last digit printed
    z = logits.astype(np.float64) - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


# ---- classify ---------------------------------------------------------------------------------------------

def cmd_classify(args):
    labels = [label.strip() for label in args.labels if label.strip()]
    if not labels:
        raise CLIError("no labels: pass at least one non-empty label to --labels")
    if "{}" not in args.template:
        raise CLIError(f'--template must contain "{{}}" where the label goes, got {args.template!r}')
    missing = [path for path in args.images if not Path(path).is_file()]
    if missing:  # before the (possibly slow) model load
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CLIError(f"no such image file: {missing[0]}{more}")
    model, processor = load_model(args.model)
    text = text_features(model, processor, [args.template.replace("{}", label) for label in labels])
    scale = np.exp(np.float32(model.weights["logit_scale"]))  # as AltCLIPModel.forward's logits_per_image
    k = len(labels) if args.top_k is None else min(args.top_k, len(labels))
    results = []
    for paths in batches(args.images, args.batch_size):
        pixels = np.stack([load_pixels(processor, p) for p in paths])
        probs = softmax(scale * (image_features(model, pixels) @ text.T))
        for path, p in zip(paths, probs):
            order = np.argsort(-p, kind="stable")[:k]
            result = {"image": path, "labels": [{"label": labels[i], "score": float(p[i])} for i in order]}
            results.append(result)
            if not args.json:
                print(path)
                for item in result["labels"]:
                    print(f"  {item['score']:.4f}  {item['label']}")
    if args.json:
        print(json.dumps(results, ensure_ascii=False, indent=2))


# ---- embed ------------------------------------------------------------------------------------------------

def dedupe(items):
    return list(dict.fromkeys(items))


def image_sources(paths):
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        elif path.is_file():
            found.append(path)  # named explicitly: taken whatever its extension
        else:
            raise CLIError(f"no such file or directory: {path}")
    if not found:
        raise CLIError(f"no image files ({', '.join(sorted(IMAGE_EXTENSIONS))}) under {', '.join(paths)}")
    return dedupe(os.path.abspath(f) for f in found)


def text_sources(path):
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read text file {path}: {one_line(e)}") from None
    lines = dedupe(line.strip() for line in lines if line.strip())
    if not lines:
        raise CLIError(f"{path} has no non-empty lines to embed")
    return lines


def check_writable(out):
    out = Path(out)
    if out.suffix != ".npy":
        raise CLIError(f"--out must name a .npy file, got {out}")
    if out.is_dir() or not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        reason = "is a directory" if out.is_dir() else f"directory {out.parent} does not exist or is not writable"
        raise CLIError(f"cannot write {out}: {reason}")


def embed_batch(model, processor, kind, batch):
    """(sources embedded, rows): unreadable images are skipped with a warning."""
    if kind == "text":
        return batch, text_features(model, processor, batch)
    ok, pixels = [], []
    for source in batch:
        try:
            pixels.append(load_pixels(processor, source))
            ok.append(source)
        except (CLIError, IndexFileError) as e:
            warn(f"skipping {source}: {e}")
    return ok, (image_features(model, np.stack(pixels)) if ok else None)


def cmd_embed(args):
    if bool(args.paths) == bool(args.text):
        raise CLIError("give image files/folders or --text FILE.txt (one kind of input per index)")
    check_writable(args.out)
    kind = "text" if args.text else "image"
    sources = text_sources(args.text) if args.text else image_sources(args.paths)
    meta, rows = read_index(args.out)
    name = args.model or (meta["model"] if meta else journal_model(args.out) or DEFAULT_MODEL)
    if meta and (meta["model"], meta["kind"]) != (model_id(name), kind):
        raise CLIError(f"{args.out} holds {meta['kind']} embeddings from {meta['model']}; use another --out "
                       f"for {kind} embeddings from {model_id(name)}")
    model, processor = load_model(name)
    model.release_weights = False  # many batches: keep the weights mapped in (faster; see AltCLIPModel)
    meta = meta or {"format": INDEX_FORMAT, "model": model_id(name), "kind": kind,
                    "dim": int(model.config.projection_dim), "sources": []}
    header = {key: meta[key] for key in ("format", "model", "kind", "dim")}
    try:
        new_sources, new_rows = read_journal(args.out, header, warn)
        if new_sources:  # an interrupted run: keep its work
            meta["sources"] = write_index(args.out, meta, rows, new_sources, new_rows)
            meta, rows = read_index(args.out)
        done = set(meta["sources"])
        todo = [s for s in sources if s not in done]
        embedded = run_embedding(args, model, processor, kind, header, todo)
        if todo or not Path(args.out).exists():
            new_sources, new_rows = read_journal(args.out, header, warn)
            meta["sources"] = write_index(args.out, meta, rows, new_sources, new_rows)
    except OSError as e:
        raise CLIError(f"cannot write {args.out}: {one_line(e)}") from None
    print(f"{args.out}: {len(meta['sources'])} rows ({embedded} new, {len(sources) - len(todo)} already there)")


def run_embedding(args, model, processor, kind, header, todo):
    from tqdm import tqdm
    if not todo:
        return 0
    journal, count = Journal(args.out, header), 0
    with tqdm(total=len(todo), unit="img" if kind == "image" else "text", file=sys.stderr,
              desc="embedding", dynamic_ncols=True) as bar:
        MESSAGES.bar = bar
        try:
            for batch in batches(todo, args.batch_size):
                ok, rows = embed_batch(model, processor, kind, batch)
                if ok:
                    journal.append(ok, rows)
                    count += len(ok)
                bar.update(len(batch))
        finally:
            MESSAGES.bar = None
    journal.close()
    return count


# ---- search -----------------------------------------------------------------------------------------------

def top_k(rows, query, k, chunk=65536):  # exact search: [n, d] @ [d] in chunks (rows may be memory-mapped)
    scores = np.concatenate([np.asarray(rows[i:i + chunk]) @ query for i in range(0, len(rows), chunk)])
    k = min(k, len(scores))
    best = np.argpartition(-scores, k - 1)[:k]
    return best[np.argsort(-scores[best], kind="stable")], scores


def cmd_search(args):
    meta, rows = read_index(args.index)
    if meta is None:
        raise CLIError(f"no index {args.index} (and no {sidecar_path(args.index).name}); make one with "
                       f"`{PROG} embed ... --out {args.index}`")
    if not len(rows):
        raise CLIError(f"index {args.index} is empty")
    name = args.model or meta["model"]
    if model_id(name) != meta["model"]:
        warn(f"{args.index} was embedded with {meta['model']}; searching it with {name}")
    model, processor = load_model(name)
    query = text_features(model, processor, [args.query])[0]
    if query.shape[0] != rows.shape[1]:
        raise CLIError(f"{name} makes {query.shape[0]}-d embeddings but {args.index} holds {rows.shape[1]}-d")
    order, scores = top_k(rows, query, args.top_k)
    hits = [{"rank": r + 1, "score": float(scores[i]), "row": int(i), "source": meta["sources"][i]}
            for r, i in enumerate(order)]
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=2))
    for hit in [] if args.json else hits:
        print(f"{hit['rank']:>4}  {hit['score']:.4f}  {hit['source']}")


# ---- parity and the command line ----------------------------------------------------------------------------

def cmd_parity(args):
    from .parity import run_parity
    return run_parity(args)


def cmd_tune(args):
    from . import autotune
    show_library_messages()  # the kernels may compile first
    key = autotune.cache_key()
    path = autotune.cache_file(key)
    print(f"measuring on {key['cpu']} ({', '.join(key['isa'])}; Numba target {key['numba_cpu']}, "
          f"{key['numba_threads']} threads) ...", file=sys.stderr, flush=True)
    data = autotune.save(path, key, autotune.measure())
    autotune.reset()  # this process follows the new file too
    if args.json:
        print(json.dumps({**data, "cache_file": str(path)}, indent=2))
        return
    print(f"{'job':<24}{'Numba ms':>10}{'BLAS ms':>10}  auto runs")
    for m, t in data["seconds"]["gemm"].items():
        side = "Numba GEMM" if data["gemm_numba"][m] else "BLAS GEMM"
        print(f"{f'encoder-layer GEMMs M={m}':<24}{t['numba'] * 1e3:>10.2f}{t['blas'] * 1e3:>10.2f}  {side}")
    for job, t in data["seconds"]["attention"].items():
        print(f"{f'attention {job}':<24}{t['numba'] * 1e3:>10.2f}{t['blas'] * 1e3:>10.2f}")
    print(f"attention: {'the fused Numba kernel' if data['attention_numba'] else 'BLAS + Numba softmax'}")
    print(f"saved to {path}")


def cmd_warmup(args):
    from .kernels import warmup
    show_library_messages()
    start = time.perf_counter()
    kernels, cache = warmup()
    for name, status in kernels:
        print(f"{status:9s} {name}")
    compiled = sum(status == "compiled" for _, status in kernels)
    print(f"{len(kernels)} Numba kernels ready for this CPU ({compiled} compiled now, in "
          f"{time.perf_counter() - start:.1f} s), cached in {cache}")


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line instead of the usage block
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def build_parser():
    parser = Parser(prog=PROG, description="AltCLIP (multilingual CLIP) on the CPU with NumPy: zero-shot "
                    "classification, embeddings, search, and a layer-by-layer parity report.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    model_help = f"checkpoint directory or Hub id (default {DEFAULT_MODEL})"

    p = sub.add_parser("classify", help="rank labels for images (zero-shot)",
                       description="Rank the labels for each image by softmax(logits_per_image).")
    p.add_argument("images", nargs="+", metavar="IMAGE")
    p.add_argument("--labels", nargs="+", required=True, metavar="LABEL", help="labels, in any language")
    p.add_argument("--template", default="a photo of a {}.", help='"{}" is replaced by each label '
                   '(default: "a photo of a {}."; use "{}" for the bare label)')
    p.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    p.add_argument("--top-k", type=positive_int, help="show only the K best labels per image")
    p.add_argument("--batch-size", type=positive_int, default=8, help="images per forward pass (default 8)")
    p.add_argument("--json", action="store_true", help='print [{"image": ..., "labels": [{"label", "score"}]}]')
    p.set_defaults(run=cmd_classify)

    p = sub.add_parser("embed", help="embed images or text lines into a resumable .npy index",
                       description="Write L2-normalised float32 embeddings to OUT (.npy) and the source of "
                       "each row to OUT.json. Re-running skips what is already in the index, and resumes "
                       "an interrupted run.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--text", metavar="FILE.txt", help="embed each non-empty line of this file instead")
    p.add_argument("--out", required=True, metavar="FILE.npy")
    p.add_argument("--model", help=f"{model_help}; an existing index's model by default")
    p.add_argument("--batch-size", type=positive_int, default=16, help="inputs per forward pass (default 16)")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("search", help="rank an index's rows for a text query",
                       description="Exact cosine search of an index made by `embed`, with its model.")
    p.add_argument("index", metavar="INDEX.npy")
    p.add_argument("query", help="text in any language")
    p.add_argument("--top-k", type=positive_int, default=10, help="how many results (default 10)")
    p.add_argument("--model", help="default: the model that made the index")
    p.add_argument("--json", action="store_true", help='print [{"rank", "score", "row", "source"}]')
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("tune", help="measure which kernels are faster on this machine (auto backend)",
                       description="Time the Numba kernels against NumPy's BLAS at the model's shapes and save "
                       "what the auto backend should run (the first auto forward does this once by itself).")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.set_defaults(run=cmd_tune)

    from .parity import add_arguments
    p = sub.add_parser("parity", help="compare every layer with transformers",
                       description="Run altclip_np and transformers on the same inputs and report, layer by "
                       "layer, how far apart they are. Needs torch and transformers.")
    add_arguments(p, model_help)
    p.set_defaults(run=cmd_parity)

    p = sub.add_parser("warmup", help="compile the Numba kernels now, for later runs",
                       description="Compile (once per CPU and version) every Numba kernel the other commands "
                       "run, into Numba's disk cache (NUMBA_CACHE_DIR picks the directory), so no later run "
                       "pays for it: for Docker images and CI.")
    p.set_defaults(run=cmd_warmup)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.run(args) or 0
    except (CLIError, IndexFileError) as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (rerun the same command to resume an embed)", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one line for the user; the traceback on request
        if os.environ.get("ALTCLIP_NP_DEBUG"):
            raise
        print(f"{PROG}: error: {type(e).__name__}: {one_line(e)} (ALTCLIP_NP_DEBUG=1 shows the traceback)",
              file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
