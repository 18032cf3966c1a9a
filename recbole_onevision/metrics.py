"""Vision-search metrics for RecBole's evaluator, usable by name in ``metrics: [...]``.

Formulas in docs/metrics.md. Importing this module registers them in RecBole's metric tables
(``recbole.evaluator.register``), as RecBole's own metrics are; :mod:`recbole_onevision.config`
imports it, so every ``Config`` accepts them.

RecBole's collector only sees scores and the positive items; these metrics also need, per
evaluated row, the query photo's pictured product, the items' category paths and the row's
behaviour. :class:`MultiViewCollector` gathers them from the evaluated dataset; every trainer
from :func:`recbole_onevision.registry.get_trainer` uses it (:class:`MultiViewEvaluationMixin`).
They are per-interaction metrics: a row is one search (RecBole's sequential models); a model
evaluated per user (RecBole's general models) gets a clear error.
"""
from __future__ import annotations

import numpy as np
import torch
from recbole.evaluator import register
from recbole.evaluator.base_metric import AbstractMetric
from recbole.evaluator.collector import Collector
from recbole.evaluator.metrics import NDCG, Hit
from recbole.utils import EvaluatorType, FeatureSource, FeatureType

from recbole_onevision.compat import install_numpy_aliases
from recbole_onevision.distributed import gather_rows
from recbole_onevision.topk import RankedLists, ranked_lists

install_numpy_aliases()  # RecBole's NDCG, reused below, still says np.float
ORDER, CLICK = 2, 1  # behaviour codes in the collected "mv.behaviour"


class MetricDataError(ValueError):
    """A requested metric needs a field the dataset does not have."""


class _TopkMetric(AbstractMetric):
    """Mean over the rows a metric applies to of a per-row, per-position value, for each K."""

    metric_type = EvaluatorType.RANKING
    smaller = False
    name = ""

    def __init__(self, config):
        super().__init__(config)
        self.topk = config["topk"]

    def values(self, dataobject) -> tuple[np.ndarray, np.ndarray]:
        """(rows, max K) value of each row at each cut-off, and the (rows,) rows it applies to."""
        raise NotImplementedError

    def calculate_metric(self, dataobject):
        values, rows = self.values(dataobject)
        if not rows.any():
            raise MetricDataError(f"{type(self).__name__}: {self.applies_to} in the evaluated split")
        return {f"{self.name}@{k}": round(float(values[rows, k - 1].mean()), self.decimal_place)
                for k in self.topk}


class ProductHit(_TopkMetric):
    """The pictured product (the query photo's ``product_id``) in the top K."""

    metric_need = ["mv.product_hit", "mv.product_known"]
    name, applies_to = "producthit", "no query photo with a known product"

    def values(self, dataobject):
        hit = dataobject.get("mv.product_hit").numpy()
        return np.cumsum(hit, axis=1) > 0, dataobject.get("mv.product_known").numpy()


class LeafShare(_TopkMetric):
    """Share of the top K whose category path equals the pictured product's."""

    metric_need = ["mv.same_leaf", "mv.product_known"]
    name, applies_to = "leafshare", "no query photo with a known product"

    def values(self, dataobject):
        same = dataobject.get("mv.same_leaf").numpy()
        return np.cumsum(same, axis=1) / np.arange(1, same.shape[1] + 1), dataobject.get("mv.product_known").numpy()


class _BehaviourMetric(_TopkMetric):
    """RecBole's Hit/NDCG on the rows whose behaviour is ``behaviour``."""

    metric_need = ["rec.topk", "mv.behaviour"]
    behaviour, base = ORDER, Hit

    def values(self, dataobject):
        topk = dataobject.get("rec.topk")
        pos_index, pos_len = topk[:, :-1].numpy().astype(bool), topk[:, -1].numpy()
        # RecBole's own formulas (they use nothing of their instance)
        base = self.base.metric_info(self, pos_index, pos_len) if self.base is NDCG else \
            self.base.metric_info(self, pos_index)
        return base, dataobject.get("mv.behaviour").numpy() == self.behaviour


