"""altclip-np: BAAI's AltCLIP (multilingual CLIP) in NumPy, with Numba kernels; no torch at run time."""
import os

# OpenBLAS's idle worker spins on the other core for ~0.1 s after each call, which halves the speed of the
# parallel Numba kernel that runs next (measured: the Numba GEMM right after np.matmul, 87 vs 173 GFLOP/s).
# Sleeping at once costs OpenBLAS nothing measurable. OpenBLAS reads this when NumPy is first imported, so
# it only helps when altclip_np is imported first (as the altclip-np command does).
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

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
