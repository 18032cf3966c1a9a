"""OneVision's dense head and its ranking modes (``ranking: beams | dense | fused``)."""
import dataclasses

import pytest
import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from onevision_support import (PHOTO_LESS, dense_logits_of, dense_target_ranks, full_decoder_log_probs, prepare,
                               train_steps)
from recbole_onevision.config import Config
from recbole_onevision.model.onevision.beam_search import beam_search
from recbole_onevision.registry import create_dataset, get_model

DENSE = {"history_item_embedding": True, "dense_head": {"weight": 1.0}}


def test_onevision_without_photos_or_profile_runs_on_ml100k(tmp_path):
    """No query photos, SIDs from attributes + co-occurrence: the beams by default, every item
    by the dense head with the photo-less preset, both with ranking: fused."""
    def model_for(config_files=None, **extra):
        config = Config("OneVision", "ml-100k", config_files, {
            "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]},
            "vrq_cache_dir": str(tmp_path), "state": "WARNING", "show_progress": False,
            "train_batch_size": 32, "eval_batch_size": 32, **extra})
        init_seed(config["seed"], True)
        train, _, test = data_preparation(config, create_dataset(config))
        return config, get_model("OneVision")(config, train._dataset), train, test

    config, model, train, test = model_for()
    assert not model.params.photos and model.params.profile_fields == () and model.params.stages == ("sft", "dpo")
    assert model.params.ranking == "beams" and model.inputs.history_item_embedding is None  # nothing automatic
    batch = next(iter(test))[0]
    model.eval()
    assert torch.isfinite(model.full_sort_predict(batch)).sum(1).eq(config["beam_size"]).all()
    config, model, train, test = model_for([PHOTO_LESS])
    assert model.params.ranking == "dense" and model.params.dense_weight == 1.0
    assert model.inputs.input_dropout.p == 0.3 and model.sid_decoder.input_dropout.p == 0.1
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    row = model.full_sort_predict(batch)
    assert torch.isfinite(row[:, 1:]).all() and torch.isinf(row[:, 0]).all()  # every item, never padding
    config, model, _, _ = model_for([PHOTO_LESS], ranking="fused")
    model.eval()
    row = model.full_sort_predict(batch)
    assert (torch.isfinite(row).sum(1) >= config["beam_size"]).all() and torch.isinf(row[:, 0]).all()


# dot products are covered by the decoder readout, so the history readout runs with a temperature only
@pytest.mark.parametrize("stage, readout, temperature", [("sft", "decoder", None), ("dpo", "decoder", None),
                                                        ("sft", "history", 0.1)])
def test_dense_loss_teaches_the_dense_head_the_targets(tiny_root, tmp_path, stage, readout, temperature):
    """The dense head ranks the training targets far higher with its loss on than off."""
    mean_rank = {}
    for weight in (0.0, 1.0):
        # without the visual prior's extra passes (half a step's time), which the dense loss does not touch
        _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0,
                                             history_item_embedding=True, loss_weights={"visual_prior": 0.0},
                                             dense_head={"weight": weight, "readout": readout,
                                                         "temperature": temperature})
        batches = list(train)
        model.set_stage(stage)
        train_steps(model, batches, 120)  # past the transient: at 60 steps an AMD EPYC gave 0.61 (SFT), 0.41 (DPO)
        model.eval()
        mean_rank[weight] = dense_target_ranks(model, batches).mean()
    assert mean_rank[1.0] < 0.5 * mean_rank[0.0], mean_rank


def test_history_readout_reads_the_most_recent_history_item(tiny_root, tmp_path):
    """readout: history reads the encoder's state at each row's most recent history item, found
    the same way with absent tokens in place (training) and compacted away (inference); both
    adds the decoder's state at BOS."""
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0, ranking="dense", **DENSE)
    batch = next(iter(test))[0]
    seq, length = batch["item_id_list"], batch["item_length"]
    assert (length > 0).all() and (length < seq.shape[1]).any()  # padded rows: compaction moves tokens
    with torch.no_grad():
        model.train()  # no dropout: training's encoder differs from inference's only in keeping absent tokens
        memory, mask = model.inputs(batch, model.codes)
        recent = mask.shape[1] - seq.shape[1] + length - 1  # history is the encoder's last segment
        expected, width = memory[torch.arange(len(seq)), recent], memory.shape[1]
        model.eval()
        memory, mask = model.inputs(batch, model.codes)
        assert memory.shape[1] < width  # compacted
        first = torch.randn(len(seq), memory.shape[2])
        assert torch.allclose(model.dense.state(memory, mask, first), expected, atol=1e-5)
        model.dense.readout = "both"
        assert torch.allclose(model.dense.state(memory, mask, first), expected + first, atol=1e-5)
        model.dense.readout = "decoder"
        assert torch.equal(model.dense.state(memory, mask, first), first)
        model.dense.readout = "history"  # ranked by it alone: no decoder pass needed
        row = model.full_sort_predict(batch)
        logits = model.dense.logits(expected, model.item_vectors())
        assert torch.allclose(row[:, 1:], torch.log_softmax(logits, -1)[:, 1:], atol=1e-5)
    with pytest.raises(ValueError, match="dense_head readout: expected one of decoder, history, both, got 'last'"):
        prepare(tiny_root, tmp_path, **{**DENSE, "dense_head": {"weight": 1.0, "readout": "last"}})
    # a checkpoint's dense head is read the way it was trained, or refused
    _, _, decoder, _ = prepare(tiny_root, tmp_path, **{**DENSE, "dense_head": {"weight": 1.0, "readout": "decoder"}})
    with pytest.raises(ValueError, match="dense_readout: 'history' \\(this run: 'decoder'\\)"):
        decoder.load_state_dict(model.state_dict())
    model.load_state_dict(model.state_dict())


