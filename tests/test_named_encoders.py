"""Named image encoders (``torchvision:``, ``timm:``, ``open_clip:<model>`` with a local weights
file): each loads the file it is given and embeds as the library's own model does, the
image-folder converter records it, and search refuses photos for a dataset embedded with another
model or other weights. Small models with random weights saved to a temporary folder: nothing is
downloaded. A library that is not installed (``pip install -e ".[encoders]"``) skips its tests."""
import dataclasses
import hashlib
import json
import os
import re
import shutil

import numpy as np
import pytest
import torch

from recbole_onevision.preprocess import convert
from recbole_onevision.preprocess.image_encoder import encoder_from_spec
from recbole_onevision.preprocess.named_encoders import import_library
from recbole_onevision.search import Searcher, SearchError, load_run
from search_support import png_bytes

# open_clip's smallest built-in models weigh hundreds of MB: a tiny CLIP registered from a config
TINY_CLIP = {"embed_dim": 64, "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
             "text_cfg": {"context_length": 8, "vocab_size": 100, "width": 32, "heads": 2, "layers": 1}}
LIBRARIES = ("torchvision", "timm", "open_clip")


def library(name: str):
    try:
        return import_library(name)
    except ImportError as err:
        pytest.skip(f"{err}: not installed")


def build(name: str, seed: int, folder):
    """(spec, model) for ``name``: a small model with random weights (seeded)."""
    torch.manual_seed(seed)
    if name == "torchvision":
        return "torchvision:resnet18", library(name).models.resnet18()
    if name == "timm":
        return "timm:test_vit", library(name).create_model("test_vit", pretrained=False)
    open_clip = library(name)
    config = folder / "tiny-clip-test.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(str(config))
    return "open_clip:tiny-clip-test", open_clip.create_model_and_transforms("tiny-clip-test")[0]


def reference(name: str, model):
    """The library's own pooled features of a list of PIL images (what the encoder must give)."""
    model.eval()
    if name == "torchvision":
        preprocess = library(name).models.ResNet18_Weights.DEFAULT.transforms()
        captured = []
        model.fc.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
        features = lambda x: (model(x), captured.pop())[1]  # noqa: E731 -- the input of the classifier
    elif name == "timm":
        timm = library(name)
        preprocess = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
        features = lambda x: model.forward_head(model.forward_features(x), pre_logits=True)  # noqa: E731
    else:
        preprocess = library(name).create_model_and_transforms("tiny-clip-test")[2]
        features = model.encode_image

    @torch.no_grad()
    def embed(images):
        return features(torch.stack([preprocess(image) for image in images])).numpy()
    return embed


@pytest.fixture(scope="module", params=LIBRARIES)
def made(request, tmp_path_factory):
    """A library's spec, two weights files (random, different seeds) and the reference features of the first."""
    folder = tmp_path_factory.mktemp(request.param)
    spec, model = build(request.param, 0, folder)
    other = build(request.param, 1, folder)[1]
    torch.save(model.state_dict(), folder / "a.pth")
    torch.save(other.state_dict(), folder / "b.pth")
    return spec, str(folder / "a.pth"), str(folder / "b.pth"), reference(request.param, model)


def photos(n=4):
    from PIL import Image

    rng = np.random.default_rng(5)
    return [Image.fromarray(rng.integers(0, 256, (40 + 9 * i, 56, 3), dtype=np.uint8)) for i in range(n)]


def cosines(a, b):
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_the_spec_loads_its_weights_and_embeds_as_the_library_does(made):
    spec, weights, other, expected = made
    encoder = encoder_from_spec(spec, weights)
    images = photos()
    got = encoder.embed_images(images)
    assert cosines(got, expected(images)).min() >= 0.999
    assert np.allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)
    assert encoder.describe() == {"encoder": spec, "weights": weights, "dim": got.shape[1],
                                  "sha256": hashlib.sha256(open(weights, "rb").read()).hexdigest()}
    assert cosines(encoder_from_spec(spec, other).embed_images(images), got).min() < 0.99  # its weights count
    safetensors = pytest.importorskip("safetensors.torch")
    as_safetensors = weights.replace(".pth", ".safetensors")
    safetensors.save_file({k: v.contiguous() for k, v in torch.load(weights).items()}, as_safetensors)
    assert np.allclose(encoder_from_spec(spec, as_safetensors).embed_images(images), got, atol=1e-6)


