"""ANN recall (recall_index: hnsw | ivf) for MCA and VisualKNN: close to exact search, built
once and cached, checked settings, and exact search unchanged as the default."""
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.model.ann_recall import PARAMS, ViewIndex, recall_index_settings
from recbole_onevision.model.visual_similarity import best_view_similarity
from recbole_onevision.registry import create_dataset, get_model

pytest.importorskip("faiss")

HNSW_RECALL = 0.95  # item recall@100 of HNSW with its defaults against exact search


def random_catalogue(seed=0, n_items=1500, photos=200):
    """About 4,500 views, 1 to 5 per item (item 0, the padding, none), and random photos:
    no structure for an index to exploit, its hardest case."""
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(1, 6, (n_items,), generator=g)
    counts[0] = 0
    view_item = torch.repeat_interleave(torch.arange(n_items), counts)
    views = F.normalize(torch.randn(len(view_item), 64, generator=g), dim=1)
    return views, view_item, n_items, F.normalize(torch.randn(photos, 64, generator=g), dim=1)


def item_recall(exact: torch.Tensor, approximate: torch.Tensor, k: int) -> float:
    """Mean share of each row's exact top-k items among the approximate top-k (finite only)."""
    truth, top = exact.topk(k, dim=1).indices, approximate.topk(k, dim=1)
    return float(np.mean([len(set(a.tolist()) & set(b[torch.isfinite(v)].tolist())) / k
                          for a, b, v in zip(truth, top.indices, top.values)]))


def test_index_recall_against_exact_search(tmp_path):
    views, view_item, n_items, photos = random_catalogue()
    exact = best_view_similarity(photos, views, view_item, n_items)
    hnsw = ViewIndex(views, view_item, n_items, "hnsw", PARAMS["hnsw"])
    scores = hnsw(photos, 100)
    assert item_recall(exact, scores, 100) >= HNSW_RECALL
    found = torch.isfinite(scores)
    assert (found.sum(1) >= 100).all() and not found[:, 0].any()  # the padding item has no views
    # a retrieved item's score is its best view's cosine, as exact search gives it
    assert torch.allclose(scores[found], exact[found], atol=1e-5)
    # IVF probing every list is exhaustive; probing few of them is approximate, and still useful
    nlist = 64
    every = ViewIndex(views, view_item, n_items, "ivf", {"nlist": nlist, "nprobe": nlist})
    assert item_recall(exact, every(photos, 100), 100) == 1.0
    few = ViewIndex(views, view_item, n_items, "ivf", {"nlist": nlist, "nprobe": 8})
    assert 0.3 < item_recall(exact, few(photos, 100), 100) < 1.0


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_built_deterministically_and_cached(tmp_path, kind, caplog):
    import faiss

    views, view_item, n_items, photos = random_catalogue(photos=20)
    params = {**PARAMS[kind], **({"nlist": 32} if kind == "ivf" else {})}
    first = ViewIndex(views, view_item, n_items, kind, params, str(tmp_path))
    again = ViewIndex(views, view_item, n_items, kind, params)  # built afresh: the same index
    assert np.array_equal(faiss.serialize_index(first.index), faiss.serialize_index(again.index))
    (cached,) = os.listdir(tmp_path)
    loaded = ViewIndex(views, view_item, n_items, kind, params, str(tmp_path))
    assert loaded.cached and not first.cached and loaded.build_seconds == 0.0
    assert torch.equal(loaded(photos, 50), first(photos, 50))
    # search-time settings reuse the cached index; other views or build settings do not
    assert ViewIndex(views, view_item, n_items, kind, {**params, SEARCH[kind]: 7}, str(tmp_path)).cached
    assert not ViewIndex(views.flip(0), view_item, n_items, kind, params, str(tmp_path)).cached
    # a damaged cache is built again, with a warning
    with open(tmp_path / cached, "wb") as f:
        f.write(b"not an index")
    with caplog.at_level("WARNING"):
        rebuilt = ViewIndex(views, view_item, n_items, kind, params, str(tmp_path))
    assert not rebuilt.cached and "unreadable" in caplog.text
    assert torch.equal(rebuilt(photos, 50), first(photos, 50))


