"""altclip-np: BAAI's AltCLIP (multilingual CLIP) in NumPy, with Numba kernels; no torch at run time."""
from . import runtime  # noqa: F401  (first: sets OpenBLAS's thread timeout before NumPy loads)
from .backend import get_backend, set_backend
from .config import AltCLIPConfig, AltCLIPTextConfig, AltCLIPVisionConfig
from .image_processing import CLIPImageProcessor
from .model import AltCLIPModel, AltCLIPTextModel, AltCLIPVisionModel
from .processor import AltCLIPProcessor
from .tokenizer import BatchEncoding, XLMRobertaTokenizer

__all__ = ["AltCLIPConfig", "AltCLIPTextConfig", "AltCLIPVisionConfig", "AltCLIPModel", "AltCLIPTextModel",
           "AltCLIPVisionModel", "AltCLIPProcessor", "CLIPImageProcessor", "XLMRobertaTokenizer", "BatchEncoding",
           "get_backend", "set_backend"]
__version__ = "0.1.0"