def test_the_image_folder_converter_records_it(made, tmp_path):
    spec, weights, _, _ = made
    for n, image in enumerate(photos(12)):
        path = tmp_path / "src" / f"cat{n % 2}" / f"obj{n % 4}" / f"{n}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
    convert.main(["image-folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out"), "--name", "shop",
                  "--encoder", spec, "--encoder-weights", weights])
    folder = tmp_path / "out" / "shop"
    record = json.load(open(folder / "shop.photos.json"))
    encoder = encoder_from_spec(spec, weights)
    assert record["encoder"] == encoder.describe()
    views = [line.split("\t")[0] for line in open(folder / "shop.view")][1:]
    files = [os.path.join(record["root"], record["images"][view]) for view in views]
    assert cosines(np.load(folder / "shop.view.npy"), encoder.embed(files, show_progress=False)).min() >= 0.9999


def test_search_refuses_another_model_or_other_weights(made, search_runs, tmp_path):
    spec, weights, other, _ = made
    run = load_run(search_runs[1]["VisualKNN"])
    moved = str(tmp_path / "copy.pth")
    shutil.copy(weights, moved)
    record = encoder_from_spec(spec, moved).describe()  # as a dataset converted with these weights records it
    shop = dataclasses.replace(run, catalogue=dataclasses.replace(run.catalogue, encoder=record))
    searcher = Searcher(shop)
    assert searcher.encoder().describe()["sha256"] == record["sha256"]
    if record["dim"] == searcher.width:  # the tiny shop's width: search end to end
        assert len(searcher.search(image=png_bytes(3), k=3).hits) == 3
    assert Searcher(shop, encoder=spec, encoder_weights=weights).encoder().weights == weights  # same bytes elsewhere
    with pytest.raises(SearchError, match="differs from the one dataset tinyshop was embedded with.*same weights"):
        Searcher(shop, encoder_weights=other)
    with pytest.raises(SearchError, match=f"encoder 'efficientnet-lite0': dataset tinyshop was embedded with {spec!r}"):
        Searcher(shop, encoder="efficientnet-lite0")
    shutil.copy(other, moved)  # the recorded file's content changed since the dataset was embedded
    with pytest.raises(SearchError, match="differs from the one dataset tinyshop"):
        Searcher(shop).search(image=png_bytes(3), k=3)
    os.remove(moved)
    with pytest.raises(SearchError, match=f"weights file {moved} not found"):
        Searcher(shop).search(image=png_bytes(3), k=3)


@pytest.mark.parametrize("args, message", [
    (["--encoder", "timm:test_vit", "--encoder-weights", "{tmp}/missing.pth"],
     "encoder 'timm:test_vit': weights file {tmp}/missing.pth not found"),
    (["--encoder", "timm:test_vit"], "encoder 'timm:test_vit' needs a local weights file"),
    (["--encoder", "timm:no_such_net", "--encoder-weights", "{tmp}/w.pth"], "timm has no model 'no_such_net'"),
    (["--encoder", "torchvision:resnet81", "--encoder-weights", "{tmp}/w.pth"],
     r"torchvision has no model 'resnet81' \(did you mean resnet18"),
    (["--encoder", "open_clip:ViT-B-3", "--encoder-weights", "{tmp}/w.pth"], "open_clip has no model 'ViT-B-3'"),
    (["--encoder", "torchvision:resnet50", "--encoder-weights", "{tmp}/w.pth"],
     "weights file {tmp}/w.pth is not a state dict"),
    (["--encoder-weights", "{tmp}/w.pth"], "a weights file applies only to torchvision:<model>"),
])
def test_a_missing_weights_file_or_an_unknown_model_is_refused_without_a_traceback(tmp_path, args, message):
    if args[0] == "--encoder":
        library(args[1].partition(":")[0])
    (tmp_path / "w.pth").write_text("not weights")
    (tmp_path / "src" / "c" / "o").mkdir(parents=True)
    photos(1)[0].save(tmp_path / "src" / "c" / "o" / "1.png")
    argv = ["image-folder", "--src", str(tmp_path / "src"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        convert.main(argv + [a.format(tmp=tmp_path) for a in args])
    assert str(stop.value.code).startswith("convert image-folder: error: ")
    assert re.search(message.format(tmp=re.escape(str(tmp_path))), str(stop.value.code)), stop.value.code


def test_the_search_command_takes_encoder_weights(search_runs, tmp_path, capsys):
    from recbole_onevision.search.__main__ import main

    (tmp_path / "photo.png").write_bytes(png_bytes(2))
    (tmp_path / "w.pth").write_text("not weights")
    with pytest.raises(SystemExit) as stop:
        main(["--checkpoint", search_runs[1]["VisualKNN"], "--image", str(tmp_path / "photo.png"),
              "--encoder-weights", str(tmp_path / "w.pth")])
    assert "a weights file applies only to torchvision:<model>" in str(stop.value.code)
