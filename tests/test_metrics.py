"""Multi-view metrics: hand-computed values, collection from a dataset, clear errors."""
from types import SimpleNamespace

import pytest
import torch
from recbole.evaluator.collector import DataStruct
from recbole.utils import FeatureSource, FeatureType

from recbole_onevision.metrics import (CLICK, ORDER, ClickHit, ClickNDCG, LeafShare, MetricDataError,
                                       MultiViewCollector, OrderHit, OrderNDCG, ProductHit, check_dataset)

CONFIG = {"topk": [1, 2], "metric_decimal_place": 4, "metrics": ["ProductHit", "LeafShare", "OrderHit",
                                                                    "OrderNDCG", "ClickHit", "ClickNDCG", "Recall"],
          "QUERY_ID_FIELD": "query_id", "BEHAVIOUR_FIELD": "behaviour", "leaf_category_field": "category",
          "eval_args": {"mode": "full"}, "device": "cpu"}


def struct(**tensors):
    data = DataStruct()
    for key, value in tensors.items():
        data.update_tensor(key, torch.as_tensor(value))
    return data


def test_product_hit_and_leaf_share_by_hand():
    data = struct(**{
        "mv.product_known": [True, True, False],
        "mv.product_hit": [[False, True], [False, False], [True, False]],  # row 3 unknown: ignored
        "mv.same_leaf": [[True, True], [False, True], [False, False]]})
    assert ProductHit(CONFIG).calculate_metric(data) == {"producthit@1": 0.0, "producthit@2": 0.5}
    # row 1: 1/1, 2/2; row 2: 0/1, 1/2
    assert LeafShare(CONFIG).calculate_metric(data) == {"leafshare@1": 0.5, "leafshare@2": 0.75}


def test_order_and_click_metrics_by_hand():
    # rec.topk: hits at positions 1..2, then the number of positives
    data = struct(**{"rec.topk": [[1, 0, 1], [0, 1, 1], [0, 0, 1], [0, 1, 1]],
                     "mv.behaviour": [ORDER, ORDER, CLICK, CLICK]})
    assert OrderHit(CONFIG).calculate_metric(data) == {"orderhit@1": 0.5, "orderhit@2": 1.0}
    ndcg2 = round((1 + 1 / torch.log2(torch.tensor(3.0)).item()) / 2, 4)
    assert OrderNDCG(CONFIG).calculate_metric(data) == {"orderndcg@1": 0.5, "orderndcg@2": ndcg2}
    assert ClickHit(CONFIG).calculate_metric(data) == {"clickhit@1": 0.0, "clickhit@2": 0.5}
    assert ClickNDCG(CONFIG).calculate_metric(data)["clickndcg@2"] == round(1 / torch.log2(torch.tensor(3.0)).item() / 2, 4)
    only_clicks = struct(**{"rec.topk": [[1, 0, 1]], "mv.behaviour": [CLICK]})
    with pytest.raises(MetricDataError, match="OrderHit: no ordered interaction in the evaluated split"):
        OrderHit(CONFIG).calculate_metric(only_clicks)


def shop(**overrides):
    """A 4-item shop: items 1, 2 in leaf a/x, item 3 in a/y; queries 1, 2 picture items 1, 3."""
    values = dict(
        dataset_path="data/shop", dataset_name="shop",
        query_product=torch.tensor([0, 1, 3]),
        field2type={"category": FeatureType.TOKEN_SEQ, "behaviour": FeatureType.TOKEN},
        field2source={"category": FeatureSource.ITEM, "behaviour": FeatureSource.INTERACTION},
        field2token_id={"behaviour": {"[PAD]": 0, "click": 1, "order": 2}},
        item_feat={"category": torch.tensor([[0, 0], [1, 2], [1, 2], [1, 3]])})
    values.update(overrides)
    return SimpleNamespace(**values)


def test_collector_reads_products_leaves_and_behaviour_from_the_dataset():
    collector = MultiViewCollector({**CONFIG, "metrics": ["ProductHit", "LeafShare", "OrderHit", "Recall"],
                                    "topk": [1, 2], "eval_type": None, "metric_decimal_place": 4})
    collector.attach(shop())
    scores = torch.tensor([[-9.0, 0.1, 0.9, 0.5], [-9.0, 0.8, 0.1, 0.3]])  # top 2: (2, 3), (1, 3)
    interaction = _Rows({"query_id": torch.tensor([1, 2]), "behaviour": torch.tensor([2, 1])})
    collector.eval_batch_collect(scores, interaction, torch.tensor([0, 1]), torch.tensor([2, 3]))
    data = collector.get_data_struct()
    # query 1 pictures item 1 (not in top 2: 2, 3); query 2 pictures item 3 (rank 2)
    assert ProductHit(CONFIG).calculate_metric(data) == {"producthit@1": 0.0, "producthit@2": 0.5}
    # query 1, leaf a/x: items 2 (yes), 3 (no); query 2, leaf a/y: items 1 (no), 3 (yes)
    assert LeafShare(CONFIG).calculate_metric(data) == {"leafshare@1": 0.5, "leafshare@2": 0.5}
    assert data.get("mv.behaviour").tolist() == [ORDER, CLICK]
    assert OrderHit(CONFIG).calculate_metric(data) == {"orderhit@1": 1.0, "orderhit@2": 1.0}  # item 2 at rank 1
    assert "mv.product_hit" not in collector.data_struct  # cleared for the next evaluation


class _Rows:
    """The part of RecBole's Interaction the collector reads."""

    def __init__(self, fields):
        self.interaction = fields

    def __getitem__(self, key):
        return self.interaction[key]


def test_metrics_reject_datasets_lacking_their_fields():
    plain = shop(query_product=None)  # a plain sequence dataset such as Beauty
    with pytest.raises(MetricDataError, match=r"metric ProductHit: needs query photos .*data/shop/shop.query"):
        check_dataset({**CONFIG, "metrics": ["ProductHit"]}, plain)
    no_leaf = shop(field2type={"behaviour": FeatureType.TOKEN}, field2source={})
    with pytest.raises(MetricDataError, match="metric LeafShare: needs the item field 'category'"):
        check_dataset({**CONFIG, "metrics": ["LeafShare"]}, no_leaf)
    no_behaviour = shop(field2token_id={})
    with pytest.raises(MetricDataError, match="metric OrderNDCG: needs the interaction field 'behaviour'"):
        check_dataset({**CONFIG, "metrics": ["OrderNDCG"]}, no_behaviour)
    check_dataset({**CONFIG, "metrics": ["Recall", "NDCG"]}, plain)  # RecBole's own need nothing more
    # rows that are users (a RecBole general model) cannot be scored per search
    collector = MultiViewCollector({**CONFIG, "metrics": ["ProductHit"], "eval_type": None})
    collector.attach(shop())
    with pytest.raises(MetricDataError, match="no field query_id; they are users"):
        collector.eval_batch_collect(torch.zeros(1, 4), _Rows({"user_id": torch.tensor([1])}),
                                     torch.tensor([0]), torch.tensor([1]))


def test_metrics_are_known_to_recbole_config():
    from recbole_onevision.config import Config

    config = Config("SASRec", "ml-100k", None, {"metrics": ["Recall", "ProductHit", "OrderNDCG"],
                                                "valid_metric": "ProductHit@10", "state": "WARNING"})
    assert config["valid_metric_bigger"] is True
    assert "producthit" in [m.lower() for m in config["metrics"]]
