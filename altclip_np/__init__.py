"""altclip-np: BAAI's AltCLIP (multilingual CLIP) in NumPy, with Numba kernels; no torch at run time."""
from .backend import get_backend, set_backend
from .config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from .model import AltCLIPModel, AltCLIPTextModel, AltCLIPVisionModel

__all__ = ["AltCLIPConfig", "AltCLIPTextConfig", "AltCLIPVisionConfig", "AltCLIPModel", "AltCLIPTextModel",
           "AltCLIPVisionModel", "get_backend", "set_backend"]
__version__ = "0.1.0"
