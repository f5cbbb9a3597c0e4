"""The `altclip-np` command: zero-shot classification, embedding, search and a per-layer parity report.

    altclip-np classify cat.jpg --labels 猫 dog 고양이 [--template "a photo of a {}."] [--top-k 3] [--json]
    altclip-np embed photos/ --out photos.index       # resumable; [--scheduler local:2 | HOST:8786]
    altclip-np search photos.index "a red car" [--top-k 10] [--exact]
    altclip-np index build photos.index               # approximate index (needs faiss-cpu)
    altclip-np parity --model DIR                     # needs torch + transformers
    altclip-np warmup                                 # compile the Numba kernels now (Docker images, CI)

User errors print one line (`altclip-np: error: ...`) and exit 1 (2 for bad arguments); set
ALTCLIP_NP_DEBUG=1 to see the traceback of an unexpected error instead.
"""
import argparse
import contextlib
import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np

from . import index
from .features import (DEFAULT_MODEL, InputError, image_features, load_model, load_pixels, model_id, one_line,
                       text_features)

PROG = "altclip-np"
IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


class CLIError(Exception):
    """A user-facing error: printed as one line, exit status 1."""


def warn(message):
    from tqdm import tqdm
    tqdm.write(f"{PROG}: warning: {message}", file=sys.stderr)  # does not break a running progress bar


class LibraryMessages(logging.Handler):
    """Prints the library's messages (e.g. the one-time kernel compile) as `altclip-np: ...` lines on stderr.
    While the kernels compile, a running progress bar (embed's) keeps ticking, so it does not look frozen."""

    def emit(self, record):
        from tqdm import tqdm
        tqdm.write(f"{PROG}: {record.getMessage()}", file=sys.stderr)
        done = getattr(record, "done", None)  # set when the compile is over
        bars = [bar for bar in list(getattr(tqdm, "_instances", ())) if not bar.disable]
        if bars and done is not None:
            threading.Thread(target=tick, args=(bars[-1], done), daemon=True).start()


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


# ---- helpers ----------------------------------------------------------------------------

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


def cmd_embed(args):
    if bool(args.paths) == bool(args.text):
        raise CLIError("give image files/folders or --text FILE.txt (one kind of input per index)")
    out = Path(args.out)
    if out.suffix == ".npy" and not out.exists():
        raise CLIError(f"--out names an index directory now, not a .npy file: use e.g. --out {out.with_suffix('')}")
    if not out.parent.is_dir() or not os.access(out.parent, os.W_OK):
        raise CLIError(f"cannot write {out}: directory {out.parent} does not exist or is not writable")
    kind = "text" if args.text else "image"
    sources = text_sources(args.text) if args.text else image_sources(args.paths)
    with connect(args.scheduler) as client:
        try:
            done = index.embed(sources, out, model=args.model, kind=kind, client=client,
                               batch_size=args.batch_size, shard_rows=args.shard_size, wait=args.wait, warn=warn)
        except index.IndexBusyError:
            raise
        except OSError as e:  # e.g. a full disk: what was recorded before stays valid
            raise CLIError(f"cannot write {out}: {one_line(e)}") from None
    print(f"{out}: {done['rows']} rows ({done['new']} new, {done['already']} already there)")


@contextlib.contextmanager
def connect(scheduler):
    if scheduler is None:
        yield None
        return
    from .cluster import connect as dask_connect
    with dask_connect(scheduler) as client:
        yield client


# ---- search -----------------------------------------------------------------------------------------------

def open_existing(path):
    found = index.open_index(path)
    if found is None:
        raise CLIError(f"no index {path}; make one with `{PROG} embed ... --out {path}`")
    return found


def cmd_search(args):
    from . import ann
    found = open_existing(args.index)
    if not len(found):
        raise CLIError(f"index {args.index} is empty")
    name = args.model or found.model
    if model_id(name) != found.model:
        warn(f"{args.index} was embedded with {found.model}; searching it with {name}")
    model, processor = load_model(name)
    query = text_features(model, processor, [args.query])[0]
    if query.shape[0] != found.dim:
        raise CLIError(f"{name} makes {query.shape[0]}-d embeddings but {args.index} holds {found.dim}-d")
    hits = ann.search(found, query, args.top_k, exact=args.exact)
    if args.json:
        print(json.dumps(hits, ensure_ascii=False, indent=2))
    for hit in [] if args.json else hits:
        print(f"{hit['rank']:>4}  {hit['score']:.4f}  {hit['source']}")


def cmd_index_build(args):
    from . import ann
    info = ann.build(args.index, wait=args.wait, warn=warn)
    print(f"{args.index}: {info['method']} over {info['rows']} rows ({info['seconds']:.1f} s)")


