import os
import shlex

import pytest
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.model.sequential_recommender.sasrec import SASRec
from recbole.trainer import Trainer
from recbole.utils import InputType, ModelType

from recbole_onevision import registry
from recbole_onevision.cli import main as run_main
from recbole_onevision.compat import SafeCheckpointMixin
from recbole_onevision.config import Config
from recbole_onevision.quick_start import result_summary, run, run_args


class LastItemEcho(SequentialRecommender):
    """A tiny plugin model: scores items by a learned bias plus a bigram from the last item."""

    input_type = InputType.POINTWISE
    type = ModelType.SEQUENTIAL

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.scale = config["echo_scale"]
        self.bias = torch.nn.Parameter(torch.zeros(self.n_items))
        self.bigram = torch.nn.Embedding(self.n_items, self.n_items)
        torch.nn.init.zeros_(self.bigram.weight)

    def _scores(self, interaction):
        last = self.gather_indexes(interaction[self.ITEM_SEQ].unsqueeze(-1),
                                   interaction[self.ITEM_SEQ_LEN] - 1).squeeze(-1)
        return self.scale * (self.bias + self.bigram(last))

    def calculate_loss(self, interaction):
        return torch.nn.functional.cross_entropy(self._scores(interaction), interaction[self.POS_ITEM_ID])

    def predict(self, interaction):
        scores = self._scores(interaction)
        return scores.gather(1, interaction[self.ITEM_ID].unsqueeze(1)).squeeze(1)

    def full_sort_predict(self, interaction):
        return self._scores(interaction)


@pytest.fixture
def plugin_model(tmp_path):
    props = tmp_path / "LastItemEcho.yaml"
    props.write_text("echo_scale: 3.0\nloss_type: CE\n")
    registry.register_model(LastItemEcho, str(props))
    yield LastItemEcho
    registry._REGISTERED.pop("LastItemEcho", None)


def test_resolves_recbole_model():
    assert registry.get_model("SASRec") is SASRec
    from recbole.trainer import Trainer

    from recbole_onevision.distributed import DistributedTrainerMixin
    from recbole_onevision.metrics import MultiViewCollector, MultiViewEvaluationMixin

    trainer = registry.get_trainer(ModelType.SEQUENTIAL, "SASRec")
    mixins = (MultiViewEvaluationMixin, DistributedTrainerMixin, SafeCheckpointMixin)
    assert trainer.__mro__[1:5] == (*mixins, Trainer)  # one subclass
    assert registry.get_trainer(ModelType.SEQUENTIAL, "OneVision").__mro__[1:4] == mixins
    assert issubclass(MultiViewCollector, __import__("recbole").evaluator.Collector)


def test_resolves_plugin_model_and_its_defaults(plugin_model):
    assert registry.get_model("LastItemEcho") is plugin_model
    config = Config("LastItemEcho", "ml-100k")
    assert config["echo_scale"] == 3.0 and config["MODEL_TYPE"] == ModelType.SEQUENTIAL
    assert "LastItemEcho" in registry.plugin_model_names()
    trainer = registry.get_trainer(config["MODEL_TYPE"], "LastItemEcho")
    assert issubclass(trainer, Trainer) and issubclass(trainer, SafeCheckpointMixin)


def test_unknown_model_lists_what_exists():
    with pytest.raises(ValueError, match="unknown model 'Sasrec'.*RecBole models:.*SASRec"):
        registry.get_model("Sasrec")


