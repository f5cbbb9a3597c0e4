"""CLIP image preprocessing on Pillow + NumPy, in parity with transformers 5's `CLIPImageProcessorPil`.

Steps, each as transformers' PIL backend does them: load (paths: EXIF transpose, then `convert("RGB")`), convert to
RGB (alpha composited onto white), resize the shortest edge with Pillow (output long edge truncated with `int()`),
center crop (zero padding when too small), rescale by 1/255 in float64 then float32, normalize in float32.
"""
import io
import json
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .config import read_json
from .encoding import BatchEncoding

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
PREPROCESSOR_FILE = "preprocessor_config.json"
PROCESSOR_FILE = "processor_config.json"
_ALLOWED_CHANNELS = (1, 3, 4)
# The largest image (width x height, read from the file's header before anything is decoded) that
# load_image and the processor decode: 120 megapixels is a 100 MP camera's frame with room to spare, and
# ~0.36 GB as RGB. Set it (or pass max_pixels) to go further; independent of PIL.Image.MAX_IMAGE_PIXELS.
MAX_IMAGE_PIXELS = 120_000_000
_RESAMPLE = range(6)  # PIL's NEAREST, LANCZOS, BILINEAR, BICUBIC, BOX, HAMMING


def _size_dict(size, square):
    """Accept the legacy int form (`size: 224`) and the current dict form; sides are positive ints whose
    output image stays within MAX_IMAGE_PIXELS (a config must not make the processor allocate without bound)."""
    if isinstance(size, int) and not isinstance(size, bool):
        size = {"height": size, "width": size} if square else {"shortest_edge": size}
    elif isinstance(size, (list, tuple)) and len(size) == 2:
        size = {"height": size[0], "width": size[1]}
    if isinstance(size, dict) and ("shortest_edge" in size or {"height", "width"} <= size.keys()):
        sides = [size["shortest_edge"]] * 2 if "shortest_edge" in size else [size["height"], size["width"]]
        if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sides) \
                and sides[0] * sides[1] <= MAX_IMAGE_PIXELS:
            return {k: v for k, v in size.items() if k in ("shortest_edge", "height", "width")}
    raise ValueError(f"expected size as a positive int, (height, width) or a dict with 'shortest_edge' or "
                     f"'height' and 'width' (at most {MAX_IMAGE_PIXELS} pixels), got {str(size)[:200]}")