def test_dense_temperature_scores_cosine_over_it(tiny_root, tmp_path):
    """A temperature scores cosine similarity / temperature, bounded by 1 / temperature whatever
    the vectors' norms; bad values are refused, and so is a checkpoint trained with another."""
    _, _, model, _ = prepare(tiny_root, tmp_path, **{**DENSE, "dense_head": {"weight": 1.0, "temperature": 0.1}})
    items = model.item_vectors().detach()
    states = 100 * torch.randn(3, items.shape[1])
    with torch.no_grad():
        logits = model.dense.logits(states, items)
    expected = torch.nn.functional.cosine_similarity(states[:, None], items[None], dim=-1) / 0.1
    assert torch.allclose(logits[:, 1:], expected[:, 1:], atol=1e-4)
    assert logits[:, 1:].abs().max() <= 10 + 1e-4 and torch.isneginf(logits[:, 0]).all()
    for bad in (0, -1.0, float("nan"), float("inf"), "cold"):
        with pytest.raises(ValueError, match="dense_head temperature: expected ~ .dot products. or a value > 0"):
            prepare(tiny_root, tmp_path, **{**DENSE, "dense_head": {"weight": 1.0, "temperature": bad}})
    _, _, dot, _ = prepare(tiny_root, tmp_path, **DENSE)
    with torch.no_grad():
        assert torch.allclose(dot.dense.logits(states, items)[:, 1:], states @ items[1:].T)
    with pytest.raises(ValueError, match="dense_temperature: 0.1 \\(this run: None\\)"):
        dot.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="dense_temperature: None \\(this run: 0.1\\)"):
        model.load_state_dict(dot.state_dict())


def test_fused_ranking_adds_the_dense_heads_items_to_the_beams(tiny_root, tmp_path):
    """ranking: fused: the dense head's top items join the beams and every returned item is
    scored constrained SID log-probability + weight x dense log-probability, best first, once."""
    # no visual bias: its -1 for codes that continue no SID would make constrained ~ unconstrained
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path, ranking="fused", visual_bias=0.0, **DENSE)
    torch.nn.init.normal_(model.inputs.history_item_embedding.weight, std=1.0)  # a head that disagrees with the beams
    model.eval()
    batch = next(iter(test))[0]
    items, scores, _ = beam_search(model, batch, config["beam_size"], prune=False, fuse_dense=2.0)
    assert items.shape == (len(batch), config["beam_size"])
    assert ((items >= 1) & (items < dataset.item_num)).all()
    assert all(len(set(row.tolist())) == len(row) for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    dense = torch.log_softmax(dense_logits_of(model, batch), -1)
    constrained, _ = full_decoder_log_probs(model, batch, items)  # as the beams score them
    assert not torch.allclose(constrained, model(batch, items), atol=1e-3)  # teacher forcing's differ
    assert torch.allclose(scores, constrained + 2.0 * dense.gather(1, items), atol=1e-4)
    # every item comes from the beams alone or from the dense head's top beam_size, and some from the latter
    alone, _, _ = beam_search(model, batch, config["beam_size"], prune=False)
    retrieved = dense.topk(config["beam_size"], 1).indices
    from_dense = [set(r.tolist()) - set(a.tolist()) for r, a in zip(items, alone)]
    assert all(extra <= set(d.tolist()) for extra, d in zip(from_dense, retrieved))
    assert any(from_dense)
    # full ranking fuses with weight 1
    items, scores, _ = beam_search(model, batch, config["beam_size"], prune=False, fuse_dense=1.0)
    top = model.full_sort_predict(batch).topk(10, dim=1)
    assert torch.equal(top.indices, items[:, :10]) and torch.allclose(top.values, scores[:, :10])


def test_dense_ranking_scores_every_item_by_the_dense_head(tiny_root, tmp_path):
    """ranking: dense gives every item its dense log-probability (a finite score for each, not
    the beams' few), the same ranking as the dense head's logits; sampled evaluation agrees."""
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path, ranking="dense", **DENSE)
    torch.nn.init.normal_(model.inputs.history_item_embedding.weight, std=1.0)
    model.eval()
    batch = next(iter(test))[0]
    row = model.full_sort_predict(batch)
    assert torch.isfinite(row[:, 1:]).all() and torch.isinf(row[:, 0]).all()
    assert torch.allclose(row[:, 1:], torch.log_softmax(dense_logits_of(model, batch), -1)[:, 1:], atol=1e-5)
    expected = row.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
    assert torch.allclose(model.predict(batch), expected, atol=1e-5)
    model.params = dataclasses.replace(model.params, ranking="beams")  # the same weights, decoded
    assert not torch.allclose(model.predict(batch), expected, atol=1e-3)  # the SID log-probability
    assert (torch.isfinite(model.full_sort_predict(batch)).sum(1) <= model.params.beam_size).all()