def test_overrides_reach_config_with_precedence(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("learning_rate: 0.5\nepochs: 7\n")
    config = Config("SASRec", "ml-100k", [str(config_file)],
                    cmd_args=["--learning_rate=0.02", "--topk=[5,10]"])
    assert config["learning_rate"] == 0.02  # command line beats the file
    assert config["epochs"] == 7
    assert config["topk"] == [5, 10]
    assert config["train_neg_sample_args"]["distribution"] == "none"  # CE needs no negatives


def test_yaml_null_on_the_command_line_is_none(tmp_path):
    config_file = tmp_path / "c.yaml"
    config_file.write_text("vrq_kmeans_sample: 1000\nencoder_dropout: 0.5\nwandb_project: x\n")
    config = Config("SASRec", "ml-100k", [str(config_file)],
                    cmd_args=["--vrq_kmeans_sample=~", "--encoder_dropout=null", "--wandb_project=~x"])
    assert config["vrq_kmeans_sample"] is None  # a `key: ~` default can be set back
    assert config["encoder_dropout"] is None
    assert config["wandb_project"] == "~x"  # only a whole null spelling is None


@pytest.mark.parametrize("args, message", [
    (["--epochs"], "expected --key=value"),
    (["--epochs=1", "--epochs=2"], "given twice"),
])
def test_bad_overrides_are_rejected(args, message):
    with pytest.raises(ValueError, match=message):
        Config("SASRec", "ml-100k", cmd_args=args)


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        Config("SASRec", "ml-100k", [str(tmp_path / "nope.yaml")])


def test_run_py_unknown_dataset_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_main(["--dataset=NoSuchData", f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path}"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "NoSuchData" in err and "NoSuchData.inter not found" in err


def test_plugin_model_trains_through_run_py(plugin_model, tmp_path, quiet_config):
    """A plugin model goes through the same run path as RecBole models and learns."""
    result = run_main(["--model=LastItemEcho", "--dataset=ml-100k", "--epochs=3",
                       "--learning_rate=0.05", "--show_progress=False", "--state=WARNING",
                       f"--checkpoint_dir={tmp_path}"])
    assert result["model"] == "LastItemEcho" and result["config"]["learning_rate"] == 0.05
    assert result["test_result"]["recall@10"] > 0.05  # random ranking of 1682 items: ~0.006
    assert os.path.isfile(result["results_file"])
    # the command the run's summary ends with evaluates the saved checkpoint to the same test
    # result without training
    # result without training: it repeats the run's overrides, so a non-default model is rebuilt
    command = shlex.split(result_summary(result).splitlines()[-1].split("python run.py ")[1])
    assert f"--checkpoint={result['checkpoint']}" in command and "--learning_rate=0.05" in command
    again = run_main(command)
    assert again["test_result"] == result["test_result"] and again["evaluated_only"]


def test_run_args_rebuild_the_config(tmp_path):
    """What the re-evaluate command is made of: files, dict and command-line overrides, parsed
    back by the config to the same values; a checkpoint argument is not repeated."""
    yaml_file = tmp_path / "extra.yaml"
    yaml_file.write_text("stopping_step: 3\n")
    config = Config("Pop", "ml-100k", [str(yaml_file)], {"topk": [5, 10], "state": "WARNING"},
                    ["--epochs=3"])  # run.py's own --checkpoint never reaches the config
    args = run_args(config, [str(yaml_file)], {"topk": [5, 10], "state": "WARNING"},
                    ["--epochs=3", "--checkpoint=old.pth"])
    assert args[:3] == ["--model=Pop", "--dataset=ml-100k", f"--config_files={yaml_file}"]
    assert not any(a.startswith("--checkpoint") for a in args)
    again = Config("Pop", "ml-100k", [str(yaml_file)], cmd_args=args[3:])
    for key in ("topk", "state", "epochs", "stopping_step"):
        assert again[key] == config[key]


def test_two_runs_started_together_keep_both_results(tmp_path):
    """A result file is named as its run's checkpoint (time, process id, counter), so runs of one
    model and dataset started in the same second do not overwrite each other's."""
    args = ["--epochs=1", f"--checkpoint_dir={tmp_path}", "--state=WARNING", "--show_progress=False"]
    first, second = run("Pop", "ml-100k", cmd_args=args), run("Pop", "ml-100k", cmd_args=args)
    assert first["results_file"] != second["results_file"]
    assert os.path.isfile(first["results_file"]) and os.path.isfile(second["results_file"])
    assert os.path.splitext(first["results_file"])[0] == os.path.splitext(first["checkpoint"])[0]