class CLIPImageProcessor:
    """Turns images into CLIP `pixel_values` (float32, N x 3 x H x W)."""

    def __init__(self, do_resize=True, size=None, resample=3, do_center_crop=True, crop_size=None,
                 do_rescale=True, rescale_factor=1 / 255, do_normalize=True, image_mean=None, image_std=None,
                 do_convert_rgb=True, **kwargs):
        self.do_resize = do_resize
        self.size = _size_dict(224 if size is None else size, square=False)
        if resample not in _RESAMPLE or isinstance(resample, bool):
            raise ValueError(f"resample must be one of PIL's filters 0-5, got {str(resample)[:50]}")
        self.resample = int(resample)
        self.do_center_crop = do_center_crop
        self.crop_size = _size_dict(224 if crop_size is None else crop_size, square=True)
        self.do_rescale = do_rescale
        self.rescale_factor = rescale_factor
        self.do_normalize = do_normalize
        self.image_mean = list(CLIP_MEAN if image_mean is None else image_mean)
        self.image_std = list(CLIP_STD if image_std is None else image_std)
        self.do_convert_rgb = do_convert_rgb

    # ---- loading and saving -------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, name_or_path, revision=None, cache_dir=None, local_files_only=False, **kwargs):
        """Read `preprocessor_config.json`, or the `image_processor` section of `processor_config.json`."""
        from .hub import resolve_pretrained

        root = Path(resolve_pretrained(name_or_path, [PREPROCESSOR_FILE, PROCESSOR_FILE], revision=revision,
                                       cache_dir=cache_dir, local_files_only=local_files_only))
        if (root / PREPROCESSOR_FILE).is_file():
            config = read_json(root / PREPROCESSOR_FILE)
        elif (root / PROCESSOR_FILE).is_file():
            config = read_json(root / PROCESSOR_FILE).get("image_processor")
            if not isinstance(config, dict):
                raise OSError(f"{root / PROCESSOR_FILE} has no 'image_processor' section")
        else:
            raise OSError(f"{name_or_path}: expected {PREPROCESSOR_FILE} or {PROCESSOR_FILE} in {root}")
        config.update(kwargs)
        try:
            return cls(**config)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{root}: bad image processor config: {e}") from None

    def to_dict(self):
        return {
            "image_processor_type": "CLIPImageProcessor", "do_resize": self.do_resize, "size": self.size,
            "resample": self.resample, "do_center_crop": self.do_center_crop, "crop_size": self.crop_size,
            "do_rescale": self.do_rescale, "rescale_factor": self.rescale_factor,
            "do_normalize": self.do_normalize, "image_mean": self.image_mean, "image_std": self.image_std,
            "do_convert_rgb": self.do_convert_rgb,
        }

    def save_pretrained(self, save_directory):
        out = Path(save_directory)
        out.mkdir(parents=True, exist_ok=True)
        (out / PREPROCESSOR_FILE).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")
        return out

    # ---- processing ---------------------------------------------------------------------------------------

    def __call__(self, images, return_tensors="np"):
        """Preprocess one image or a list: PIL images, HWC/CHW NumPy arrays (uint8 or float) or file paths."""
        if return_tensors not in ("np", "numpy", None):
            raise ValueError(f"return_tensors must be 'np' or None, got {return_tensors!r}")
        items = list(images) if isinstance(images, (list, tuple)) else [images]
        if not items:
            raise ValueError("images must be an image or a non-empty list of images, got an empty list")
        pixels = [self.preprocess_one(image) for image in items]
        if return_tensors is None:
            return BatchEncoding(pixel_values=pixels)
        return BatchEncoding(pixel_values=np.stack(pixels))

    def preprocess_one(self, image):
        image = self._to_chw_array(image)
        if image.shape[1] == 0 or image.shape[2] == 0:
            raise ValueError(f"image has zero size (channels, height, width) = {image.shape}")
        if self.do_resize:
            image = self._resize(image)
        if self.do_center_crop:
            image = _center_crop(image, self.crop_size["height"], self.crop_size["width"])
        if self.do_rescale:
            image = (image.astype(np.float64) * self.rescale_factor).astype(np.float32)
        if self.do_normalize:
            if not np.issubdtype(image.dtype, np.floating):
                image = image.astype(np.float32)
            mean = np.array(self.image_mean, dtype=image.dtype)
            std = np.array(self.image_std, dtype=image.dtype)
            image = ((image.T - mean) / std).T
        return image

    def _to_chw_array(self, image):
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        if isinstance(image, Image.Image):
            if image.width == 0 or image.height == 0:
                raise ValueError(f"image has zero size {image.size}")
            _check_pixels(image, "image")  # a lazily opened image is not decoded yet
            image = _pil_to_rgb(image) if self.do_convert_rgb else np.array(image)
            return image[None] if image.ndim == 2 else np.moveaxis(image, -1, 0)
        if isinstance(image, np.ndarray):
            return self._array_to_chw(image)
        raise TypeError(f"expected a PIL image, a NumPy array or a file path, got {type(image).__name__}")

    def _array_to_chw(self, image):
        if image.ndim != 3:
            raise ValueError(f"expected a NumPy image of shape (H, W, C) or (C, H, W), got shape {image.shape}")
        if image.size == 0:
            raise ValueError(f"image has zero size, shape {image.shape}")
        # transformers' inference: channels first wins when both ends could be channels
        if image.shape[0] in _ALLOWED_CHANNELS:
            image = np.moveaxis(image, 0, -1)
        elif image.shape[-1] not in _ALLOWED_CHANNELS:
            raise ValueError(f"expected 1, 3 or 4 channels (first or last axis), got shape {image.shape}")
        if self.do_convert_rgb:
            image = _array_to_rgb(image)
        return np.moveaxis(image, -1, 0)

    def _resize(self, image):
        height, width = image.shape[1:]
        if "shortest_edge" in self.size:
            size = self.size["shortest_edge"]
            short, long = (width, height) if width <= height else (height, width)
            new_short, new_long = size, int(size * long / short)
            new_h, new_w = (new_long, new_short) if width <= height else (new_short, new_long)
        else:
            new_h, new_w = self.size["height"], self.size["width"]
        return _pil_resize(image, new_h, new_w, self.resample)


class ImageTooLargeError(ValueError):
    """An image has more pixels than MAX_IMAGE_PIXELS (or Pillow's own decompression-bomb bound)."""


