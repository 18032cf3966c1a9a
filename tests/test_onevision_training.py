"""OneVision's training on a tiny shop: it memorises, beats popularity through run.py, each
stage (pretrain, SFT, DPO) moves the weights and its loss, every stage is validated and
checkpointed, a resumed run equals an uninterrupted one, one-off sessions train; and the score
fusion benchmark re-evaluates a trained run as run.py would. Inference: test_onevision.py."""
import os

import numpy as np
import pytest
import torch

from onevision_support import PHOTO_LESS, load_benchmark, prepare, tinyshop, train_steps
from recbole_onevision.model.onevision import objectives
from recbole_onevision.quick_start import run


def test_training_memorises_a_tiny_shop(tiny_root, tmp_path):
    """No dropout, many steps: decoding each training row's target returns it at rank 1."""
    config, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = list(train)
    losses = []
    for _ in range(40):  # an AMD EPYC: loss at 0.10 of its start and 99% at rank 1 by then
        for batch in batches:
            optimizer.zero_grad()
            loss = model.calculate_loss(batch)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
    assert all(not torch.equal(a, b) for a, b in zip(before, model.parameters()) if a.requires_grad)
    model.eval()
    hits = total = 0
    for batch in batches:
        items, _, _ = model.generate(batch, beam_size=5)
        hits += (items[:, 0] == batch["item_id"]).sum().item()
        total += len(batch)
    assert hits / total > 0.9


def test_run_py_trains_onevision_and_beats_popularity(tiny_root, tmp_path):
    protocol, common = tinyshop(tiny_root, tmp_path)
    onevision = run("OneVision", "tinyshop", protocol, cmd_args=common + [
        "--stages={'pretrain': {'epochs': 2}, 'sft': {'epochs': 8}, 'dpo': {'epochs': 1}}", "--d_model=32", "--ffn_size=64"])
    pop = run("Pop", "tinyshop", protocol, cmd_args=common + ["--epochs=1"])
    assert onevision["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.1
    assert sorted(os.listdir(tmp_path / "tinyshop" / ".cache"))[0].startswith("vrq-")  # SIDs cached


def test_score_fusion_script_evaluates_each_setting_as_a_run_would(tiny_root, tmp_path):
    """benchmarks/score_fusion.py: each row is what run.py gives that checkpoint with that
    ranking (fusion weight 0: the beams alone; 1: ranking fused; the dense head alone), on valid and test."""
    protocol, common = tinyshop(tiny_root, tmp_path)
    files = protocol + [PHOTO_LESS]
    common += ["--d_model=32", "--ffn_size=64", "--stages={'sft': {'epochs': 2}}"]
    trained = run("OneVision", "tinyshop", files, cmd_args=common + ["--ranking=fused"])
    checkpoint = trained["checkpoint"]
    score_fusion = load_benchmark("score_fusion")
    rows = score_fusion.main(["--checkpoint", checkpoint, "--dataset", "tinyshop", "--weights", "0,1", "--dense",
                              "--config_files=" + ",".join(files), *common])
    assert [r["setting"] for r in rows] == ["fusion weight 0 (beams alone)", "fusion weight 1 (ranking: fused)",
                                            "dense head alone (ranking: dense)"]
    assert rows[1]["test"] == trained["test_result"]  # the run was evaluated with ranking: fused
    for row, ranking in ((rows[0], "beams"), (rows[2], "dense")):
        again = run("OneVision", "tinyshop", files, cmd_args=common + [f"--ranking={ranking}"], checkpoint=checkpoint)
        assert (row["valid"], row["test"]) == (again["best_valid_result"], again["test_result"]), row["setting"]
    assert rows[0]["test"] != rows[2]["test"]  # the settings really differ on this checkpoint
    with pytest.raises(SystemExit, match="--weights: expected comma-separated numbers >= 0"):
        score_fusion.main(["--checkpoint", checkpoint, "--weights", "1,-2"])


def test_generative_ablation_reads_a_model_trained_without_the_bias_alone(tiny_root, tmp_path):
    """benchmarks/generative_ablation.py with only --no_bias_checkpoint: its two rows, the first
    what run.py gave that checkpoint, the second without the user's profile and history."""
    protocol, common = tinyshop(tiny_root, tmp_path)
    common += ["--d_model=32", "--ffn_size=64", "--stages={'sft': {'epochs': 2}}", "--visual_bias=0",
               "--node_outputs=True", "--metrics=['Recall','NDCG','ProductHit','OrderNDCG']", "--topk=[1,5,10]",
               "--valid_metric=NDCG@10"]
    trained = run("OneVision", "tinyshop", protocol, cmd_args=common)
    ablation = load_benchmark("generative_ablation")
    rows = ablation.main(["--no_bias_checkpoint", trained["checkpoint"], "--dataset", "tinyshop",
                          "--config_files=" + ",".join(protocol), *common])
    assert list(rows) == ["trained and evaluated without the bias", "the same, photo alone (no profile, no history)"]
    as_trained, alone = rows.values()
    assert as_trained == trained["test_result"]
    assert alone != as_trained  # the user's profile and history were really removed
    with pytest.raises(SystemExit):
        ablation.main(["--dataset", "tinyshop"])


@pytest.mark.parametrize("stage", ["pretrain", "sft", "dpo"])
def test_each_stage_changes_the_weights_and_its_loss_falls(tiny_root, tmp_path, stage):
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0)
    batches = list(train)
    if stage == "dpo":
        train_steps(model, batches, 20)  # a reference worth improving on
    model.set_stage(stage)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    losses = train_steps(model, batches, 50)
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
    changed = [k for k, v in model.named_parameters() if not torch.equal(v, before[k])]
    assert any(k.startswith("inputs.encoder.") for k in changed)
    assert any(k.startswith("sid_decoder.decoder.") for k in changed)


