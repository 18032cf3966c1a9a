"""OneVision's configuration: resolved once, checked in one place, logged; its stages; what a
checkpoint records and when it is refused."""
import logging
import re

import pytest
import torch

from onevision_support import prepare
from recbole_onevision.config import Config
from recbole_onevision.registry import get_trainer
from recbole_onevision.trainer import stage_plan


def config_of(tmp_path, cmd_args=(), **extra) -> Config:
    return Config("OneVision", "mvshop-mini", None, {"data_path": str(tmp_path), **extra}, cmd_args=list(cmd_args))


def test_mappings_merge_over_their_defaults_at_every_layer(tmp_path):
    config = config_of(tmp_path, ["--dense_head={'temperature': 0.1}", "--prune=True"])
    assert config["dense_head"] == {"weight": 0.0, "readout": "history", "temperature": 0.1}
    assert config["prune"] == {"enabled": True, "beam_margin": 5.0, "prefix_levels": 0, "keep_recent": 3}
    assert config_of(tmp_path, loss_weights={"order": 3.0})["loss_weights"] == {"sid": 1.0, "visual_prior": 0.5,
                                                                               "pictured": 0.0, "order": 3.0}
    # a file, then config_dict, then the command line: each changes only what it names
    preset = tmp_path / "preset.yaml"
    preset.write_text("dense_head: {weight: 1.0}\n")
    config = Config("OneVision", "mvshop-mini", [str(preset)], {"data_path": str(tmp_path),
                                                                 "dense_head": {"readout": "both"}},
                    cmd_args=["--dense_head={'temperature': 0.5}"])
    assert config["dense_head"] == {"weight": 1.0, "readout": "both", "temperature": 0.5}


def test_stages_name_what_runs_each_over_its_defaults(tmp_path):
    default = [tuple(s[:3]) for s in stage_plan(config_of(tmp_path))]
    assert default == [("pretrain", 40, 0.001), ("sft", 30, 0.001), ("dpo", 5, 0.0001)]
    listed = stage_plan(config_of(tmp_path, ["--stages=[sft,dpo]"]))
    assert [s.name for s in listed] == ["sft", "dpo"] and listed[1].settings == {"beta": 0.1, "sft_weight": 1.0}
    mapped = stage_plan(config_of(tmp_path, ["--stages={'sft': {'epochs': 2}, 'dpo': {'beta': 0.5}}"]))
    assert [(s.name, s.epochs) for s in mapped] == [("sft", 2), ("dpo", 5)] and mapped[1].settings["beta"] == 0.5
    for stages, message in ((["dpo", "sft"], "in training order"), (["finetune"], "unknown stage 'finetune'"),
                            ({"sft": {"epochs": 0}}, "sft needs epochs, an integer >= 1"),
                            ({"sft": {"beta": 1.0}}, "sft has unknown keys \\['beta'\\]"),
                            ({"dpo": {"learning_rate": "fast"}}, "dpo learning_rate: expected a number > 0")):
        with pytest.raises(ValueError, match=message):
            stage_plan(config_of(tmp_path, stages=stages))


def test_replaced_and_unknown_settings_are_refused(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="config key 'item_output' was replaced by 'ranking'"):
        prepare(tiny_root, tmp_path, item_output=True)
    with pytest.raises(ValueError, match="dense_head: unknown keys \\['wieght'\\]"):
        prepare(tiny_root, tmp_path, dense_head={"wieght": 1.0})
    with pytest.raises(ValueError, match="d_model: expected a multiple of n_heads \\(3\\), got 32"):
        prepare(tiny_root, tmp_path, n_heads=3)
    with pytest.raises(ValueError, match="beam_size: expected at least the largest topk \\(10\\), got 5"):
        prepare(tiny_root, tmp_path, beam_size=5)
    with pytest.raises(ValueError, match="config history_item_embedding: expected True/False .as its default False., got 'yes'"):
        prepare(tiny_root, tmp_path, history_item_embedding="yes")


def test_the_resolved_settings_are_logged_at_the_start(tiny_root, tmp_path, caplog):
    with caplog.at_level(logging.INFO):
        _, _, model, _ = prepare(tiny_root, tmp_path, state="INFO", stages=["sft", "dpo"])
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "OneVision settings:" in logged
    for row in ("ranking +beams \\(beam_size 20\\)", "stages +sft, dpo", "visual bias +scale 20"):
        assert re.search(row, logged), row


def test_encoder_dropout_applies_to_the_encoder_alone(tiny_root, tmp_path):
    _, _, model, _ = prepare(tiny_root, tmp_path, dropout=0.1, encoder_dropout=0.5)
    encoder = {m.p for m in model.inputs.modules() if isinstance(m, torch.nn.Dropout)}
    decoder = {m.p for m in model.sid_decoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert encoder == {0.5} and decoder == {0.1}
    _, _, model, _ = prepare(tiny_root, tmp_path, dropout=0.2)  # its own key, not derived from dropout
    assert {m.p for m in model.inputs.modules() if isinstance(m, torch.nn.Dropout)} == {0.1}
    with pytest.raises(ValueError, match=r"encoder_dropout: expected a value in \[0, 1\), got 1.0"):
        prepare(tiny_root, tmp_path, encoder_dropout=1.0)


@pytest.mark.parametrize("extra, message", [
    ({"stages": ["pretrain"], "visual_tokens": 0}, "none of \\['pretrain'\\] can run here"),
    ({"stages": {"sft": {"epochs": 1}, "dpo": {"epochs": 0}}}, "dpo needs epochs, an integer >= 1"),
])
def test_stages_that_cannot_train_are_refused_before_training(tiny_root, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        config, _, model, (train, valid, _) = prepare(tiny_root, tmp_path, checkpoint_dir=str(tmp_path), **extra)
        trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model)
        trainer.fit(train, valid, saved=True, show_progress=False)


def test_a_checkpoint_records_its_format_and_settings(tiny_root, tmp_path):
    _, _, model, _ = prepare(tiny_root, tmp_path)
    state = model.state_dict()
    assert state["_extra_state"]["format"] == 2 and state["_extra_state"]["settings"]["d_model"] == 32
    path = tmp_path / "model.pth"
    torch.save({"state_dict": state}, path)
    _, _, again, _ = prepare(tiny_root, tmp_path)
    again.load_state_dict(torch.load(path, weights_only=True)["state_dict"])  # the safe loader reads it
    # another size: one message naming what differs, not torch's list of shape mismatches
    _, _, wider, _ = prepare(tiny_root, tmp_path, d_model=64)
    with pytest.raises(ValueError, match="trained with d_model: 32 \\(this run: 64\\)"):
        wider.load_state_dict(state)
    # other SIDs: its weights would decode the wrong items
    other = dict(state)
    other["codes.item_sid"] = state["codes.item_sid"][[0, 2, 1, *range(3, len(state["codes.item_sid"]))]]
    with pytest.raises(ValueError, match="trained on other semantic IDs"):
        model.load_state_dict(other)
    # written by an earlier version (no recorded format): refused, not migrated
    old = {k: v for k, v in state.items() if k != "_extra_state"}
    with pytest.raises(ValueError, match="format unrecorded .* this version reads format 2"):
        model.load_state_dict(old)
