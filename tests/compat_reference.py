"""Reference outputs recorded on the main Python with transformers, checked on any supported Python without torch.

    python tests/compat_reference.py record DIR   # main Python: needs torch, transformers, regex, pytest
    python tests/compat_reference.py check DIR    # any Python with only altclip-np's run-time packages

`record` writes tiny random checkpoints, trained SentencePiece models, texts, images and what transformers (and,
for grapheme clusters, the `regex` package, whose Unicode 17 tables equal tokenizers') makes of them. `check`
runs altclip_np on the same files and compares: token ids and clusters exactly, pixel values within 1e-6 and
model outputs within 1e-5 (the bounds of test_image_processing.py and test_model.py). It prints one line per
group with the largest difference seen and exits 1 on any failure. tools/check_pythons.py runs it on each Python.
"""
import json
import sys
import time
from pathlib import Path

import numpy as np

PIXEL_TOL = 1e-6
MODEL_TOL = 1e-5
TOKENIZER_MODELS = ("v2000", "v1200_unk", "v1500_nfkc")  # test_tokenizer.MODELS
UNICODE_MODELS = ("v2000", "v1500_nfkc")  # nmt_nfkc (XLM-R's normalisation) and plain NFKC
BACKENDS = ("numpy", "numba")


# ---- texts whose clusters depend on the Unicode version ----------------------------------------------------

def unicode_cases():
    """Strings around every code point with a grapheme-break property (Unicode 17), and the symbols
    U+2190-2BFF that older code took for Extended_Pictographic. The contexts put a short mapped character
    ("²" -> "2", "µ" -> "μ") first, because tokenizers maps a cluster shorter than 6 UTF-8 bytes by its shortest
    mapped prefix (dropping what follows it): how such a cluster is cut is visible in the ids."""
    import regex

    from altclip_np.grapheme_table import CLASSES, STARTS

    assigned = regex.compile(r"[^\p{Cn}\p{Cs}]")  # Unicode 17
    ends = STARTS[1:] + (0x110000,)
    chars = [chr(o) for start, end, letter in zip(STARTS, ends, CLASSES) if letter != "O"
             for o in range(start, end, 97 if letter == "H" else 1)  # 1 in 97 of the 11172 Hangul syllables
             if assigned.match(chr(o))]
    chars += [chr(o) for o in range(0x2190, 0x2C00) if assigned.match(chr(o))]
    cases = []
    for c in dict.fromkeys(chars):
        cases += ["²" + c, "µ" + c + "x", "²\u0301" + c, "क्" + c + "्क", "👍\u200d" + c]
    return cases


def _flatten(out, prefix, into):
    """{"a/b/0": array} from nested outputs (dict-like, tuples, tensors or arrays), None fields left out."""
    if out is None:
        return into
    if hasattr(out, "keys"):
        for k in out.keys():
            _flatten(out[k], f"{prefix}/{k}", into)
    elif isinstance(out, (tuple, list)):
        for i, v in enumerate(out):
            _flatten(v, f"{prefix}/{i}", into)
    else:
        into[prefix] = out.detach().numpy() if hasattr(out, "detach") else np.asarray(out)
    return into


# ---- record (main Python, with transformers) ---------------------------------------------------------------

def _record_tokenizers(root):
    import regex
    import transformers
    from test_tokenizer import LINES, MODELS, train_model

    cases = unicode_cases()
    expected = {"lines": LINES, "unicode": cases, "ids": {}, "clusters": {}}
    for name in TOKENIZER_MODELS:
        ref = transformers.XLMRobertaTokenizer.from_pretrained(train_model(root / "tokenizers" / name, **MODELS[name]))
        ids = {"lines": ref(LINES)["input_ids"],
               "batch": ref(LINES, padding="max_length", truncation=True, max_length=48)["input_ids"]}
        if name in UNICODE_MODELS:
            ids["unicode"] = ref(cases)["input_ids"]
        expected["ids"][name] = ids
    expected["clusters"] = [regex.findall(r"\X", t) for t in LINES + cases]
    (root / "tokenizers.json").write_text(json.dumps(expected, ensure_ascii=False), encoding="utf-8")


