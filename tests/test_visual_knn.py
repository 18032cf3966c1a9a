"""VisualKNN: the photo's nearest catalogue views, evaluated by RecBole like any model."""
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.data import mvshop
from recbole_onevision.registry import create_dataset, get_model
from recbole_onevision.retrieval import best_view_similarity

TINY = mvshop.MVShopSpec(n_items=300, n_users=40, sessions_per_user=8, branching=(3, 2, 2), n_brands=12)


def test_scores_are_best_view_cosines(tmp_path):
    mvshop.generate("mini", str(tmp_path), spec=TINY)
    config = Config("VisualKNN", "mvshop-mini", None, {"data_path": str(tmp_path), "state": "WARNING",
                                                       "checkpoint_dir": str(tmp_path / "saved")})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    _, _, test = data_preparation(config, dataset)
    model = get_model("VisualKNN")(config, test._dataset)
    batch = next(iter(test))[0]
    scores = model.full_sort_predict(batch)
    expected = best_view_similarity(dataset.query_embedding[batch["query_id"]].numpy(),
                                    dataset.view_embedding.numpy(), dataset.view_item.numpy(), dataset.item_num)
    assert torch.allclose(scores[:, 1:], torch.from_numpy(expected)[:, 1:], atol=1e-5)
    # the photo points at its look-alike family: the clicked item is usually among the top 10
    top10 = scores.topk(10, dim=1).indices
    assert (top10 == batch["item_id"].unsqueeze(1)).any(1).float().mean() > 0.5


def test_needs_photos_and_views(tmp_path):
    config = Config("VisualKNN", "ml-100k", None, {"state": "WARNING"})
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    with pytest.raises(ValueError, match="VisualKNN needs query photos and catalogue views"):
        get_model("VisualKNN")(config, train._dataset)