SEARCH = {"hnsw": "ef_search", "ivf": "nprobe"}


def tiny_model(name, root, tmp_path, **extra):
    config = Config(name, "mvshop-mini", None, {"data_path": str(root), "state": "WARNING",
                                                "checkpoint_dir": str(tmp_path / "saved"), **extra})
    init_seed(config["seed"], True)
    _, _, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], True)
    return get_model(name)(config, test._dataset).eval(), next(iter(test))[0]


@pytest.mark.parametrize("name", ["VisualKNN", "MCA"])
def test_models_with_hnsw_match_exact_search(tiny_root, tmp_path, name):
    # 20 items (120 of the shop's 900 views asked): the index must find them, not scan it all
    exact, batch = tiny_model(name, tiny_root, tmp_path, recall_size=20)
    assert exact.recall_index is None  # exact search stays the default

    def same_top10(**index) -> tuple[float, torch.Tensor]:
        ann, _ = tiny_model(name, tiny_root, tmp_path, recall_size=20, **index)
        ann.load_state_dict(exact.state_dict())  # MCA: the same ranker
        with torch.no_grad():
            want, got = exact.full_sort_predict(batch), ann.full_sort_predict(batch)
        top = lambda s: s.topk(10, dim=1).indices.sort(1).values  # noqa: E731
        return float((top(want) == top(got)).all(1).float().mean()), got

    same, got = same_top10(recall_index="hnsw")
    assert same >= 0.9, f"{name}: top-10 equal to exact search on {same:.0%} of rows"
    photo = batch["query_id"] > 0
    recalled = torch.isfinite(got[photo]).sum(1)
    assert (recalled == 20).all() if name == "MCA" else (recalled >= 20).all()
    # the comparison can fail: an IVF index probing 1 of its lists misses many
    assert same_top10(recall_index="ivf", recall_index_params={"nprobe": 1})[0] < 0.8
    # a second model (a served run) loads the index cached by the first instead of building it
    again, _ = tiny_model(name, tiny_root, tmp_path, recall_index="hnsw", recall_size=20)
    assert again.recall_index.cached
    if name == "MCA":
        assert torch.isfinite(again.calculate_loss(batch))  # training ranks the index's recall too


@pytest.mark.parametrize("settings, message", [
    ({"recall_index": "annoy"}, r"config recall_index: expected one of exact, hnsw, ivf, got 'annoy'"),
    ({"recall_index": "ivf", "recall_index_params": {"M": 16}},
     r"config recall_index_params: 'M' is not a parameter of recall_index ivf \(known: nlist, nprobe\)"),
    ({"recall_index": "hnsw", "recall_index_params": {"ef_search": 0}},
     r"config recall_index_params: ef_search expected a positive integer, got 0"),
    ({"recall_index_params": {"nprobe": 4}}, r"'nprobe' is not a parameter of recall_index exact"),
    ({"recall_index_params": [16]}, r"config recall_index_params: expected a mapping"),
])
@pytest.mark.parametrize("name", ["VisualKNN", "MCA"])
def test_bad_settings_name_the_key(name, settings, message):
    with pytest.raises(ValueError, match=message):
        Config(name, "mvshop-mini", None, {"state": "WARNING", **settings})


def test_settings_defaults_and_recall_size(tiny_root, tmp_path):
    config = Config("MCA", "mvshop-mini", None, {"state": "WARNING"})
    assert config["recall_index"] == "exact" and recall_index_settings(config) == ("exact", {})
    config = Config("VisualKNN", "mvshop-mini", None, {"state": "WARNING", "recall_index": "ivf",
                                                       "recall_index_params": {"nprobe": 4}})
    assert recall_index_settings(config) == ("ivf", {"nlist": None, "nprobe": 4})
    with pytest.raises(ValueError, match=r"config recall_size: expected at least the largest topk \(10\), got 5"):
        tiny_model("VisualKNN", tiny_root, tmp_path, recall_index="hnsw", recall_size=5)