def _record_images(root):
    import warnings

    from PIL import Image
    from test_image_processing import CASES, clip_pil

    ref = clip_pil.CLIPImageProcessorPil()
    (root / "images").mkdir()
    arrays, pixels = {}, {}
    for name in sorted(CASES):
        image = CASES[name]()
        if isinstance(image, np.ndarray):
            arrays[name] = image
        elif image.mode in ("RGB", "RGBA", "L", "LA", "P", "I;16", "1"):  # PNG keeps these losslessly
            image.save(root / "images" / f"{name}.png")
            image = Image.open(root / "images" / f"{name}.png")
        else:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            pixels[name] = ref(image, return_tensors="np")["pixel_values"]
    np.savez(root / "images" / "arrays.npz", **arrays)
    np.savez(root / "images" / "pixel_values.npz", **pixels)


def _model_inputs(name):
    from conftest import TINY_CONFIGS, images, text_batch

    cfg = TINY_CONFIGS[name]
    ids, mask = text_batch(cfg["text_config"], batch=3, pad_rows=(1, 2))
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": images(cfg["vision_config"], batch=3)}


def _record_models(root):
    from conftest import TINY_CONFIGS, make_tiny_checkpoint, torch_run

    for name in TINY_CONFIGS:
        ref = make_tiny_checkpoint(root / "models" / name, name)
        x = _model_inputs(name)
        text, pixels = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"]), x["pixel_values"]
        out = {}
        _flatten(torch_run(ref, **text, pixel_values=pixels, return_loss=True, output_hidden_states=True,
                           output_attentions=True), "joint", out)
        _flatten(torch_run(ref.get_text_features, **text), "text_features", out)
        _flatten(torch_run(ref.get_image_features, pixel_values=pixels), "image_features", out)
        np.savez(root / "models" / f"{name}.npz", **{f"input/{k}": v for k, v in x.items()}, **out)


def record(root):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    _record_tokenizers(root)
    _record_images(root)
    _record_models(root)


# ---- check (any Python, run-time packages only) ------------------------------------------------------------

class Report:
    def __init__(self):
        self.failures, self.last = [], time.perf_counter()

    def group(self, name, ok, detail):
        seconds, self.last = time.perf_counter() - self.last, time.perf_counter()
        print(f"  {'ok  ' if ok else 'FAIL'} {name}: {detail} [{seconds:.1f} s]", flush=True)
        if not ok:
            self.failures.append(name)


def _first_mismatches(texts, got, expected, limit=5):
    bad = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    shown = "; ".join(f"{ascii(texts[i])}: {got[i]} != {expected[i]}" for i in bad[:limit])
    return bad, shown


def _check_tokenizers(root, report):
    from altclip_np.graphemes import graphemes
    from altclip_np.tokenizer import XLMRobertaTokenizer

    expected = json.loads((root / "tokenizers.json").read_text(encoding="utf-8"))
    texts = expected["lines"] + expected["unicode"]
    bad, shown = _first_mismatches(texts, [graphemes(t) for t in texts], expected["clusters"])
    report.group("grapheme clusters", not bad, f"{len(texts) - len(bad)}/{len(texts)} texts as regex's \\X "
                 f"(Unicode 17){'; first: ' + shown if bad else ''}")
    for name, ids in expected["ids"].items():
        tok = XLMRobertaTokenizer.from_pretrained(root / "tokenizers" / name)
        for part, want in ids.items():
            inputs = expected["unicode"] if part == "unicode" else expected["lines"]
            if part == "batch":
                got = tok(inputs, padding="max_length", truncation=True, max_length=48)["input_ids"]
            else:
                got = tok(inputs)["input_ids"]
            bad, shown = _first_mismatches(inputs, got, want)
            report.group(f"tokenizer {name} {part}", not bad, f"{len(inputs) - len(bad)}/{len(inputs)} texts give "
                         f"transformers' ids{'; first: ' + shown if bad else ''}")


