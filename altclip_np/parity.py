"""`altclip-np parity`: run altclip_np and transformers on the same inputs and compare them layer by layer.

Both models get the same input_ids / pixel_values (from altclip_np's processor); the two processors are
compared too (first rows). transformers runs in float32 with eager attention. torch and transformers are
imported only here, inside `run_parity`, so altclip_np never needs them otherwise.

Per layer: max |ours - ref|, max rel = max |ours - ref| / max |ref| (relative to the tensor's scale, which
stays meaningful where ref is near 0), and the cosine of the flattened tensors (in float64).
"""
import importlib
import json
import logging

import numpy as np

from .features import DEFAULT_MODEL, InputError, load_model, load_pixels, one_line

DEFAULT_TEXTS = ["a photo of a cat", "一只猫的照片", "고양이 사진", "Ein Foto von einem Hund im Schnee"]
DEFAULT_TOLERANCE = 1e-4


def add_arguments(parser, model_help):
    parser.add_argument("--model", default=DEFAULT_MODEL, help=model_help)
    parser.add_argument("--text", nargs="+", metavar="TEXT", help="texts to feed the text tower "
                        "(default: a few short captions in 4 languages)")
    parser.add_argument("--image", nargs="+", metavar="IMAGE", help="image files (default: two random images)")
    parser.add_argument("--tol", type=float, default=DEFAULT_TOLERANCE,
                        help=f"a layer fails when its max rel diff exceeds this (default {DEFAULT_TOLERANCE:g})")
    parser.add_argument("--json", action="store_true", help="print the table as JSON")


def compare(ours, ref):
    """{max_abs, max_rel, cosine} of two arrays, or {error} when their shapes differ."""
    a, b = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    if a.shape != b.shape:
        return {"shape": list(b.shape), "error": f"shape {a.shape} != reference {b.shape}"}
    diff = float(np.abs(a - b).max(initial=0.0))
    scale = float(np.abs(b).max(initial=0.0))
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    cosine = float(a.ravel() @ b.ravel() / norms) if norms else float(np.array_equal(a, b))
    return {"shape": list(b.shape), "max_abs": diff, "max_rel": diff / scale if scale else diff, "cosine": cosine}


def report(pairs, tol):
    """[(name, ours, ref)] -> (rows, first failing layer name or None)."""
    rows = []
    for name, ours, ref in pairs:
        row = {"layer": name, **compare(ours, ref)}
        row["ok"] = "error" not in row and row["max_rel"] <= tol
        rows.append(row)
    first = next((row["layer"] for row in rows if not row["ok"]), None)
    return rows, first


def format_table(rows, first, tol):
    width = max(len(row["layer"]) for row in rows) + 2
    lines = [f"{'layer':<{width}}{'shape':<18}{'max abs':>11}{'max rel':>11}{'1 - cosine':>12}"]
    for row in rows:
        shape = "x".join(map(str, row["shape"]))
        if "error" in row:
            lines.append(f"{row['layer']:<{width}}{shape:<18}  {row['error']}  <-- FAIL")
            continue
        mark = "" if row["ok"] else "  <-- past tolerance"
        lines.append(f"{row['layer']:<{width}}{shape:<18}{row['max_abs']:>11.3e}{row['max_rel']:>11.3e}"
                     f"{1 - row['cosine']:>12.2e}{mark}")
    verdict = f"first layer past tolerance: {first}" if first else "every layer is within tolerance"
    lines.append(f"{verdict} (max rel > {tol:g} fails; max rel = max|ours - ref| / max|ref|)")
    return "\n".join(lines)


