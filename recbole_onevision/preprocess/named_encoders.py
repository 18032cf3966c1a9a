"""Named image encoders with local weights: ``torchvision:<model>``, ``timm:<model>``, ``open_clip:<model>``.

Each is the library's own model, built without weights and loaded from a local file the user
names (a state dict saved by ``torch.save``, read by torch's safe loader, or a ``.safetensors``
file; open_clip also reads its own checkpoint formats). Nothing is downloaded: a missing file is
refused naming it. Images are preprocessed as the library does:

* ``torchvision:<model>``, a classification model (``torchvision.models.list_models(torchvision.models)``):
  the features are the input of its last linear layer (ResNet-50: the pooled 2048-d), the
  preprocessing its default weights' transforms (resize, centre crop, ImageNet normalisation).
* ``timm:<model>``: ``timm.create_model(name, num_classes=0)``, its pooled pre-logits features,
  preprocessed by ``timm.data.create_transform`` of the model's resolved data config (a name
  with a pretrained tag, ``convnext_tiny.fb_in22k``, resolves that weights' config).
* ``open_clip:<model>``: ``model.encode_image`` after the evaluation preprocess that
  ``open_clip.create_model_and_transforms`` returns.

Features are L2-normalised. :meth:`NamedEncoder.describe` (what a dataset records, and search
compares) names the model, the weights file and the file's SHA-256: photos embedded with other
weights, even under the same file name, are refused.
"""
from __future__ import annotations

import difflib
import hashlib
import importlib
import importlib.machinery
import importlib.util
import logging
import os
import sys

import numpy as np
import torch

from recbole_onevision.preprocess.image_encoder import PhotoEncoder, _pil

LIBRARIES = ("torchvision", "timm", "open_clip")
INSTALL = 'pip install -e ".[encoders]"'
logger = logging.getLogger(__name__)


def is_named(spec) -> bool:
    return isinstance(spec, str) and spec.partition(":")[0] in LIBRARIES


def import_library(module: str, spec: str | None = None):
    """``torchvision``, ``timm`` or ``open_clip``, importable beside torch's CPU build (see
    :func:`_declare_torchvision_ops`); import them through this before using them directly."""
    try:
        if module != "torchvision":
            import_library("torchvision", spec)  # timm and open_clip import it
        elif "torchvision" not in sys.modules:
            _declare_torchvision_ops()
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{f'encoder {spec!r}' if spec else 'this'} needs {err.name or module} ({INSTALL})") from None


def _declare_torchvision_ops() -> None:
    """PyPI's torchvision wheels are CUDA builds: beside torch's CPU build (what this project
    installs) their compiled ops do not load, and torchvision 0.28 then fails on import, where it
    registers shapes for its ``nms`` ops (pytorch/pytorch#122494). Its models and transforms are
    plain PyTorch: declaring those two ops lets it import; its detection ops and image decoding,
    which no encoder here uses, stay unavailable."""
    found = importlib.util.find_spec("torchvision")
    if found is None or found.origin is None:
        return  # the import that follows says it is missing
    folder = os.path.dirname(found.origin)
    try:
        library = next(os.path.join(folder, "_C" + suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES
                       if os.path.isfile(os.path.join(folder, "_C" + suffix)))
        torch.ops.load_library(library)
        return
    except (StopIteration, OSError):
        pass
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
        except RuntimeError:  # declared already
            pass
    logger.info("torchvision's compiled ops do not load beside this torch build; its models and transforms "
                "are used without them")


def _unknown(spec: str, library: str, name: str, known) -> ValueError:
    close = difflib.get_close_matches(name, list(known), n=3)
    return ValueError(f"encoder {spec!r}: {library} has no model {name!r}"
                      + (f" (did you mean {', '.join(close)}?)" if close else ""))


def _state_dict(path: str, spec: str) -> dict:
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any reader's failure means the same thing here
        raise ValueError(f"encoder {spec!r}: weights file {path} is not a state dict that torch's safe loader "
                         f"(weights_only) or safetensors reads ({type(err).__name__})") from None
    for key in ("state_dict", "model"):  # a training checkpoint holding the state dict
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"encoder {spec!r}: weights file {path} is not a state dict (names -> tensors)")
    return state