def test_dpo_learns_to_prefer_the_chosen_item(tiny_root, tmp_path):
    """Toy preferences: every training row's chosen item over its visually close rival."""
    _, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, stages={"sft": {}, "dpo": {"beta": 0.5}})
    batches = list(train)
    model.set_stage("dpo")  # reference = the untrained model: no preference yet
    order = dataset.field2token_id["behaviour"]["order"]

    def preferred_share(only_orders=False):
        with torch.no_grad():
            wins = [(model(b, b["item_id"]) > model(b, objectives.rejected_items(model, b)))[
                b["behaviour"] == order if only_orders else slice(None)].float() for b in batches]
        return torch.cat(wins).mean().item()

    before, before_orders = preferred_share(), preferred_share(only_orders=True)
    train_steps(model, batches, 100, lr=3e-3)
    assert preferred_share() > max(0.9, before + 0.2)
    assert preferred_share(only_orders=True) > max(0.9, before_orders + 0.2)


def test_resuming_from_a_stage_checkpoint_equals_an_uninterrupted_run(tiny_root, tmp_path):
    from recbole_onevision.registry import get_trainer

    def fit(stages, saved_dir, **extra):
        config, _, model, (train, valid, _) = prepare(tiny_root, tmp_path, stages=stages,
                                                      checkpoint_dir=str(saved_dir), **extra)
        trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model.to(config["device"]))
        trainer.fit(train, valid, saved=True, show_progress=False)
        return trainer, model

    whole, whole_model = fit({"pretrain": {"epochs": 1}, "sft": {"epochs": 2}}, tmp_path / "a")
    first, _ = fit({"pretrain": {"epochs": 1}}, tmp_path / "b")
    # the checkpoint says pretrain is done, so listing every stage resumes with SFT alone
    resumed, resumed_model = fit({"pretrain": {"epochs": 1}, "sft": {"epochs": 2}}, tmp_path / "c",
                                 start_checkpoint=first.stage_files["pretrain"])
    assert set(whole.stage_files) == {"pretrain", "sft"} and set(resumed.stage_files) == {"sft"}
    assert resumed_model.get_extra_state()["stages"] == ["pretrain", "sft"]
    for (name, a), (_, b) in zip(whole_model.state_dict().items(), resumed_model.state_dict().items()):
        if not isinstance(a, torch.Tensor):  # the recorded format and settings
            assert a == b, name
        elif a.is_cuda:  # CUDA kernels with atomic adds (scatter, index_add) sum in no fixed order
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(a, b), name
    # a stage's file, once the stage ended, says so; one saved mid-stage says which stage it is in
    saved = torch.load(first.stage_files["pretrain"], weights_only=True)["state_dict"]["_extra_state"]
    assert saved["stages"] == ["pretrain"] and saved["running"] is None
    resumed_model.stages_done = ("pretrain",)
    resumed_model.set_stage("sft")
    assert resumed_model.get_extra_state()["stages"] == ["pretrain"]
    assert resumed_model.get_extra_state()["running"] == "sft"
    # nothing left to train is an error, not a silent evaluation
    with pytest.raises(ValueError, match="has done every stage of config stages .pretrain.: nothing to train"):
        fit({"pretrain": {"epochs": 1}}, tmp_path / "d", start_checkpoint=first.stage_files["pretrain"])


def test_every_stage_is_validated_and_checkpointed_whatever_its_length(tiny_root, tmp_path):
    """eval_step is capped by each stage's epochs, not the config's: a 2-epoch stage with
    eval_step 5 still picks its best epoch on validation and writes its checkpoint."""
    from recbole_onevision.registry import get_trainer

    config, _, model, (train, valid, _) = prepare(
        tiny_root, tmp_path, stages={"pretrain": {"epochs": 1}, "sft": {"epochs": 2}}, eval_step=5,
        checkpoint_dir=str(tmp_path / "saved"))
    trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model.to(config["device"]))
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert set(trainer.stage_files) == {"pretrain", "sft"}
    assert all(result[1] is not None for result in trainer.stage_results.values())


def test_empty_history_rows_make_one_off_sessions_trainable(tiny_root, tmp_path):
    """With empty_history_rows every interaction is a row (RecBole skips each user's first),
    the first predicted from an empty history; OneVision trains on such rows."""
    _, dataset, _, splits = prepare(tiny_root, tmp_path)
    _, full, model, full_splits = prepare(tiny_root, tmp_path, empty_history_rows=True)
    rows = lambda parts: sum(len(p.dataset.inter_feat) for p in parts)  # noqa: E731
    users = len(np.unique(dataset.inter_feat["user_id"].numpy()))
    assert rows(full_splits) == rows(splits) + users
    train = full_splits[0].dataset.inter_feat
    empty = train["item_id_list"][:, 0] == 0
    assert empty.sum() == users  # the first session of each user, all in training (time order)
    assert (train["item_id_list"][empty] == 0).all()
    # other histories are RecBole's own: no padding item in front, length = items listed
    assert ((train["item_id_list"] > 0).sum(1)[~empty] == train["item_length"][~empty]).all()
    loss = model.calculate_loss(full_splits[0]._dataset.join(train[torch.nonzero(empty).squeeze(1)]))
    loss.backward()
    assert torch.isfinite(loss)
