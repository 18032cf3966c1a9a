"""MCA, the recall -> rank cascade: beats its own recall stage where personal taste decides."""
import pytest
import torch

from onevision_support import load_benchmark
from recbole_onevision.preprocess import mvshop
from recbole_onevision.quick_start import run
from recbole_onevision.registry import dataset_properties_file

METRICS = "--metrics=['Recall','NDCG','ProductHit','OrderHit','OrderNDCG']"


@pytest.fixture(scope="module")
def mini_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mini")
    mvshop.generate("mini", str(root))
    return root


def test_mca_beats_visual_recall_on_personalised_metrics(mini_root, tmp_path):
    common = [f"--data_path={mini_root}", f"--checkpoint_dir={tmp_path}", "--show_progress=False",
              "--state=WARNING", METRICS]
    knn = run("VisualKNN", "mvshop-mini", [dataset_properties_file("mvshop-mini")], cmd_args=common)
    mca = run("MCA", "mvshop-mini", [dataset_properties_file("mvshop-mini")], cmd_args=common + ["--epochs=3"])
    for metric in ("orderhit@5", "orderndcg@10", "ndcg@10"):
        assert mca["test_result"][metric] > knn["test_result"][metric], metric
    # the ablation benchmark re-reads the checkpoint as run.py tested it, then without the user
    ablation = load_benchmark("generative_ablation")
    rows = ablation.main(["--mca_checkpoint", mca["checkpoint"], "--dataset", "mvshop-mini", *common])
    as_trained, alone = rows.values()
    assert {k: as_trained[k] for k in mca["test_result"]} == mca["test_result"]
    for metric in ("orderndcg@10", "ndcg@10"):  # taste decides among look-alikes: the user matters
        assert alone[metric] < as_trained[metric], metric


def test_mca_scores_only_recalled_items_and_checks_its_config(mini_root, tmp_path):
    from recbole.data import data_preparation
    from recbole.utils import init_seed

    from recbole_onevision.config import Config
    from recbole_onevision.registry import create_dataset, get_model

    config = Config("MCA", "mvshop-mini", None, {"data_path": str(mini_root), "state": "WARNING",
                                                 "recall_size": 30, "checkpoint_dir": str(tmp_path)})
    init_seed(config["seed"], True)
    _, _, test = data_preparation(config, create_dataset(config))
    model = get_model("MCA")(config, test._dataset).eval()
    batch = next(iter(test))[0]
    recalled, _ = model.recall(batch)
    scores = model.full_sort_predict(batch)
    assert (torch.isfinite(scores).sum(1) == 30).all()
    assert torch.equal(scores.topk(30, dim=1).indices.sort(1).values, recalled.sort(1).values)
    assert model.stage_seconds["recall"] > 0 and model.stage_seconds["rank"] > 0
    with pytest.raises(ValueError, match=r"recall_size: expected at least the largest topk \(10\), got 5"):
        get_model("MCA")(Config("MCA", "mvshop-mini", None, {"data_path": str(mini_root), "state": "WARNING",
                                                             "recall_size": 5}), test._dataset)
