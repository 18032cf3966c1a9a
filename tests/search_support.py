"""Shared by the search and service tests: runs trained on the tiny shop, and an image encoder
for it (the shop has no pixels: a photo's embedding is its 8x8 grey thumbnail)."""
import os
import shutil

import numpy as np

from recbole_onevision.preprocess.image_folder import write_photo_record
from recbole_onevision.quick_start import run
from recbole_onevision.registry import dataset_properties_file

ENCODER = "search_support:thumbnail_encoder"


def thumbnail_encoder(images) -> np.ndarray:
    """64-d, the tiny shop's width: each image's 8x8 grey thumbnail, centred and L2-normalised."""
    out = np.stack([np.asarray(image.convert("L").resize((8, 8)), dtype=np.float32).ravel() for image in images])
    out -= out.mean(1, keepdims=True)
    return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-6)


def png_bytes(seed: int, size: int = 32) -> bytes:
    from io import BytesIO

    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    buffer = BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def train_runs(tiny_root, root) -> dict[str, str]:
    """OneVision, MCA and VisualKNN trained briefly on the tiny shop (as dataset ``tinyshop``,
    its photos.json naming :func:`thumbnail_encoder`): model -> checkpoint."""
    folder = root / "tinyshop"
    folder.mkdir()
    for f in (tiny_root / "mvshop-mini").iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name.replace("mvshop-mini", "tinyshop"))
    images = root / "images"
    images.mkdir()
    first_view = open(folder / "tinyshop.view").readlines()[1].split("\t")[0]
    (images / "view.png").write_bytes(png_bytes(0))
    write_photo_record(str(folder / "tinyshop.photos.json"), {"encoder": ENCODER}, str(images),
                       {first_view: str(images / "view.png")})
    common = {"data_path": str(root), "checkpoint_dir": str(root / "saved"), "show_progress": False,
              "state": "WARNING", "vrq_align_steps": 100}
    short = {"pretrain": {"epochs": 2}, "sft": {"epochs": 2}, "dpo": {"epochs": 1}}
    sizes = {"OneVision": {"stages": short, "d_model": 32, "ffn_size": 64}, "MCA": {"epochs": 2},
             "VisualKNN": {"epochs": 1}}
    protocol = [dataset_properties_file("mvshop-mini")]
    return {model: run(model, "tinyshop", protocol, {**common, **extra})["checkpoint"]
            for model, extra in sizes.items()}


def files_state(*paths) -> dict:
    """(size, mtime) of every file under ``paths``: what a reader must leave unchanged."""
    state = {}
    for path in paths:
        for folder, _, files in os.walk(path) if os.path.isdir(path) else [(os.path.dirname(path), [], [os.path.basename(path)])]:
            for name in files:
                full = os.path.join(folder, name)
                state[full] = (os.path.getsize(full), os.path.getmtime(full))
    return state