class OrderHit(_BehaviourMetric):
    name, applies_to, behaviour, base = "orderhit", "no ordered interaction", ORDER, Hit


class OrderNDCG(_BehaviourMetric):
    name, applies_to, behaviour, base = "orderndcg", "no ordered interaction", ORDER, NDCG


class ClickHit(_BehaviourMetric):
    name, applies_to, behaviour, base = "clickhit", "no clicked-only interaction", CLICK, Hit


class ClickNDCG(_BehaviourMetric):
    name, applies_to, behaviour, base = "clickndcg", "no clicked-only interaction", CLICK, NDCG


METRICS = (ProductHit, LeafShare, OrderHit, OrderNDCG, ClickHit, ClickNDCG)
for _metric in METRICS:  # RecBole's tables are module-level: update them in place
    register.metrics_dict[_metric.__name__.lower()] = _metric
    register.metric_information[_metric.__name__.lower()] = _metric.metric_need
    register.metric_types[_metric.__name__.lower()] = _metric.metric_type


def requested(config) -> list[type]:
    names = {m.lower() for m in config["metrics"] or []}
    return [m for m in METRICS if m.__name__.lower() in names]


def check_dataset(config, dataset) -> None:
    """Raise :class:`MetricDataError`, naming the metric and what is missing, when the
    requested multi-view metrics cannot be computed on ``dataset``."""
    base = f"{dataset.dataset_path}/{dataset.dataset_name}"
    for metric in requested(config):
        name = metric.__name__
        if {"mv.product_hit", "mv.same_leaf"} & set(metric.metric_need):
            if getattr(dataset, "query_product", None) is None:
                raise MetricDataError(f"metric {name}: needs query photos with their product ({base}.query, "
                                      "column product_id) and `dataset_class: MultiViewSequentialDataset`")
        if "mv.same_leaf" in metric.metric_need:
            field = config["leaf_category_field"]
            if dataset.field2type.get(field) not in (FeatureType.TOKEN, FeatureType.TOKEN_SEQ) or \
                    dataset.field2source.get(field) != FeatureSource.ITEM:
                raise MetricDataError(f"metric {name}: needs the item field {field!r} (leaf_category_field) "
                                      f"loaded from {base}.item")
        if "mv.behaviour" in metric.metric_need:
            field = config["BEHAVIOUR_FIELD"] or "behaviour"
            tokens = dataset.field2token_id.get(field, {})
            if "order" not in tokens and "click" not in tokens:
                raise MetricDataError(f"metric {name}: needs the interaction field {field!r} with values "
                                      f"click/order in {base}.inter (load_col: inter)")