def cmd_index_convert(args):
    n = index.convert(args.old, args.new, wait=args.wait, warn=warn)
    print(f"{args.new}: {n} rows from {args.old}")


# ---- parity and the command line ----------------------------------------------------------------------------

def cmd_parity(args):
    from .parity import run_parity
    return run_parity(args)


def cmd_tune(args):
    from . import autotune
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
        print(f"{f'encoder layer, M={m}':<24}{t['numba'] * 1e3:>10.2f}{t['blas'] * 1e3:>10.2f}  {side}")
    for job, t in data["seconds"]["attention"].items():
        side = "fused Numba" if data["attention_numba"][job.split("x")[1]] else "BLAS + Numba softmax"
        print(f"{f'attention {job}':<24}{t['numba'] * 1e3:>10.2f}{t['blas'] * 1e3:>10.2f}  {side}")
    print(f"saved to {path}")


def cmd_warmup(args):
    from .kernels import warmup
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

    p = sub.add_parser("embed", help="embed images or text lines into an index directory (resumable)",
                       description="Add L2-normalised float32 embeddings of the inputs to the index directory "
                       "OUT as new shards. Inputs already there are skipped (images whose size or mtime changed "
                       "are embedded again), so rerunning resumes an interrupted run.")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files, or folders searched recursively")
    p.add_argument("--text", metavar="FILE.txt", help="embed each non-empty line of this file instead")
    p.add_argument("--out", required=True, metavar="INDEX", help="index directory (created if missing)")
    p.add_argument("--model", help=f"{model_help}; an existing index's model by default")
    p.add_argument("--batch-size", type=positive_int, default=16, help="inputs per forward pass (default 16)")
    p.add_argument("--shard-size", type=positive_int, default=1024, help="inputs per shard, the most an "
                   "interruption can lose (default 1024; smaller on a cluster so every worker has work)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="embed on a Dask cluster: a scheduler address "
                   '(tcp://HOST:8786) or local:N for N local worker processes (pip install "altclip-np[dask]")')
    p.add_argument("--wait", action="store_true", help="if another run is writing INDEX, wait for it "
                   "(default: fail at once)")
    p.set_defaults(run=cmd_embed)

    p = sub.add_parser("search", help="rank an index's rows for a text query",
                       description="Cosine search of an index made by `embed`, with its model: approximate "
                       "when `index build` made an approximate index, else (or with --exact) exhaustive.")
    p.add_argument("index", metavar="INDEX")
    p.add_argument("query", help="text in any language")
    p.add_argument("--top-k", type=positive_int, default=10, help="how many results (default 10)")
    p.add_argument("--model", help="default: the model that made the index")
    p.add_argument("--exact", action="store_true", help="exhaustive search even if there is an approximate index")
    p.add_argument("--json", action="store_true", help='print [{"rank", "score", "row", "source"}]')
    p.set_defaults(run=cmd_search)

    p = sub.add_parser("tune", help="measure which kernels are faster on this machine (auto backend)",
                       description="Time the Numba kernels against NumPy's BLAS at the model's shapes and save "
                       "what the auto backend should run (the first auto forward does this once by itself).")
    p.add_argument("--json", action="store_true", help="print the measurement as JSON")
    p.set_defaults(run=cmd_tune)

    p = sub.add_parser("index", help="build an approximate index, or convert an old single-file index",
                       description="Maintain an index directory.")
    tasks = p.add_subparsers(dest="task", required=True, metavar="TASK")
    t = tasks.add_parser("build", help="build an approximate (faiss IVF) index beside the shards",
                         description='Build a faiss IVF index of every live row (pip install "altclip-np[faiss]"); '
                         "search then uses it, and searches shards added later exhaustively.")
    t.add_argument("index", metavar="INDEX")
    t.add_argument("--wait", action="store_true", help="wait for a run writing INDEX instead of failing")
    t.set_defaults(run=cmd_index_build)
    t = tasks.add_parser("convert", help="copy an old FILE.npy + FILE.npy.json index into an index directory",
                         description="Copy a single-file index (before format 2) into a new index directory.")
    t.add_argument("old", metavar="FILE.npy")
    t.add_argument("new", metavar="INDEX")
    t.add_argument("--wait", action="store_true", help="wait for a run writing INDEX instead of failing")
    t.set_defaults(run=cmd_index_convert)

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
    show_library_messages()  # e.g. that the kernels compile, once, before a first result
    try:
        return args.run(args) or 0
    except (CLIError, InputError, OSError) as e:  # IndexFileError is an InputError too
        print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
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
