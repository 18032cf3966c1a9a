"""The image encoder's fast path (ONNX Runtime, one worker per core, issue 38) embeds images as
the reference PyTorch computation does. Synthetic images only: no ../shared/data needed."""
import os

import numpy as np
import pytest

pytest.importorskip("efficientnet_lite_pytorch", reason='image packages not installed: pip install -e ".[images]"')
pytest.importorskip("onnxruntime", reason='image packages not installed: pip install -e ".[images]"')

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from recbole_onevision.preprocess.image_encoder import ImageEncoder  # noqa: E402


def synthetic_images(folder) -> list[str]:
    """11 images (not a multiple of the batch size): noise, gradients and shapes, in several
    sizes, modes and formats."""
    rng = np.random.default_rng(0)
    paths = []
    for i in range(11):
        h, w = [(128, 128), (300, 200), (64, 96), (224, 224)][i % 4]
        yy, xx = np.mgrid[0:h, 0:w]
        pixels = np.stack([(xx * (i + 1)) % 256, (yy * 3 + 40 * i) % 256, ((xx + yy) * 2) % 256], axis=-1)
        pixels = pixels + rng.normal(0, 20 * (i % 3), pixels.shape)
        pixels[h // 4:h // 2, w // 3:w // 2] = rng.integers(0, 256, 3)  # a flat patch
        image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
        if i == 3:
            image = image.convert("L")  # grayscale
        if i == 5:
            image = image.convert("RGBA")
        path = os.path.join(folder, f"img{i}.{'png' if i % 2 else 'jpg'}")
        image.save(path)
        paths.append(path)
    return paths


def reference_embed(model, paths: list[str]) -> np.ndarray:
    """The converter's computation before issue 38: PIL bilinear resize to 224, float32 NCHW,
    (pixel - 127) / 128, PyTorch, average-pooled last-convolution features, L2-normalised."""
    batch = []
    for path in paths:
        with Image.open(path) as image:
            batch.append(np.asarray(image.convert("RGB").resize((224, 224), Image.BILINEAR), dtype=np.float32))
    with torch.no_grad():
        x = (torch.from_numpy(np.stack(batch)).permute(0, 3, 1, 2) - 127.0) / 128.0
        return torch.nn.functional.normalize(model.extract_features(x).mean(dim=(2, 3)), dim=1).numpy()


@pytest.fixture(scope="module")
def encoder():
    return ImageEncoder(batch_size=4, workers=2)  # 3 batches over 2 workers, the last one short


def test_fast_path_matches_the_reference_computation(encoder, tmp_path):
    paths = synthetic_images(str(tmp_path))
    fast = encoder.embed(paths, show_progress=False)
    reference = reference_embed(encoder.model, paths)
    assert fast.shape == (11, 1280) and fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1, rtol=1e-5)
    cosine = (fast * reference).sum(axis=1)
    assert cosine.min() >= 0.999, cosine
    # the images differ, and each row is its own image's (batches come back in order)
    assert (fast @ reference.T).argmax(axis=1).tolist() == list(range(11))
    # deterministic, whatever the batch size and the number of workers
    again = ImageEncoder(batch_size=8, workers=1).embed(paths, show_progress=False)
    np.testing.assert_allclose(again, fast, atol=1e-5)


def test_unreadable_image_names_its_path(encoder, tmp_path):
    paths = synthetic_images(str(tmp_path))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    with pytest.raises(ValueError, match="broken.jpg: not a readable image"):
        encoder.embed(paths[:5] + [str(broken)] + paths[5:], show_progress=False)


def test_encoders_built_at_once_in_two_threads_both_work(tmp_path):
    """Two runs served side by side each build their encoder on their first request; torch's
    ONNX exporter is not re-entrant, so the builds must take turns."""
    from concurrent.futures import ThreadPoolExecutor

    paths = synthetic_images(str(tmp_path))[:3]
    encoders = [ImageEncoder(workers=1) for _ in range(3)]
    with ThreadPoolExecutor(3) as pool:
        out = list(pool.map(lambda e: e.embed(paths, show_progress=False), encoders))
    for other in out[1:]:
        np.testing.assert_allclose(other, out[0], atol=1e-5)