def _check_images(root, report):
    from PIL import Image

    from altclip_np.image_processing import CLIPImageProcessor

    processor, worst, bad = CLIPImageProcessor(), 0.0, []
    arrays = np.load(root / "images" / "arrays.npz")
    expected = np.load(root / "images" / "pixel_values.npz")
    for name in expected.files:
        image = arrays[name] if name in arrays.files else Image.open(root / "images" / f"{name}.png")
        got = processor(image).pixel_values
        diff = float(np.abs(got - expected[name]).max()) if got.shape == expected[name].shape else np.inf
        worst = max(worst, diff)
        if not diff <= PIXEL_TOL:
            bad.append(f"{name} ({diff:.2g})")
    report.group("image processor", not bad, f"{len(expected.files)} images, max abs diff {worst:.2g} "
                 f"(bound {PIXEL_TOL:g}){'; over it: ' + ', '.join(bad) if bad else ''}")


def _check_models(root, report):
    import altclip_np

    before = altclip_np.get_backend()
    try:
        for backend in BACKENDS:
            altclip_np.set_backend(backend)
            _check_models_on(root, report, backend)
    finally:
        altclip_np.set_backend(before)


def _check_models_on(root, report, backend):
    from altclip_np import AltCLIPModel

    for path in sorted((root / "models").glob("*.npz")):
        ref = np.load(path)
        x = {k.split("/", 1)[1]: ref[k] for k in ref.files if k.startswith("input/")}
        model = AltCLIPModel.from_pretrained(root / "models" / path.stem)
        text, pixels = dict(input_ids=x["input_ids"], attention_mask=x["attention_mask"]), x["pixel_values"]
        out = {}
        _flatten(model(**text, pixel_values=pixels, return_loss=True, output_hidden_states=True,
                       output_attentions=True), "joint", out)
        _flatten(model.get_text_features(**text), "text_features", out)
        _flatten(model.get_image_features(pixel_values=pixels), "image_features", out)
        out["encode_text"] = model.encode_text(**text)
        out["encode_image"] = model.encode_image(pixel_values=pixels)
        want = {k: ref[k] for k in ref.files if not k.startswith("input/")}
        want["encode_text"] = want["text_features/pooler_output"]  # encode_* give the features' pooler_output
        want["encode_image"] = want["image_features/pooler_output"]
        missing = sorted(set(want) ^ set(out))
        diffs = {k: float(np.abs(out[k].astype(np.float64) - want[k]).max())
                 if np.shape(out[k]) == np.shape(want[k]) else np.inf for k in want if k in out}
        key = max(diffs, key=diffs.get)
        bad = [k for k, d in diffs.items() if not d <= MODEL_TOL]
        report.group(f"model {path.stem} ({backend})", not bad and not missing,
                     f"{len(diffs)} outputs, max abs diff {diffs[key]:.2g} at {key} (bound {MODEL_TOL:g})"
                     + (f"; fields differ: {missing}" if missing else "")
                     + (f"; over the bound: {bad[:5]}" if bad else ""))


def check(root):
    """Compare altclip_np on this Python with the recorded outputs; return the names of the failed groups."""
    import platform
    import unicodedata

    root, report = Path(root), Report()
    print(f"Python {platform.python_version()} (unicodedata {unicodedata.unidata_version}), numpy "
          f"{np.__version__}: checking against {root}", flush=True)
    start = time.perf_counter()
    _check_tokenizers(root, report)
    _check_images(root, report)
    _check_models(root, report)
    print(f"  {len(report.failures)} failed group(s) in {time.perf_counter() - start:.1f} s", flush=True)
    return report.failures


def main(argv):
    if len(argv) != 2 or argv[0] not in ("record", "check"):
        sys.exit("usage: compat_reference.py record|check DIR")
    if argv[0] == "record":
        sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, test_tokenizer, ...
        record(argv[1])
    else:
        sys.exit(1 if check(argv[1]) else 0)


if __name__ == "__main__":
    main(sys.argv[1:])