def default_images(seed=0):
    """Two random RGB images of different shapes, so resizing and cropping are exercised."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)) for shape in ((64, 48, 3), (40, 80, 3))]


def import_reference():
    try:
        return importlib.import_module("torch"), importlib.import_module("transformers")
    except ImportError as e:
        raise InputError(f"parity needs torch and transformers installed (pip install torch transformers): {e}")


def our_pairs(model, inputs):
    """{layer name: our tensor}, every intermediate named as in `torch_layers`."""
    from . import vision
    from .layers import Params
    ops = model._ops()  # with the model's weight panels
    layer_norm, linear = ops.layer_norm, ops.linear
    w, cfg = model.weights, model.config
    out = model(**inputs, output_hidden_states=True)
    text, vis = out.text_model_output, out.vision_model_output
    layers = {"text.embeddings": text.hidden_states[0]}
    layers.update({f"text.layer.{i}": h for i, h in enumerate(text.hidden_states[1:])})
    layers["text.pre_LN"] = layer_norm(text.hidden_states[-1], w["text_model.pre_LN.weight"],
                                       w["text_model.pre_LN.bias"], cfg.text_config.layer_norm_eps)
    layers["text.transformation"] = text.last_hidden_state
    layers["text.projection"] = linear(text.last_hidden_state[:, 0], w["text_projection.weight"])
    layers["vision.embeddings"] = vision.embeddings(Params(w).vision_model.embeddings, cfg.vision_config,
                                                    inputs["pixel_values"], False, linear)
    layers["vision.pre_layrnorm"] = vis.hidden_states[0]
    layers.update({f"vision.layer.{i}": h for i, h in enumerate(vis.hidden_states[1:])})
    layers["vision.post_layernorm"] = vis.pooler_output
    layers["vision.projection"] = linear(vis.pooler_output, w["visual_projection.weight"])
    layers.update(text_embeds=out.text_embeds, image_embeds=out.image_embeds, logits_per_image=out.logits_per_image)
    # the embedding-only path (padding left out, last layer on the pooled token), against the same projections
    layers["encode_text"] = model.encode_text(inputs["input_ids"], inputs["attention_mask"])
    layers["encode_image"] = model.encode_image(inputs["pixel_values"])
    return layers


def torch_layers(torch, ref, inputs):
    """The same tensors from transformers: hidden states, plus forward hooks on the modules in between."""
    captured = {}

    def keep(name):
        return lambda module, args, output: captured.__setitem__(name, output)

    modules = {"text.pre_LN": ref.text_model.pre_LN, "text.projection": ref.text_projection,
               "vision.embeddings": ref.vision_model.embeddings, "vision.projection": ref.visual_projection}
    hooks = [module.register_forward_hook(keep(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            out = ref(**{k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()},
                      output_hidden_states=True)
    finally:
        for hook in hooks:
            hook.remove()
    text, vis = out.text_model_output, out.vision_model_output
    layers = {"text.embeddings": text.hidden_states[0]}
    layers.update({f"text.layer.{i}": h for i, h in enumerate(text.hidden_states[1:])})
    layers.update({"text.pre_LN": captured["text.pre_LN"], "text.transformation": text.last_hidden_state,
                   "text.projection": captured["text.projection"], "vision.embeddings": captured["vision.embeddings"],
                   "vision.pre_layrnorm": vis.hidden_states[0]})
    layers.update({f"vision.layer.{i}": h for i, h in enumerate(vis.hidden_states[1:])})
    layers.update({"vision.post_layernorm": vis.pooler_output, "vision.projection": captured["vision.projection"],
                   "text_embeds": out.text_embeds, "image_embeds": out.image_embeds,
                   "logits_per_image": out.logits_per_image, "encode_text": captured["text.projection"],
                   "encode_image": captured["vision.projection"]})
    return {name: t.detach().double().numpy() for name, t in layers.items()}


def processor_pairs(transformers, name, texts, images, ours):
    """Rows comparing the two processors' outputs (empty, with a note, if transformers' cannot load)."""
    try:
        ref = transformers.AltCLIPProcessor.from_pretrained(name)(text=texts, images=images, padding=True,
                                                                  return_tensors="np")
    except Exception as e:  # noqa: BLE001 - the model comparison is still worth running
        logging.getLogger("altclip_np").warning(  # the command prints it as `altclip-np: warning: ...`
            f"warning: transformers' AltCLIPProcessor failed ({type(e).__name__}: {e}); processors not compared")
        return []
    return [(f"processor.{key}", ours[key], np.asarray(ref[key])) for key in
            ("input_ids", "attention_mask", "pixel_values")]


def run_parity(args):
    torch, transformers = import_reference()
    model, processor = load_model(args.model)
    texts = args.text or DEFAULT_TEXTS
    images = [str(path) for path in args.image] if args.image else default_images()
    pixels = [load_pixels(processor, path) for path in images] if args.image else None
    enc = processor(text=texts, images=images, padding=True, return_tensors="np")
    if pixels is not None:  # load_pixels gave a clear error for unreadable files already
        enc["pixel_values"] = np.stack(pixels)
    inputs = {k: enc[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    try:
        ref = transformers.AltCLIPModel.from_pretrained(args.model, attn_implementation="eager",
                                                        dtype=torch.float32).eval()
    except Exception as e:  # noqa: BLE001 - any failure to load the reference is the user's to fix
        raise InputError(f"transformers cannot load {args.model!r}: {one_line(e)}") from None
    ours, theirs = our_pairs(model, inputs), torch_layers(torch, ref, inputs)
    pairs = processor_pairs(transformers, args.model, texts, images, inputs)
    pairs += [(name, ours[name], theirs[name]) for name in theirs]
    rows, first = report(pairs, args.tol)
    if args.json:
        print(json.dumps({"model": args.model, "tolerance": args.tol, "first_past_tolerance": first,
                          "rows": rows}, indent=1))
    else:
        print(format_table(rows, first, args.tol))
    return 1 if first else 0