def _load(model: torch.nn.Module, path: str, spec: str, heads: tuple = ()) -> None:
    """``path``'s weights into ``model``, every one of them, except its classifier ``heads``'."""
    try:
        result = model.load_state_dict(_state_dict(path, spec), strict=False)
    except RuntimeError as err:  # size mismatches
        raise ValueError(f"encoder {spec!r}: weights file {path} does not fit the model "
                         f"({' '.join(str(err).split())[:300]})") from None
    unexpected = [k for k in result.unexpected_keys if not k.startswith(tuple(f"{h}." for h in heads))]
    if result.missing_keys or unexpected:
        raise ValueError(f"encoder {spec!r}: weights file {path} does not fit the model (missing "
                         f"{result.missing_keys[:3]}, unexpected {unexpected[:3]})")


def _torchvision(name: str, weights: str, spec: str):
    tv = import_library("torchvision", spec)
    if name not in tv.models.list_models(module=tv.models):
        raise _unknown(spec, "torchvision", name, tv.models.list_models(module=tv.models))
    model = tv.models.get_model(name, weights=None)
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if not linear:
        raise ValueError(f"encoder {spec!r}: the model has no linear layer whose input to use as features")
    parent, _, child = linear[-1].rpartition(".")
    setattr(model.get_submodule(parent), child, torch.nn.Identity())
    _load(model, weights, spec, (linear[-1],))
    try:
        preprocess = tv.models.get_model_weights(name).DEFAULT.transforms()
    except (ValueError, AttributeError):  # no weights enum: ImageNet's standard preprocessing
        t = tv.transforms
        preprocess = t.Compose([t.Resize(256), t.CenterCrop(224), t.ToTensor(),
                                t.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    return model.eval(), preprocess


def _timm(name: str, weights: str, spec: str):
    timm = import_library("timm", spec)
    if not timm.is_model(name):
        raise _unknown(spec, "timm", name, timm.list_models())
    try:  # a pretrained tag (``convnext_tiny.fb_in22k``) picks that weights' data config
        model = timm.create_model(name, pretrained=False, num_classes=0)
    except RuntimeError as err:
        raise ValueError(f"encoder {spec!r}: {err}") from None
    heads = model.pretrained_cfg.get("classifier") or ()
    _load(model, weights, spec, (heads,) if isinstance(heads, str) else tuple(heads))
    from timm.data import create_transform, resolve_data_config

    return model.eval(), create_transform(**resolve_data_config({}, model=model))


def _open_clip(name: str, weights: str, spec: str):
    open_clip = import_library("open_clip", spec)
    if name not in open_clip.list_models():
        raise _unknown(spec, "open_clip", name, open_clip.list_models())
    try:  # an absolute path is never taken for one of open_clip's download tags
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=weights)
    except (RuntimeError, KeyError, ValueError) as err:
        raise ValueError(f"encoder {spec!r}: open_clip could not build it with weights file {weights} "
                         f"({' '.join(str(err).split())[:300]})") from None
    return model.eval().encode_image, preprocess


BUILDERS = {"torchvision": _torchvision, "timm": _timm, "open_clip": _open_clip}


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class NamedEncoder(PhotoEncoder):
    """``library:model`` with the weights in the local file ``weights``."""

    batch_size = 16

    def __init__(self, spec: str, weights: str | None):
        library, _, model = spec.partition(":")
        if library not in BUILDERS or not model:
            raise ValueError(f"encoder {spec!r}: expected one of {', '.join(f'{n}:<model>' for n in LIBRARIES)}")
        if not weights:
            raise ValueError(f"encoder {spec!r} needs a local weights file (--encoder-weights, or weights= from "
                             "Python); weights are never downloaded")
        weights = os.path.abspath(os.path.expanduser(weights))
        if not os.path.isfile(weights):
            raise FileNotFoundError(f"encoder {spec!r}: weights file {weights} not found")
        self.name, self.weights, self.sha256 = spec, weights, sha256(weights)
        self.forward, self.preprocess = BUILDERS[library](model, weights, spec)
        self.dim = self.embed_images([_pil().new("RGB", (224, 224))]).shape[1]

    def describe(self) -> dict:
        return {"encoder": self.name, "weights": self.weights, "sha256": self.sha256, "dim": self.dim}

    def embed_images(self, images: list) -> np.ndarray:
        with torch.inference_mode():
            features = self.forward(torch.stack([self.preprocess(image) for image in images])).float()
        return torch.nn.functional.normalize(features, dim=1).numpy()
