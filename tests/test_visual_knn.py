"""VisualKNN: the photo's nearest catalogue views, evaluated by RecBole like any model."""
import pytest
import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.preprocess import mvshop
from recbole_onevision.model.visual_similarity import ViewTable, best_view_similarity
from recbole_onevision.registry import create_dataset, get_model

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
    unit = lambda x: torch.nn.functional.normalize(x.float(), dim=1)  # noqa: E731
    expected = best_view_similarity(unit(dataset.query_embedding[batch["query_id"]]), unit(dataset.view_embedding),
                                    dataset.view_item, dataset.item_num)
    assert torch.allclose(scores[:, 1:], expected[:, 1:], atol=1e-5)
    # the photo points at its look-alike family: the clicked item is usually among the top 10
    top10 = scores.topk(10, dim=1).indices
    assert (top10 == batch["item_id"].unsqueeze(1)).any(1).float().mean() > 0.5


def test_needs_photos_and_views(tmp_path):
    config = Config("VisualKNN", "ml-100k", None, {"state": "WARNING"})
    dataset = create_dataset(config)
    train, _, _ = data_preparation(config, dataset)
    with pytest.raises(ValueError, match="VisualKNN needs query photos and catalogue views"):
        get_model("VisualKNN")(config, train._dataset)


def brute_force(photos, views, view_item, n_items):
    """The reference: item by item, the max cosine over its views."""
    out = torch.full((len(photos), n_items), float("-inf"))
    for item in range(n_items):
        if (view_item == item).any():
            out[:, item] = (photos @ views[view_item == item].T).amax(1)
    return out


@pytest.mark.parametrize("dense", [True, False])
def test_view_table_equals_the_scatter_search(dense):
    generator = torch.Generator().manual_seed(0)
    n_items = 30
    # uneven views: item 0 (padding) and item 5 have none, item 7 has one; dense padding holds
    # unless one item has very many views
    view_item = torch.cat([torch.arange(1, n_items).repeat(2), torch.tensor([9] * (1 if dense else 80))])
    view_item = view_item[(view_item != 5) & ((view_item != 7) | (torch.arange(len(view_item)) < n_items))]
    view_item = view_item[torch.randperm(len(view_item), generator=generator)]
    views = torch.nn.functional.normalize(torch.randn(len(view_item), 8, generator=generator), dim=1)
    photos = torch.nn.functional.normalize(torch.randn(6, 8, generator=generator), dim=1)
    table = ViewTable(views, view_item, n_items)
    assert table.dense == dense
    expected = brute_force(photos, views, view_item, n_items)
    assert torch.allclose(best_view_similarity(photos, views, view_item, n_items), expected, atol=1e-6)
    got = table(photos)
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.isinf(got[:, [0, 5]]).all() and torch.isfinite(got[:, 1:5]).all()
    # excluding each row's own view: as the reference with that column removed
    exclude = torch.tensor([0, 1, 2, 3, 4, int(torch.nonzero(view_item == 7)[0])])
    got = table(views[exclude], exclude_views=exclude)
    scattered = best_view_similarity(views[exclude], views, view_item, n_items, exclude_views=exclude)
    for row, view in enumerate(exclude.tolist()):
        keep = torch.arange(len(view_item)) != view
        want = brute_force(views[exclude][row:row + 1], views[keep], view_item[keep], n_items)[0]
        assert torch.allclose(got[row], want, atol=1e-6) and torch.allclose(scattered[row], want, atol=1e-6)
    assert torch.isinf(got[-1, 7])  # item 7's only view was excluded
    items = torch.tensor([1, 5, 7, 9, 12, 29])
    assert torch.allclose(table.of_items(photos, items), expected[torch.arange(6), items], atol=1e-6)
