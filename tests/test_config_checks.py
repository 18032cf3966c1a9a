"""Bad configuration is refused before any work, naming the key (and where it was set) and what
was expected; pickled datasets or dataloaders planted where RecBole looks are never loaded."""
import os
import pickle
import re

import pytest

from recbole_onevision.cli import main
from recbole_onevision.config import Config
from recbole_onevision.quick_start import run

ML100K = ["--model=SASRec", "--dataset=ml-100k", "--epochs=1", "--show_progress=False", "--state=WARNING"]


@pytest.mark.parametrize("args, message", [
    (["--epochz=5"], "command line --epochz: unknown config key 'epochz'; did you mean 'epochs'\\?"),
    (["--learnig_rate=0.1"], "unknown config key 'learnig_rate'; did you mean 'learning_rate'\\?"),
    (["--no_such_thing=1"], "unknown config key 'no_such_thing' \\(not a RecBole, plugin or model key\\)"),
    (["--stopping_step=abc"], "config stopping_step: expected an integer \\(as its default 10\\), got 'abc'"),
    (["--learning_rate=fast"], "config learning_rate: expected a number or an integer .*got 'fast'"),
    (["--reproducibility=1"], "config reproducibility: expected True/False .*got 1"),
    (["--dense_only=True"], "config key 'dense_only' was replaced by 'ranking'"),
    (["--valid_metric=NDCG@20"], "valid_metric: 'NDCG@20' needs its K in topk \\[10\\]"),
    (["--valid_metric=GAUC"], "valid_metric: 'GAUC' is not among metrics"),
    (["--save_dataset=True"], "config save_dataset is not supported: RecBole pickles datasets"),
    (["--dataloaders_save_path=x.pth"], "config dataloaders_save_path is not supported"),
])
def test_bad_settings_exit_with_a_message_before_any_work(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(ML100K + args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert re.search(message, err), err


def test_config_files_as_an_override_is_refused_not_ignored():
    """RecBole knows the key but reads it only from sys.argv: passed on as an override (a script
    forwarding its unparsed arguments) it would be silently ignored."""
    with pytest.raises(ValueError, match="config_files is not read as a config key here"):
        Config("OneVision", "mvshop-mini", None, {}, ["--config_files=properties/decoder-alone.yaml"])


def test_onevision_settings_are_checked_before_the_tokenizer_is_fitted(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--model=OneVision", "--dataset=ml-100k", f"--vrq_cache_dir={tmp_path}", "--n_heads=3"])
    assert "d_model: expected a multiple of n_heads (3), got 64" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # no VRQ fit ran


def test_topk_larger_than_the_catalogue_is_refused_before_the_split(tmp_path):
    with pytest.raises(ValueError, match="config topk: 5000 is more than the dataset's 1682 items"):
        run("SASRec", "ml-100k", cmd_args=["--topk=[5000]", "--valid_metric=NDCG@5000", "--epochs=1",
                                           f"--checkpoint_dir={tmp_path}", "--state=WARNING"])


def test_a_yaml_error_names_the_file_and_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 5\nlearning_rate: [0.1\n")
    with pytest.raises(ValueError, match=f"{bad}, line 3, column 1: not valid YAML"):
        Config("SASRec", "ml-100k", [str(bad)])
    listed = tmp_path / "list.yaml"
    listed.write_text("- epochs\n")
    with pytest.raises(ValueError, match="list.yaml: expected a mapping of config keys, got list"):
        Config("SASRec", "ml-100k", [str(listed)])
    typo = tmp_path / "typo.yaml"
    typo.write_text("epocs: 5\n")
    with pytest.raises(ValueError, match=f"{typo}: unknown config key 'epocs'; did you mean 'epochs'"):
        Config("SASRec", "ml-100k", [str(typo)])


class Planted:
    """A pickle that would create a file when unpickled."""
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("name", ["ml-100k-SequentialDataset.pth", "ml-100k-for-SASRec-dataloader.pth"])
def test_a_planted_pickle_is_refused_and_never_run(tmp_path, name):
    marker = tmp_path / "ran"
    with open(tmp_path / name, "wb") as f:
        pickle.dump(Planted(str(marker)), f)
    with pytest.raises(ValueError, match=f"{name}: a pickled RecBole dataset/dataloader file"):
        run("SASRec", "ml-100k", cmd_args=["--epochs=1", f"--checkpoint_dir={tmp_path}", "--state=WARNING",
                                           "--show_progress=False"])
    assert not marker.exists()


def test_an_error_names_the_layer_whose_value_counts(tmp_path):
    first, second = tmp_path / "first.yaml", tmp_path / "second.yaml"
    first.write_text("stopping_step: 3\n")
    second.write_text("stopping_step: soon\n")
    with pytest.raises(ValueError, match=f"{second}: config stopping_step: expected an integer"):
        Config("SASRec", "ml-100k", [str(first), str(second)])
    with pytest.raises(ValueError, match="config_dict: config stopping_step: expected an integer"):
        Config("SASRec", "ml-100k", [str(first)], {"stopping_step": "later"})