def _check_pixels(image, what, max_pixels=None):
    limit = MAX_IMAGE_PIXELS if max_pixels is None else max_pixels
    if image.width * image.height > limit:
        raise ImageTooLargeError(f"refusing to decode {what}: {image.width} x {image.height} = {image.width * image.height} "
                         f"pixels, more than altclip_np.image_processing.MAX_IMAGE_PIXELS = {limit}")


class _CappedFile(io.BufferedReader):
    """A file whose reads never ask for more than it holds: Pillow reads chunk lengths from the file (a PNG
    chunk may claim 2 GiB), and a buffered read allocates the size asked for before reading."""

    def read(self, size=-1):
        if size is not None and size > 0:
            size = min(size, max(os.fstat(self.fileno()).st_size - self.tell(), 0))
            if size == 0:
                return b""
        return super().read(size)


def load_image(path, max_pixels=None):
    """Open an image file as transformers' `load_image` does: EXIF transpose, then RGB.

    Its size is read from the header first: more than `max_pixels` (default MAX_IMAGE_PIXELS) -> ValueError,
    nothing decoded."""
    try:
        with _CappedFile(io.FileIO(path)) as f, Image.open(f) as image:  # reads the header only
            _check_pixels(image, path, max_pixels)
            image = ImageOps.exif_transpose(image)
            image = image.convert("RGB")  # forces the full decode, so truncated files fail here
    except ImageTooLargeError:
        raise
    except Image.DecompressionBombError as err:
        raise ImageTooLargeError(f"refusing to decode {path}: {err}") from err
    except (OSError, SyntaxError, ValueError) as err:
        raise OSError(f"cannot read image file {path}: {err}") from err
    return image


def _pil_to_rgb(image):
    """RGB uint8 HWC; transparency is composited onto white."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.array(image.convert("RGB"))


def _array_to_rgb(image):
    """HWC with 1, 3 or 4 channels -> 3 channels, same dtype; alpha composited onto white."""
    channels = image.shape[-1]
    if channels == 1:
        return np.repeat(image, 3, axis=-1)
    if channels == 3:
        return image
    floating = np.issubdtype(image.dtype, np.floating)
    if floating and (image.min() < 0.0 or image.max() > 1.0):
        raise ValueError(f"a float RGBA image must be in [0, 1], got [{image.min()}, {image.max()}]")
    white = 1.0 if floating else 255
    alpha = image[..., 3:4] / white
    composite = alpha * image[..., :3] + (1 - alpha) * white
    return composite.astype(image.dtype) if floating else np.round(composite).astype(image.dtype)


def _pil_resize(image, height, width, resample):
    """Resize a CHW array through an 8-bit PIL image; floats in [0, 1] are scaled to 0..255 and back."""
    scale_back = False
    if image.dtype != np.uint8:
        if np.allclose(image, image.astype(int)):
            if image.min() < 0 or image.max() > 255:
                raise ValueError(f"integer-valued image must be in [0, 255], got [{image.min()}, {image.max()}]")
        elif image.min() >= 0 and image.max() <= 1:
            scale_back = True
            image = (image.astype(np.float64) * 255).astype(np.float32)
        else:
            raise ValueError(f"float image must be in [0, 1] or integer-valued in [0, 255], "
                             f"got [{image.min()}, {image.max()}]")
    hwc = np.moveaxis(image, 0, -1)
    if hwc.shape[-1] == 1:
        hwc = hwc[..., 0]
    resized = np.array(Image.fromarray(hwc.astype(np.uint8)).resize((width, height), resample=resample))
    if resized.ndim == 2:
        resized = resized[..., None]
    resized = np.moveaxis(resized, -1, 0)
    if scale_back:
        resized = (resized.astype(np.float64) * (1 / 255)).astype(np.float32)
    return resized


def _center_crop(image, crop_h, crop_w):
    """Center crop a CHW array, zero-padding (centered, rounding up) when it is smaller than the crop."""
    height, width = image.shape[1:]
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    if top >= 0 and left >= 0:
        return image[:, top:top + crop_h, left:left + crop_w]
    new_h, new_w = max(crop_h, height), max(crop_w, width)
    padded = np.zeros_like(image, shape=image.shape[:-2] + (new_h, new_w))
    pad_top, pad_left = -(-(new_h - height) // 2), -(-(new_w - width) // 2)
    padded[:, pad_top:pad_top + height, pad_left:pad_left + width] = image
    top, left = top + pad_top, left + pad_left
    return padded[:, max(0, top):min(new_h, top + crop_h), max(0, left):min(new_w, left + crop_w)]