class MultiViewCollector(Collector):
    """RecBole's collector, plus the per-row data the metrics above need. With several processes
    (``shard``: the evaluated loader's sampler), every process's rows are gathered."""

    shard = None

    def attach(self, dataset) -> None:
        """Read what the requested metrics need from the dataset being evaluated."""
        self.metrics = requested(self.config)
        if not self.metrics:
            return
        check_dataset(self.config, dataset)
        self.query_field = self.config["QUERY_ID_FIELD"] or "query_id"
        self.query_product = getattr(dataset, "query_product", None)
        self.behaviour_field = self.config["BEHAVIOUR_FIELD"] or "behaviour"
        tokens = dataset.field2token_id.get(self.behaviour_field, {})
        self.behaviour_code = torch.zeros(max(len(tokens), 1), dtype=torch.long)
        for token, code in (("order", ORDER), ("click", CLICK)):
            if token in tokens:
                self.behaviour_code[tokens[token]] = code
        self.leaf = None
        if any(m is LeafShare for m in self.metrics):
            leaf = dataset.item_feat[self.config["leaf_category_field"]]
            self.leaf = leaf.view(len(leaf), -1)

    def needs_scores(self) -> bool:
        """Whether a requested metric needs every item's score (not just each row's top-k)."""
        return any(self.register.need(key) for key in ("rec.meanrank", "rec.score", "data.label"))

    def eval_batch_collect(self, scores_tensor, interaction, positive_u, positive_i):
        if isinstance(scores_tensor, RankedLists):
            self._collect_lists(scores_tensor, positive_u, positive_i)
        else:
            super().eval_batch_collect(scores_tensor, interaction, positive_u, positive_i)
        if not getattr(self, "metrics", None):
            return
        needed = ([self.query_field] if self.register.need("mv.product_known") else []) + \
            ([self.behaviour_field] if self.register.need("mv.behaviour") else [])
        missing = [f for f in needed if f not in interaction.interaction]
        if missing:
            raise MetricDataError(f"metrics {', '.join(m.__name__ for m in self.metrics)}: the evaluated rows have "
                                  f"no field {', '.join(missing)}; they are users, not searches (a RecBole general "
                                  "model?). These metrics need one row per interaction (a sequential model)")
        topk = (scores_tensor.items[:, :max(self.topk)] if isinstance(scores_tensor, RankedLists)
                else scores_tensor.topk(max(self.topk), dim=-1).indices).cpu()
        if self.register.need("mv.product_known"):
            product = self.query_product[interaction[self.query_field].cpu()]
            self.data_struct.update_tensor("mv.product_known", product > 0)
            if self.register.need("mv.product_hit"):
                self.data_struct.update_tensor("mv.product_hit", topk == product.unsqueeze(1))
            if self.register.need("mv.same_leaf"):
                same = (self.leaf[topk] == self.leaf[product].unsqueeze(1)).all(2)
                self.data_struct.update_tensor("mv.same_leaf", same & (product > 0).unsqueeze(1))
        if self.register.need("mv.behaviour"):
            self.data_struct.update_tensor("mv.behaviour", self.behaviour_code[interaction[self.behaviour_field].cpu()])

    def _collect_lists(self, lists: RankedLists, positive_u, positive_i) -> None:
        """What RecBole's collector keeps of a dense score table ("rec.items", "rec.topk"), from
        each row's ranked list alone."""
        items = lists.items[:, :max(self.topk)]
        if self.register.need("rec.items"):
            self.data_struct.update_tensor("rec.items", items)
        if self.register.need("rec.topk"):
            positive_u, positive_i = positive_u.to(items.device), positive_i.to(items.device)
            hits = torch.zeros(items.shape, dtype=torch.int, device=items.device)
            hits.index_add_(0, positive_u, (items[positive_u] == positive_i.unsqueeze(1)).int())
            positives = torch.bincount(positive_u, minlength=len(items)).unsqueeze(1).int()
            self.data_struct.update_tensor("rec.topk", torch.cat([hits, positives], 1))

    def get_data_struct(self):
        struct = super().get_data_struct()
        for key in ("mv.product_known", "mv.product_hit", "mv.same_leaf", "mv.behaviour"):  # per evaluation
            if key in self.data_struct:
                del self.data_struct[key]
        if self.shard is not None:
            struct = gather_rows(struct, self.shard)
        return struct


class MultiViewEvaluationMixin:
    """Trainer mixin: evaluates with :class:`MultiViewCollector`, attached to the data evaluated;
    full ranking keeps each row's top-k list (:func:`~recbole_onevision.topk.ranked_lists`)
    instead of a (rows, n_items) score table, unless a metric needs every score."""

    def __init__(self, config, model):
        super().__init__(config, model)
        self.eval_collector = MultiViewCollector(config)

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        if eval_data:
            self.eval_collector.attach(eval_data._dataset)
        return super().evaluate(eval_data, load_best_model, model_file, show_progress)

    def _full_sort_batch_eval(self, batched_data):
        if self.eval_collector.needs_scores():
            return super()._full_sort_batch_eval(batched_data)
        interaction, history_index, positive_u, positive_i = batched_data
        try:
            lists = ranked_lists(self.model, interaction.to(self.device), self.tot_item_num,
                                 max(self.eval_collector.topk), history_index)
        except NotImplementedError:  # no full_sort_predict: RecBole's item-by-item fallback
            return super()._full_sort_batch_eval(batched_data)
        return interaction, lists, positive_u, positive_i
