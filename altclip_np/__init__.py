"""altclip-np: BAAI's AltCLIP (multilingual CLIP) in NumPy, with Numba kernels; no torch at run time.

The public names are imported on first use (PEP 562), so `import altclip_np` loads nothing heavy: the
`altclip-np` command can tune the process (`runtime.tune_process()`) before NumPy is loaded.
"""
import importlib

_PUBLIC = {
    "AltCLIPConfig": "config", "AltCLIPTextConfig": "config", "AltCLIPVisionConfig": "config",
    "AltCLIPModel": "model", "AltCLIPTextModel": "model", "AltCLIPVisionModel": "model",
    "AltCLIPProcessor": "processor", "CLIPImageProcessor": "image_processing",
    "XLMRobertaTokenizer": "tokenizer", "BatchEncoding": "encoding",
    "get_backend": "backend", "set_backend": "backend",
}
__all__ = list(_PUBLIC)
__version__ = "0.1.0"


def __getattr__(name):
    if name.startswith("_"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f".{_PUBLIC[name]}", __name__), name)
    else:
        try:  # a submodule, e.g. altclip_np.backend
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