def test_dense_head_settings_are_checked(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="config dense_head weight: expected a value >= 0, got -1.0"):
        prepare(tiny_root, tmp_path, **{**DENSE, "dense_head": {"weight": -1.0}})
    with pytest.raises(ValueError, match="dense_head: weight > 0 needs history_item_embedding: True"):
        prepare(tiny_root, tmp_path, dense_head={"weight": 1.0})
    for ranking in ("dense", "fused"):
        with pytest.raises(ValueError, match=f"ranking: {ranking} needs a trained dense head"):
            prepare(tiny_root, tmp_path, history_item_embedding=True, ranking=ranking)
    with pytest.raises(ValueError, match="ranking: expected one of beams, dense, fused, got 'both'"):
        prepare(tiny_root, tmp_path, ranking="both")
    # a checkpoint trained without the dense head cannot be ranked by it, nor the other way round
    _, _, untrained, _ = prepare(tiny_root, tmp_path, history_item_embedding=True)
    _, _, dense, _ = prepare(tiny_root, tmp_path, ranking="dense", **DENSE)
    with pytest.raises(ValueError, match="dense_head: False \\(this run: True\\)"):
        dense.load_state_dict(untrained.state_dict())
    _, _, beams, _ = prepare(tiny_root, tmp_path, ranking="beams", **DENSE)
    beams.load_state_dict(dense.state_dict())  # ranking is an inference setting


def test_sid_weight_zero_trains_the_dense_head_alone(tiny_root, tmp_path):
    """The ablation leaves the SID output layer as initialised while the dense head learns the
    targets; without ranking: dense, or with a dpo stage, it is refused (the beams would be untrained)."""
    common = dict(dropout=0.0, encoder_dropout=0.0, ranking="dense", stages=["sft"], **DENSE)
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, loss_weights={"sid": 0.0, "visual_prior": 0.0}, **common)
    batches = list(train)
    model.eval()
    rank_before = dense_target_ranks(model, batches).mean()
    output = model.sid_decoder.output.weight.detach().clone()
    model.train()
    train_steps(model, batches, 60)
    model.eval()
    assert torch.equal(model.sid_decoder.output.weight, output)
    assert dense_target_ranks(model, batches).mean() < 0.5 * rank_before
    _, _, with_sid, _ = prepare(tiny_root, tmp_path, loss_weights={"visual_prior": 0.0}, **common)
    train_steps(with_sid, batches, 5)
    assert not torch.equal(with_sid.sid_decoder.output.weight, output)  # the default's SFT does train it
    with pytest.raises(ValueError, match="loss_weights: sid 0 leaves the decoder untrained"):
        prepare(tiny_root, tmp_path, loss_weights={"sid": 0.0}, **{**common, "ranking": "fused"})
    with pytest.raises(ValueError, match="loss_weights: sid 0 cannot run the dpo stage"):
        prepare(tiny_root, tmp_path, loss_weights={"sid": 0.0}, **{**common, "stages": ["sft", "dpo"]})
    with pytest.raises(ValueError, match="loss_weights sid: expected a value >= 0, got -1.0"):
        prepare(tiny_root, tmp_path, loss_weights={"sid": -1.0}, **common)


@pytest.mark.parametrize("item_embedding", [False, True])
def test_history_item_embedding_tells_apart_items_with_the_same_sid(tiny_root, tmp_path, item_embedding):
    # item attributes off: they too tell items apart (tests/test_item_attributes.py)
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0,
                                         history_item_embedding=item_embedding, item_attributes=False)
    batch = next(iter(train))
    if item_embedding:  # learned: the rows of items read in the histories move
        before = model.item_vectors().detach().clone()
        train_steps(model, [batch], 3)
        moved = (model.item_vectors() != before).any(1)
        assert moved[batch["item_id_list"].unique()[1:]].all() and not moved[0]
    model.eval()
    seq = batch["item_id_list"]
    a = int(seq[0, 0])
    b = next(i for i in range(1, model.n_items) if i not in seq[0].tolist())
    model.codes.item_tokens[b] = model.codes.item_tokens[a]  # b's SID now reads as a's
    swapped = Interaction({**batch.interaction, "item_id_list": torch.where(seq == a, b, seq)})
    same = torch.allclose(model.inputs(batch, model.codes)[0][0], model.inputs(swapped, model.codes)[0][0])
    assert same != item_embedding
    # a checkpoint made the other way round is refused, naming the setting
    _, _, other, _ = prepare(tiny_root, tmp_path, history_item_embedding=not item_embedding, item_attributes=False)
    with pytest.raises(ValueError, match=f"history_item_embedding: {item_embedding} \\(this run: {not item_embedding}\\)"):
        other.load_state_dict(model.state_dict())
