"""Tokenizer time on one very long line with truncation (issue 15): altclip_np vs transformers' XLMRobertaTokenizer.

    python tools/bench_long_text.py [--mb 10] [--repeat 5] [--max-length 512] [--transformers]

A unigram SentencePiece model is trained on tests/data/multilingual.txt (no Hub access needed). Lines: the corpus
joined with spaces, one CJK run without spaces, the corpus without spaces, one repeated letter. Each side runs
in its own process (--side), interleaved, and reports the median; --transformers adds the reference side (slow:
it tokenizes the whole line, 10-45 s per 10 MB line) and checks that the ids agree.
"""
import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHAPES = ("words", "cjk_run", "no_spaces", "one_letter")


def lines(mb):
    text = [t for t in (ROOT / "tests" / "data" / "multilingual.txt").read_text("utf-8").split("\n") if t]
    bases = {"words": " ".join(text), "no_spaces": "".join(text).replace(" ", ""), "one_letter": "a",
             "cjk_run": "".join(t for t in text if any("\u4e00" <= c <= "\u9fff" for c in t)).replace(" ", "")}
    n = int(mb * 1_000_000)
    return {k: (v * (n // len(v) + 1))[:n] for k, v in bases.items()}


def side(name, model_dir, mb, max_length, shape):
    """One timed call in this process: -> (seconds, ids)."""
    line = lines(mb)[shape]
    if name == "ours":
        from altclip_np.tokenizer import XLMRobertaTokenizer
    else:
        from transformers import XLMRobertaTokenizer
    tok = XLMRobertaTokenizer.from_pretrained(model_dir)
    start = time.perf_counter()
    ids = tok(line, truncation=True, max_length=max_length)["input_ids"]
    return time.perf_counter() - start, ids


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mb", type=float, default=10)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-length", type=int, default=512)
    parser.add_argument("--transformers", action="store_true")
    parser.add_argument("--side", nargs=3, metavar=("NAME", "MODEL_DIR", "SHAPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side:
        seconds, ids = side(args.side[0], args.side[1], args.mb, args.max_length, args.side[2])
        print(json.dumps({"seconds": seconds, "ids": ids}))
        return
    sys.path.insert(0, str(ROOT / "tests"))
    from fuzz_targets import train_sentencepiece
    model_dir = Path(tempfile.mkdtemp(prefix="bench-long-text-"))
    train_sentencepiece(model_dir)
    sides = ["ours"] + ["transformers"] * args.transformers
    for shape in SHAPES:
        times, ids = {s: [] for s in sides}, {}
        for _ in range(args.repeat if not args.transformers else 1):
            for s in sides:  # interleaved, each in a fresh process
                out = subprocess.run([sys.executable, __file__, "--mb", str(args.mb), "--max-length",
                                      str(args.max_length), "--side", s, str(model_dir), shape],
                                     capture_output=True, text=True, check=True)
                result = json.loads(out.stdout.strip().splitlines()[-1])
                times[s].append(result["seconds"])
                ids[s] = result["ids"]
        report = {s: f"{statistics.median(t):.3f} s" for s, t in times.items()}
        if args.transformers:
            report["same_ids"] = ids["ours"] == ids["transformers"]
        print(f"{shape:>10} ({args.mb:g} MB, max_length {args.max_length}): {report}", flush=True)


if __name__ == "__main__":
    main()
