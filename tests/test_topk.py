"""Full ranking through each row's top-k list (recbole_onevision.topk) gives exactly the metrics
of RecBole's dense score table, in blocks of rows, with and without a model's own short list."""
import pytest
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_onevision import topk
from recbole_onevision.config import Config
from recbole_onevision.metrics import MultiViewCollector
from recbole_onevision.registry import create_dataset, get_model, get_trainer

PER_SEARCH = ["Recall", "NDCG", "Hit", "MRR", "ProductHit", "OrderNDCG"]
CASES = [("OneVision", PER_SEARCH), ("MCA", PER_SEARCH), ("VisualKNN", PER_SEARCH),
         ("SASRec", ["Recall", "NDCG", "MRR", "OrderNDCG"]), ("BPR", ["Recall", "NDCG", "MRR"])]  # BPR: per user, history masked


def setup(name, metrics, tiny_root, tmp_path):
    config = Config(name, "mvshop-mini", None, {
        "data_path": str(tiny_root), "vrq_align_steps": 100, "vrq_cache_dir": str(tiny_root / "vrq-cache"),
        "checkpoint_dir": str(tmp_path), "show_progress": False, "state": "WARNING", "metrics": metrics,
        "topk": [1, 5, 10], "valid_metric": "NDCG@10", "eval_batch_size": 64, "d_model": 32, "ffn_size": 64,
        "train_batch_size": 64})
    init_seed(config["seed"], config["reproducibility"])
    train, _, test = data_preparation(config, create_dataset(config))
    init_seed(config["seed"], config["reproducibility"])
    model = get_model(name)(config, train._dataset).eval()
    return config, model, test


@pytest.mark.parametrize("name, metrics", CASES, ids=[c[0] for c in CASES])
def test_ranked_lists_give_the_dense_tables_metrics(name, metrics, tiny_root, tmp_path, monkeypatch):
    config, model, test = setup(name, metrics, tiny_root, tmp_path)
    trainer = get_trainer(config["MODEL_TYPE"], name)(config, model)
    with monkeypatch.context() as dense:
        dense.setattr(MultiViewCollector, "needs_scores", lambda self: True)
        expected = trainer.evaluate(test, load_best_model=False)
    n_items = test._dataset.item_num
    monkeypatch.setattr(topk, "SCORE_BLOCK", 7 * n_items)  # blocks of 7 rows: several per batch
    calls = []
    original = topk.ranked_lists
    monkeypatch.setattr("recbole_onevision.metrics.ranked_lists",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    assert trainer.evaluate(test, load_best_model=False) == expected
    assert calls, "the evaluator did not rank through the lists"


@pytest.mark.parametrize("name", ["OneVision", "MCA"])
def test_a_short_list_model_never_builds_a_dense_row(name, tiny_root, tmp_path, monkeypatch):
    config, model, test = setup(name, PER_SEARCH, tiny_root, tmp_path)

    def refuse(interaction):
        raise AssertionError("full_sort_predict called: a (rows, n_items) table was built")
    monkeypatch.setattr(model, "full_sort_predict", refuse)
    batch = next(iter(test))[0]
    lists = topk.ranked_lists(model, batch, test._dataset.item_num, 10)
    assert lists.items.shape == (len(batch), 10)
    assert (lists.items > 0).all() and (lists.scores[:, :-1] >= lists.scores[:, 1:]).all()
    assert all(len(set(row.tolist())) == 10 for row in lists.items), "an item twice in one list"
    result = get_trainer(config["MODEL_TYPE"], name)(config, model).evaluate(test, load_best_model=False)
    assert 0 < result["recall@10"] <= 1


def test_short_lists_are_padded_with_empty_slots_that_never_hit():
    import torch
    lists = topk.pad(topk.RankedLists(torch.tensor([[2.0, float("-inf")]]), torch.tensor([[5, 7]])), 4)
    assert lists.items.tolist() == [[5, 0, 0, 0]]
    assert lists.scores[0, 0] == 2.0 and torch.isinf(lists.scores[0, 1:]).all()
