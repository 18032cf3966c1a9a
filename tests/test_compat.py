import subprocess
import sys

import pytest
import torch

from recbole_onevision import registry
from recbole_onevision.compat import atomic_torch_save, load_checkpoint
from recbole_onevision.config import Config


def test_run_path_never_imports_ray_or_quick_start():
    code = (
        "import sys, recbole_onevision.quick_start, recbole_onevision.cli\n"
        "from recbole_onevision.registry import get_model, get_trainer\n"
        "get_model('SASRec'); get_model('BERT4Rec'); get_model('Pop')\n"
        "bad = [m for m in sys.modules if m == 'ray' or m.startswith('recbole.quick_start')]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_sequential_models_do_not_leave_anomaly_detection_on():
    registry.get_model("SINE")  # the module that switches it on at import time
    assert not torch.is_anomaly_enabled()


def test_numpy_aliases_recbole_needs():
    from recbole_onevision.compat import install_numpy_aliases
    import numpy as np

    install_numpy_aliases()
    assert np.zeros(2, dtype=np.float).dtype == np.float64


def test_safe_loader_reads_our_checkpoints_and_refuses_pickled_objects(tmp_path):
    ours = tmp_path / "ours.pth"
    atomic_torch_save({"config": {"model": "X"}, "state_dict": {"w": torch.ones(2)},
                       "best_valid_score": float("-inf")}, str(ours))
    assert load_checkpoint(str(ours))["state_dict"]["w"].sum() == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ours.pth"]  # no temp file left behind

    # what stock RecBole writes: its whole Config pickled (any object could be in its place)
    foreign = tmp_path / "foreign.pth"
    torch.save({"config": Config("Pop", "ml-100k"), "state_dict": {}}, str(foreign))
    with pytest.raises(ValueError, match="foreign.pth: refusing to unpickle"):
        load_checkpoint(str(foreign))
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_checkpoint(str(tmp_path / "missing.pth"))


def test_detect_anomaly_config_switch():
    Config("SASRec", "ml-100k", config_dict={"detect_anomaly": True})
    assert torch.is_anomaly_enabled()
    Config("SASRec", "ml-100k")
    assert not torch.is_anomaly_enabled()


def test_runs_started_in_the_same_second_get_their_own_checkpoint_files(tmp_path):
    """RecBole names checkpoints by model and time to the second: side-by-side runs collided."""
    from recbole.data import create_dataset, data_preparation

    files = []
    for dataset in ("ml-100k", "ml-100k"):
        config = Config("Pop", dataset, config_dict={"checkpoint_dir": str(tmp_path), "state": "WARNING"})
        train, _, _ = data_preparation(config, create_dataset(config))
        model = registry.get_model("Pop")(config, train._dataset)
        files.append(registry.get_trainer(config["MODEL_TYPE"], "Pop")(config, model).saved_model_file)
    assert files[0] != files[1] and all("Pop-ml-100k-" in f for f in files)
