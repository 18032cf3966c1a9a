"""OneVision: the trie, constrained beam search, full_sort_predict, training on a tiny shop."""
import importlib.util
import os
import shutil

import numpy as np
import pytest
import torch
from recbole.data import data_preparation
from recbole.data.interaction import Interaction
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.data import mvshop
from recbole_onevision.model import onevision as onevision_module
from recbole_onevision.model.decoder_cache import DecoderCache
from recbole_onevision.model import trie as trie_module
from recbole_onevision.model.trie import SIDTrie
from recbole_onevision.quick_start import run
from recbole_onevision.registry import create_dataset, dataset_properties_file, get_model

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")
TINY = mvshop.MVShopSpec(n_items=300, n_users=40, sessions_per_user=8, branching=(3, 2, 2), n_brands=12)


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    mvshop.generate("mini", str(root), spec=TINY)
    return root


def prepare(root, tmp_path, **extra):
    config = Config("OneVision", "mvshop-mini", None, {
        "data_path": str(root), "vrq_align_steps": 100, "vrq_cache_dir": str(tmp_path / "cache"),
        "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False, "state": "WARNING",
        "d_model": 32, "ffn_size": 64, "train_batch_size": 64, "eval_batch_size": 64, **extra})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("OneVision")(config, train._dataset)
    return config, dataset, model, (train, valid, test)


@pytest.mark.parametrize("table_limit", [0, trie_module.DENSE_TABLE_LIMIT])  # searched keys, lookup tables
def test_trie_only_continues_real_sids(table_limit, monkeypatch):
    monkeypatch.setattr(trie_module, "DENSE_TABLE_LIMIT", table_limit)
    sid = torch.tensor([[-1, -1, -1], [0, 1, 0], [0, 1, 1], [2, 0, 0], [1, 1, 0]])
    trie = SIDTrie(sid, [3, 2, 2])
    assert trie.step(0, torch.tensor([0])).tolist() == [[0, 1, 2]]  # prefixes (0,), (1,), (2,) -> nodes
    level1 = trie.step(1, trie.step(0, torch.tensor([0]))[0])
    assert (level1 >= 0).sum() == 3  # (0,1), (1,1), (2,0)
    node01 = trie.step(1, torch.tensor([trie.step(0, torch.tensor([0]))[0, 0]]))[0, 1]
    assert trie.step(2, node01.view(1)).tolist() == [[1, 2]]  # items 1 and 2
    assert trie.parents(2)[[1, 2, 3, 4]].tolist() == trie.item_nodes(1)[[1, 2, 3, 4]].tolist()
    assert trie.parents(1)[trie.item_nodes(1)[1:]].tolist() == trie.item_nodes(0)[1:].tolist()
    with pytest.raises(ValueError, match="not unique"):
        SIDTrie(torch.tensor([[-1, -1], [0, 1], [0, 1]]), [2, 2])


def test_trie_lookup_tables_agree_with_the_key_search(monkeypatch):
    generator = torch.Generator().manual_seed(0)
    sid = torch.unique(torch.randint(0, 6, (300, 3), generator=generator), dim=0)
    sid = torch.cat([torch.full((1, 3), -1), sid])
    tables = SIDTrie(sid, [6, 6, 6])
    monkeypatch.setattr(trie_module, "DENSE_TABLE_LIMIT", 40)  # only the first two levels get one
    mixed = SIDTrie(sid, [6, 6, 6])
    monkeypatch.setattr(trie_module, "DENSE_TABLE_LIMIT", 0)
    search = SIDTrie(sid, [6, 6, 6])
    assert hasattr(mixed, "table1") and not hasattr(mixed, "table2")
    for level in range(3):
        nodes = torch.arange(int(tables.item_nodes(level - 1).max()) + 1 if level else 1)
        expected = search.step(level, nodes.view(-1, 1))  # any shape of nodes
        assert torch.equal(tables.step(level, nodes.view(-1, 1)), expected)
        assert torch.equal(mixed.step(level, nodes.view(-1, 1)), expected)
        assert (expected >= 0).any(-1).all()  # every node continues some SID


def mean_item_vectors(model, level: int) -> torch.Tensor:
    """(nodes, d) each trie node's mean item embedding, from a membership matrix."""
    nodes = model.trie.item_nodes(level)[1:]
    member = torch.zeros(int(nodes.max()) + 1, len(nodes))
    member[nodes, torch.arange(len(nodes))] = 1.0
    return member / member.sum(1, keepdim=True).clamp_min(1) @ model.history_item_embedding.weight[1:]


def full_decoder_log_probs(model, batch, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row's ``items`` (rows, k), from the full (uncached) decoder: the constrained SID
    log-probability (codes that continue no real SID left out; rows, k), and each level's
    log-probability over the whole codebook (rows * k, levels), as teacher forcing computes it."""
    memory, mask = model.encode(batch)
    similarity = model.photo_similarity(batch)
    k = items.shape[1]
    rows, best = torch.arange(len(batch)).repeat_interleave(k), items.reshape(-1)
    targets = model.item_tokens[best]
    bos = torch.full((len(best), 1), model.bos_token)
    states = model.decode(memory[rows], mask[rows], torch.cat([bos, targets[:, :-1]], 1))
    total, parent, unmasked = torch.zeros(len(best)), torch.zeros_like(best), []
    for level in range(model.levels):
        child = model.trie.step(level, parent)
        logits = model.level_logits(states[:, level], level)
        if similarity is not None:
            logits = logits + model.visual_logit_bias(similarity[level][rows], level, child)  # rows copied
        if model.item_output:
            vectors = mean_item_vectors(model, level)[child.clamp_min(0)]
            logits = logits + (states[:, level].unsqueeze(1) * vectors).sum(2) * (child >= 0)
        logp = torch.log_softmax(logits.masked_fill(child < 0, -1e9), -1)
        code = targets[:, level] - model.offsets[level]
        total += logp.gather(1, code.unsqueeze(1)).squeeze(1)
        parent = model.trie.item_nodes(level)[best]
        unmasked.append(torch.log_softmax(logits, -1).gather(1, code.unsqueeze(1)).squeeze(1))
    return total.view(len(batch), k), torch.stack(unmasked, 1)


@pytest.mark.parametrize("item_output", [False, True])
def test_beam_search_yields_real_items_and_full_sort_agrees(tiny_root, tmp_path, item_output):
    extra = {"history_item_embedding": True, "item_output": True, "dense_loss_weight": 0} if item_output else {}
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path, **extra)  # the beams alone
    if item_output:  # trained vectors, not the near-zero initial ones, so the term matters
        torch.nn.init.normal_(model.history_item_embedding.weight, std=1.0)
    else:
        assert model.history_item_embedding is None and not model.item_output  # auto: off with photos
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.generate(batch)
    assert items.shape == (len(batch), config["beam_size"])
    assert ((items >= 1) & (items < dataset.item_num)).all()  # never padding, never a made-up id
    assert all(len(set(row.tolist())) == len(row) for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    # every returned item's SID is a real SID and its score is the constrained log-probability
    row = model.full_sort_predict(batch)
    assert torch.isfinite(row).sum(1).tolist() == [config["beam_size"]] * len(batch)
    top = row.topk(10, dim=1)
    assert torch.equal(top.indices, items[:, :10]) and torch.allclose(top.values, scores[:, :10])
    # the (key/value-cached) beam scores equal the full decoder's constrained log-probabilities
    total, unmasked = full_decoder_log_probs(model, batch, items[:, :3])
    assert torch.allclose(total, scores[:, :3], atol=1e-4)
    # teacher forcing (training) adds the same terms, over the level's whole codebook
    rows, best = torch.arange(len(batch)).repeat_interleave(3), items[:, :3].reshape(-1)
    prior = model.path_similarity(Interaction({k: v[rows] for k, v in batch.interaction.items()}), best)
    memory, mask = model.encode(batch)
    trained = model.sid_log_likelihood(memory[rows], mask[rows], best, prior)
    assert torch.allclose(trained, unmasked, atol=1e-4)
    # an anonymous query with no photo still decodes real items
    batch.interaction["query_id"] = torch.zeros_like(batch["query_id"])
    anonymous, _ = model.generate(batch)
    assert ((anonymous >= 1) & (anonymous < dataset.item_num)).all()


def test_cached_decoding_equals_the_full_decoder():
    torch.manual_seed(0)
    layer = torch.nn.TransformerDecoderLayer(16, 2, 32, 0.1, batch_first=True, norm_first=True)
    decoder = torch.nn.TransformerDecoder(layer, 2, norm=torch.nn.LayerNorm(16)).eval()
    memory, mask = torch.randn(3, 5, 16), torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False, True] * 2 + [False]])
    tokens = torch.randn(6, 3, 16)  # 6 beams (2 per row), 3 positions
    tokens[1::2, 0] = tokens[::2, 0]  # a row's beams share its first token
    beam_rows = torch.tensor([0, 0, 1, 1, 2, 2])
    causal = torch.nn.Transformer.generate_square_subsequent_mask(3)
    with torch.no_grad():
        full = decoder(tokens, memory[beam_rows], tgt_mask=causal, memory_key_padding_mask=mask[beam_rows])
        cache = DecoderCache(decoder, memory, mask)
        first = cache.step(tokens[::2, 0], torch.arange(3), torch.arange(3))  # one beam per row
        assert torch.allclose(first, full[::2, 0], atol=1e-5)
        cache.reorder(torch.tensor([0, 0, 1, 1, 2, 2]))  # each row's beam splits in two
        assert torch.allclose(cache.step(tokens[:, 1], torch.arange(6), beam_rows), full[:, 1], atol=1e-5)
        cache.reorder(torch.tensor([1, 0, 2, 3, 5, 4]))  # beams swap within rows
        swapped = torch.tensor([1, 0, 2, 3, 5, 4])
        live = torch.tensor([0, 1, 3, 4])  # some beams finished: not decoded
        got = cache.step(tokens[swapped][live, 2], live, beam_rows[live])
        reference = decoder(tokens[swapped], memory[beam_rows], tgt_mask=causal,
                            memory_key_padding_mask=mask[beam_rows])
        assert torch.allclose(got, reference[live, 2], atol=1e-5)


def test_training_memorises_a_tiny_shop(tiny_root, tmp_path):
    """No dropout, many steps: decoding each training row's target returns it at rank 1."""
    config, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0)
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    batches = list(train)
    losses = []
    for _ in range(60):
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
        items, _ = model.generate(batch, beam_size=5)
        hits += (items[:, 0] == batch["item_id"]).sum().item()
        total += len(batch)
    assert hits / total > 0.9


def test_onevision_without_photos_or_profile_runs_on_ml100k(tmp_path):
    """Degraded mode: no query photos, SIDs from attributes + co-occurrence."""
    config = Config("OneVision", "ml-100k", None, {
        "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "class"]},
        "vrq_cache_dir": str(tmp_path), "state": "WARNING", "show_progress": False,
        "train_batch_size": 32, "eval_batch_size": 32})
    init_seed(config["seed"], True)
    train, _, test = data_preparation(config, create_dataset(config))
    model = get_model("OneVision")(config, train._dataset)
    assert model.query_feature is None and model.profile_fields == []
    # auto without query photos: the item embedding, trained by the dense head, which alone ranks
    assert model.history_item_embedding is not None and not model.item_output
    assert model.dense_loss_weight == 1.0 and model.dense_only and model.encoder_input_dropout.p == 0.3
    loss = model.calculate_loss(next(iter(train)))
    loss.backward()
    assert torch.isfinite(loss)
    model.eval()
    batch = next(iter(test))[0]
    row = model.full_sort_predict(batch)
    assert torch.isfinite(row[:, 1:]).all() and torch.isinf(row[:, 0]).all()  # every item, never padding
    model.dense_only = False  # --dense_only=False: decoded, the beams and the dense head's top items
    row = model.full_sort_predict(batch)
    assert (torch.isfinite(row).sum(1) >= config["beam_size"]).all() and torch.isinf(row[:, 0]).all()


@pytest.mark.parametrize("item_embedding", [False, True])
def test_history_item_embedding_tells_apart_items_with_the_same_sid(tiny_root, tmp_path, item_embedding):
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0,
                                         history_item_embedding=item_embedding)
    batch = next(iter(train))
    if item_embedding:  # learned: the rows of items read in the histories move
        before = model.history_item_embedding.weight.detach().clone()
        train_steps(model, [batch], 3)
        moved = (model.history_item_embedding.weight != before).any(1)
        assert moved[batch["item_id_list"].unique()[1:]].all() and not moved[0]
    model.eval()
    seq = batch["item_id_list"]
    a = int(seq[0, 0])
    b = next(i for i in range(1, model.n_items) if i not in seq[0].tolist())
    model.item_tokens[b] = model.item_tokens[a]  # b's SID now reads as a's
    swapped = Interaction({**batch.interaction, "item_id_list": torch.where(seq == a, b, seq)})
    same = torch.allclose(model.encode(batch)[0][0], model.encode(swapped)[0][0])
    assert same != item_embedding
    # a checkpoint made the other way round is refused with the setting to use
    _, _, other, _ = prepare(tiny_root, tmp_path, history_item_embedding=not item_embedding)
    with pytest.raises(ValueError, match=f"--history_item_embedding={item_embedding}"):
        other.load_state_dict(model.state_dict())


@pytest.mark.parametrize("item_output", [False, True])
def test_item_output_trains_item_vectors_through_the_decoder(tiny_root, tmp_path, item_output):
    """With item_output the decoder's logits read the item embeddings, so the rows of items no
    history holds (here: targets) are trained too; without it only history items' rows are.
    A checkpoint made with the other setting is refused with the setting to use."""
    # no dense loss: it trains every item's row, whatever item_output
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, history_item_embedding=True, item_output=item_output,
                                         dense_loss_weight=0)
    batch = next(iter(train))
    model.calculate_loss(batch).backward()
    grad = model.history_item_embedding.weight.grad.abs().sum(1)
    only_targets = sorted(set(batch["item_id"].tolist()) - set(batch["item_id_list"].view(-1).tolist()))
    assert only_targets
    assert bool((grad[only_targets] > 0).all()) == item_output
    assert (grad[only_targets] == 0).all() != item_output
    _, _, other, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, item_output=not item_output,
                             dense_loss_weight=0)
    with pytest.raises(ValueError, match=f"--item_output={item_output}"):
        other.load_state_dict(model.state_dict())


def dense_logits_of(model, batch) -> torch.Tensor:
    """(rows, n_items) the dense head's scores, from the full decoder's state at BOS."""
    memory, mask = model.encode(batch)
    first = model.decode(memory, mask, torch.full((len(batch), 1), model.bos_token))[:, 0]
    return model.dense_logits(model.dense_state(memory, mask, first))


def dense_target_ranks(model, batches) -> torch.Tensor:
    """Each training row's target's rank (0 = first) among all items by the dense head."""
    ranks = []
    with torch.no_grad():
        for batch in batches:
            logits = dense_logits_of(model, batch)
            target = logits.gather(1, batch["item_id"].unsqueeze(1))
            ranks.append((logits > target).sum(1))
    return torch.cat(ranks).float()


@pytest.mark.parametrize("stage, readout, temperature", [("sft", "decoder", None), ("dpo", "decoder", None),
                                                        ("sft", "history", None), ("sft", "history", 0.1)])
def test_dense_loss_teaches_the_dense_head_the_targets(tiny_root, tmp_path, stage, readout, temperature):
    """The dense head ranks the training targets far higher with its loss on than with the SID
    loss alone (which trains it only through the first level's node vectors)."""
    mean_rank = {}
    for weight in (0.0, 1.0):
        _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0,
                                             history_item_embedding=True, dense_loss_weight=weight,
                                             dense_readout=readout, dense_temperature=temperature)
        batches = list(train)
        model.set_stage(stage)
        train_steps(model, batches, 120)  # past the transient: at 60 steps an AMD EPYC gave 0.61 (SFT), 0.41 (DPO)
        model.eval()
        mean_rank[weight] = dense_target_ranks(model, batches).mean()
    assert mean_rank[1.0] < 0.5 * mean_rank[0.0], mean_rank


def test_history_readout_reads_the_most_recent_history_item(tiny_root, tmp_path):
    """dense_readout: history reads the encoder's state at each row's most recent history item,
    found the same way with absent tokens in place (training) and compacted away (inference);
    both adds the decoder's state at BOS."""
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path, dropout=0.0, encoder_dropout=0.0,
                                        history_item_embedding=True, dense_readout="history")
    batch = next(iter(test))[0]
    seq, length = batch["item_id_list"], batch["item_length"]
    assert (length > 0).all() and (length < seq.shape[1]).any()  # padded rows: compaction moves tokens
    with torch.no_grad():
        model.train()  # no dropout: training's encoder differs from inference's only in keeping absent tokens
        memory, mask = model.encode(batch)
        recent = mask.shape[1] - seq.shape[1] + length - 1  # history is the encoder's last segment
        expected, width = memory[torch.arange(len(seq)), recent], memory.shape[1]
        model.eval()
        memory, mask = model.encode(batch)
        assert memory.shape[1] < width  # compacted
        first = torch.randn(len(seq), memory.shape[2])
        assert torch.allclose(model.dense_state(memory, mask, first), expected, atol=1e-5)
        model.dense_readout = "both"
        assert torch.allclose(model.dense_state(memory, mask, first), expected + first, atol=1e-5)
        model.dense_readout = "decoder"
        assert torch.equal(model.dense_state(memory, mask, first), first)
        model.dense_readout, model.dense_only = "history", True  # ranked by it alone: no decoder pass needed
        row = model.full_sort_predict(batch)
        assert torch.allclose(row[:, 1:], torch.log_softmax(model.dense_logits(expected), -1)[:, 1:], atol=1e-5)
        model.dense_only = False
    with pytest.raises(ValueError, match="dense_readout: expected one of decoder, history, both, got 'last'"):
        prepare(tiny_root, tmp_path, history_item_embedding=True, dense_readout="last")
    # a checkpoint's dense head is read the way it was trained, or refused
    _, _, decoder, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_readout="decoder")
    with pytest.raises(ValueError, match="--dense_readout=history"):
        decoder.load_state_dict(model.state_dict())
    model.dense_readout = "history"
    model.load_state_dict(model.state_dict())


def test_dense_temperature_scores_cosine_over_it(tiny_root, tmp_path):
    """dense_temperature scores cosine similarity / temperature, bounded by 1 / temperature
    whatever the vectors' norms; bad values are refused, and a checkpoint's dense head is read
    with the temperature it was trained with, or refused."""
    _, _, model, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_temperature=0.1)
    items = model.history_item_embedding.weight.detach()
    states = 100 * torch.randn(3, items.shape[1])
    with torch.no_grad():
        logits = model.dense_logits(states)
    expected = torch.nn.functional.cosine_similarity(states[:, None], items[None], dim=-1) / 0.1
    assert torch.allclose(logits[:, 1:], expected[:, 1:], atol=1e-4)
    assert logits[:, 1:].abs().max() <= 10 + 1e-4 and torch.isneginf(logits[:, 0]).all()
    for bad in (0, -1.0, float("nan"), float("inf"), "cold"):
        with pytest.raises(ValueError, match="dense_temperature: expected ~ .dot products. or a value > 0"):
            prepare(tiny_root, tmp_path, history_item_embedding=True, dense_temperature=bad)
    _, _, dot, _ = prepare(tiny_root, tmp_path, history_item_embedding=True)
    with torch.no_grad():
        assert torch.allclose(dot.dense_logits(states)[:, 1:], states @ dot.history_item_embedding.weight[1:].T)
    with pytest.raises(ValueError, match="dense_temperature: 0.1, .* set `--dense_temperature=0.1`"):
        dot.load_state_dict(model.state_dict())
    with pytest.raises(ValueError, match="set `--dense_temperature=None`"):
        model.load_state_dict(dot.state_dict())
    model.load_state_dict(model.state_dict())


def test_dense_scores_join_the_beams(tiny_root, tmp_path):
    """With dense_score_weight, the dense head's top items join the beams and every returned
    item is scored constrained SID log-probability + weight x dense log-probability, best first,
    each once."""
    # no visual bias: its -1 for codes that continue no SID would make constrained ~ unconstrained
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path, history_item_embedding=True,
                                                   dense_only=False, dense_score_weight=2.0, visual_bias=False)
    torch.nn.init.normal_(model.history_item_embedding.weight, std=1.0)  # a dense head that disagrees with the beams
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.generate(batch)
    assert items.shape == (len(batch), config["beam_size"])
    assert ((items >= 1) & (items < dataset.item_num)).all()
    assert all(len(set(row.tolist())) == len(row) for row in items)
    assert (scores[:, :-1] >= scores[:, 1:]).all()
    dense = torch.log_softmax(dense_logits_of(model, batch), -1)
    constrained, _ = full_decoder_log_probs(model, batch, items)  # as the beams score them
    assert not torch.allclose(constrained, model(batch, items), atol=1e-3)  # teacher forcing's differ
    assert torch.allclose(scores, constrained + 2.0 * dense.gather(1, items), atol=1e-4)
    # every item comes from the beams alone or from the dense head's top beam_size, and some from the latter
    model.dense_score_weight = 0.0
    alone, _ = model.generate(batch)
    model.dense_score_weight = 2.0
    retrieved = dense.topk(config["beam_size"], 1).indices
    from_dense = [set(r.tolist()) - set(a.tolist()) for r, a in zip(items, alone)]
    assert all(extra <= set(d.tolist()) for extra, d in zip(from_dense, retrieved))
    assert any(from_dense)
    row = model.full_sort_predict(batch)
    top = row.topk(10, dim=1)
    assert torch.equal(top.indices, items[:, :10]) and torch.allclose(top.values, scores[:, :10])


def test_dense_only_ranks_every_item_by_the_dense_head(tiny_root, tmp_path):
    """The ablation: full_sort_predict gives every item its dense log-probability (a finite score
    for each, not the beams' few), the same ranking as the dense head's logits."""
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_only=True)
    torch.nn.init.normal_(model.history_item_embedding.weight, std=1.0)
    model.eval()
    batch = next(iter(test))[0]
    row = model.full_sort_predict(batch)
    assert torch.isfinite(row[:, 1:]).all() and torch.isinf(row[:, 0]).all()
    assert torch.allclose(row[:, 1:], torch.log_softmax(dense_logits_of(model, batch), -1)[:, 1:], atol=1e-5)
    # sampled evaluation scores an item as full ranking does
    expected = row.gather(1, batch["item_id"].unsqueeze(1)).squeeze(1)
    assert torch.allclose(model.predict(batch), expected, atol=1e-5)
    model.dense_only = False
    assert not torch.allclose(model.predict(batch), expected, atol=1e-3)  # the SID log-probability
    beams = model.full_sort_predict(batch)
    assert (torch.isfinite(beams).sum(1) <= model.beam_size).all()  # what dense_only is compared with


@pytest.mark.parametrize("key", ["dense_loss_weight", "dense_score_weight"])
def test_dense_head_settings_are_checked(tiny_root, tmp_path, key):
    with pytest.raises(ValueError, match=f"config {key}: expected a value >= 0"):
        prepare(tiny_root, tmp_path, history_item_embedding=True, **{key: -1.0})
    with pytest.raises(ValueError, match=f"config {key}: .*without history_item_embedding"):
        prepare(tiny_root, tmp_path, history_item_embedding=False, **{key: 1.0})


def test_dense_head_defaults_and_checkpoints(tiny_root, tmp_path):
    """Auto: trained with the item embedding, and then it alone ranks unless item_output is on
    (off with photos: the beams rank); scoring by an untrained dense head is refused, in the
    config and when loading a checkpoint trained without its loss."""
    _, _, photos, _ = prepare(tiny_root, tmp_path)  # query photos: no item embedding, so no dense head
    assert (photos.dense_loss_weight, photos.dense_score_weight, photos.dense_only) == (0.0, 0.0, False)
    _, _, auto, _ = prepare(tiny_root, tmp_path, history_item_embedding=True)
    assert (auto.dense_loss_weight, auto.dense_score_weight, auto.dense_only) == (1.0, 1.0, True)
    _, _, fused, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, item_output=True)
    assert (fused.dense_loss_weight, fused.dense_score_weight, fused.dense_only) == (1.0, 1.0, False)
    with pytest.raises(ValueError, match="dense_score_weight: expected 0 when dense_loss_weight is 0"):
        prepare(tiny_root, tmp_path, history_item_embedding=True, dense_loss_weight=0, dense_score_weight=1.0)
    _, _, untrained, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_loss_weight=0)
    with pytest.raises(ValueError, match="--dense_loss_weight=0 --dense_score_weight=0"):
        auto.load_state_dict(untrained.state_dict())
    _, _, beams_only, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_only=False,
                                  dense_score_weight=0)
    beams_only.load_state_dict(untrained.state_dict())  # the beams alone need no dense training
    with pytest.raises(ValueError, match="dense_only: True needs dense_loss_weight > 0"):
        prepare(tiny_root, tmp_path, history_item_embedding=True, dense_loss_weight=0, dense_only=True)
    _, _, dense_only, _ = prepare(tiny_root, tmp_path, history_item_embedding=True, dense_only=True)
    with pytest.raises(ValueError, match="no `--dense_only`"):
        dense_only.load_state_dict(untrained.state_dict())
    dense_only.load_state_dict(auto.state_dict())
    untrained.load_state_dict(auto.state_dict())  # nor does a dense-trained checkpoint scored by beams


def test_sid_loss_weight_zero_trains_the_dense_head_alone(tiny_root, tmp_path):
    """The ablation leaves the SID output layer as initialised while the dense head learns the
    targets; without dense_only, or with a dpo stage, it is refused (the beams would be untrained)."""
    common = dict(dropout=0.0, encoder_dropout=0.0, history_item_embedding=True, visual_prior_weight=0.0,
                  dense_only=True, stages=["sft"])
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, sid_loss_weight=0.0, **common)
    batches = list(train)
    model.eval()
    rank_before = dense_target_ranks(model, batches).mean()
    output = model.output.weight.detach().clone()
    model.train()
    train_steps(model, batches, 60)
    model.eval()
    assert torch.equal(model.output.weight, output)
    assert dense_target_ranks(model, batches).mean() < 0.5 * rank_before
    _, _, with_sid, _ = prepare(tiny_root, tmp_path, **common)
    train_steps(with_sid, batches, 5)
    assert not torch.equal(with_sid.output.weight, output)  # the default's SFT does train it
    with pytest.raises(ValueError, match="sid_loss_weight: 0 leaves the decoder untrained"):
        prepare(tiny_root, tmp_path, sid_loss_weight=0.0, **{**common, "dense_only": False})
    with pytest.raises(ValueError, match="sid_loss_weight: 0 cannot run the dpo stage"):
        prepare(tiny_root, tmp_path, sid_loss_weight=0.0, **{**common, "stages": ["sft", "dpo"]})
    with pytest.raises(ValueError, match="sid_loss_weight: expected a value >= 0, got -1.0"):
        prepare(tiny_root, tmp_path, sid_loss_weight=-1.0, **common)


@pytest.mark.parametrize("nodes, grad", [(6, True), (100, True), (100, False)])
def test_node_logits_are_state_dot_child_vector(nodes, grad, monkeypatch):
    # the matrix-product path (few nodes), one product per (row, child) pair, one per parent
    monkeypatch.setattr(onevision_module, "GROUP_MIN_PAIRS", 2)
    torch.manual_seed(0)
    states, vectors = torch.randn(12, 8), torch.randn(nodes, 8)
    # like SIDTrie.step rows: 4 parents own disjoint children (some codes absent, one parent
    # without any), and rows under one parent repeat its children
    table = torch.randperm(nodes)[:4 * 6].view(4, 6) if nodes > 24 else torch.randint(0, nodes, (4, 6))
    table = table.masked_fill(torch.rand(4, 6) < 0.3, -1)
    table[3] = -1
    children = table[torch.randint(0, 4, (12,))]
    expected = torch.tensor([[float(states[r] @ vectors[c]) if c >= 0 else 0.0 for c in row.tolist()]
                             for r, row in enumerate(children)])
    with torch.set_grad_enabled(grad):
        got = get_model("OneVision").node_logits(states, vectors, children)
    assert torch.allclose(got, expected, atol=1e-5)


def test_item_output_needs_the_history_item_embedding(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="item_output: True needs history_item_embedding: True"):
        prepare(tiny_root, tmp_path, history_item_embedding=False, item_output=True)


def test_encoder_dropout_applies_to_the_encoder_alone(tiny_root, tmp_path):
    _, _, model, _ = prepare(tiny_root, tmp_path, dropout=0.1, encoder_dropout=0.5)
    encoder = {m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)}
    decoder = {m.p for m in model.decoder.modules() if isinstance(m, torch.nn.Dropout)}
    assert encoder == {0.5} and model.encoder_input_dropout.p == 0.5
    assert decoder == {0.1} and model.input_dropout.p == 0.1
    _, _, model, _ = prepare(tiny_root, tmp_path, dropout=0.2)  # ~: the encoder takes dropout...
    assert {m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    _, _, model, _ = prepare(tiny_root, tmp_path, dropout=0.2, history_item_embedding=True)
    assert model.dense_only  # ...but 0.3 when the dense head alone ranks
    assert {m.p for m in model.encoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.3}
    assert {m.p for m in model.decoder.modules() if isinstance(m, torch.nn.Dropout)} == {0.2}
    with pytest.raises(ValueError, match=r"encoder_dropout: expected a value in \[0, 1\), got 1.0"):
        prepare(tiny_root, tmp_path, encoder_dropout=1.0)


def test_beam_smaller_than_topk_is_rejected(tiny_root, tmp_path):
    with pytest.raises(ValueError, match="beam_size: expected at least the largest topk \\(10\\), got 5"):
        prepare(tiny_root, tmp_path, beam_size=5)


def tinyshop(tiny_root, tmp_path) -> tuple[list[str], list[str]]:
    """The tiny shop as dataset ``tinyshop`` in ``tmp_path`` (under its own name: run() would
    regenerate a folder called mvshop-mini at the real scale): (its protocol file, overrides)."""
    (tmp_path / "tinyshop").mkdir()
    for f in (tiny_root / "mvshop-mini").iterdir():
        shutil.copy(f, tmp_path / "tinyshop" / f.name.replace("mvshop-mini", "tinyshop"))
    return [dataset_properties_file("mvshop-mini")], [
        f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path}", "--show_progress=False", "--state=WARNING",
        "--vrq_align_steps=100"]


def test_run_py_trains_onevision_and_beats_popularity(tiny_root, tmp_path):
    protocol, common = tinyshop(tiny_root, tmp_path)
    onevision = run("OneVision", "tinyshop", protocol, cmd_args=common + [
        "--stage_epochs={'pretrain': 2, 'sft': 8, 'dpo': 1}", "--d_model=32", "--ffn_size=64"])
    pop = run("Pop", "tinyshop", protocol, cmd_args=common + ["--epochs=1"])
    assert onevision["test_result"]["recall@10"] > pop["test_result"]["recall@10"] + 0.1
    assert sorted(os.listdir(tmp_path / "tinyshop" / ".cache"))[0].startswith("vrq-")  # SIDs cached


def test_score_fusion_script_evaluates_each_weight_as_a_run_would(tiny_root, tmp_path):
    """benchmarks/score_fusion.py: each row is what run.py gives that checkpoint with that
    dense_score_weight (0: the beams alone) or with dense_only, on valid and test."""
    protocol, common = tinyshop(tiny_root, tmp_path)
    common += ["--d_model=32", "--ffn_size=64", "--history_item_embedding=True", "--stages=['sft']",
               "--stage_epochs={'sft': 2}"]
    trained = run("OneVision", "tinyshop", protocol, cmd_args=common + ["--dense_only=False"])
    checkpoint = trained["checkpoint"]
    spec = importlib.util.spec_from_file_location("score_fusion", os.path.join(BENCHMARKS, "score_fusion.py"))
    score_fusion = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(score_fusion)
    rows = score_fusion.main(["--checkpoint", checkpoint, "--dataset", "tinyshop", "--weights", "0,1",
                              "--dense_only", f"--config_files={protocol[0]}", *common])
    assert [r["setting"] for r in rows] == ["dense_score_weight 0 (beams alone)", "dense_score_weight 1",
                                            "dense head alone"]
    assert rows[1]["test"] == trained["test_result"]  # 1 is the default the run was evaluated with
    for row, override in ((rows[0], "--dense_only=False --dense_score_weight=0"), (rows[2], "--dense_only=True")):
        again = run("OneVision", "tinyshop", protocol, cmd_args=common + override.split(), checkpoint=checkpoint)
        assert (row["valid"], row["test"]) == (again["best_valid_result"], again["test_result"]), row["setting"]
    assert rows[0]["test"] != rows[2]["test"]  # the settings really differ on this checkpoint
    with pytest.raises(SystemExit, match="--weights: expected comma-separated numbers >= 0"):
        score_fusion.main(["--checkpoint", checkpoint, "--weights", "1,-2"])


def train_steps(model, batches, steps, lr=3e-3):
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        optimizer.zero_grad()
        loss = model.calculate_loss(batches[step % len(batches)])
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


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
    assert any(k.startswith("encoder") for k in changed) and any(k.startswith("decoder") for k in changed)


def test_dpo_learns_to_prefer_the_chosen_item(tiny_root, tmp_path):
    """Toy preferences: every training row's chosen item over its visually close rival."""
    _, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path, dropout=0.0, dpo_beta=0.5)
    batches = list(train)
    model.set_stage("dpo")  # reference = the untrained model: no preference yet
    order = dataset.field2token_id["behaviour"]["order"]

    def preferred_share(only_orders=False):
        with torch.no_grad():
            wins = [(model(b, b["item_id"]) > model(b, model.rejected_items(b)))[
                b["behaviour"] == order if only_orders else slice(None)].float() for b in batches]
        return torch.cat(wins).mean().item()

    before, before_orders = preferred_share(), preferred_share(only_orders=True)
    train_steps(model, batches, 100, lr=3e-3)
    assert preferred_share() > max(0.9, before + 0.2)
    assert preferred_share(only_orders=True) > max(0.9, before_orders + 0.2)


def test_resuming_from_a_stage_checkpoint_equals_an_uninterrupted_run(tiny_root, tmp_path):
    from recbole_onevision.registry import get_trainer

    def fit(stages, saved_dir, **extra):
        config, _, model, (train, valid, _) = prepare(
            tiny_root, tmp_path, stages=stages, stage_epochs={"pretrain": 1, "sft": 2}, checkpoint_dir=str(saved_dir),
            **extra)
        trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model.to(config["device"]))
        trainer.fit(train, valid, saved=True, show_progress=False)
        return trainer, model

    whole, whole_model = fit(["pretrain", "sft"], tmp_path / "a")
    first, _ = fit(["pretrain"], tmp_path / "b")
    _, resumed_model = fit(["sft"], tmp_path / "c", start_checkpoint=first.stage_files["pretrain"])
    assert set(whole.stage_files) == {"pretrain", "sft"}
    for (name, a), (_, b) in zip(whole_model.state_dict().items(), resumed_model.state_dict().items()):
        if a.is_cuda:  # CUDA kernels with atomic adds (scatter, index_add) sum in no fixed order
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
        else:
            assert torch.equal(a, b), name
    # a checkpoint is refused on other SIDs (its weights would decode the wrong items)
    state = dict(whole_model.state_dict())
    state["item_sid"] = state["item_sid"][[0, 2, 1, *range(3, len(state["item_sid"]))]]
    with pytest.raises(ValueError, match="trained on other semantic IDs"):
        resumed_model.load_state_dict(state)
    state.pop("item_sid")  # written before SIDs were saved: loads as before
    resumed_model.load_state_dict(state)


def test_every_stage_is_validated_and_checkpointed_whatever_its_length(tiny_root, tmp_path):
    """eval_step is capped by each stage's epochs, not the config's: a 2-epoch stage with
    eval_step 5 still picks its best epoch on validation and writes its checkpoint."""
    from recbole_onevision.registry import get_trainer

    config, _, model, (train, valid, _) = prepare(
        tiny_root, tmp_path, stages=["pretrain", "sft"], stage_epochs={"pretrain": 1, "sft": 2},
        epochs=30, eval_step=5, checkpoint_dir=str(tmp_path / "saved"))
    trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model.to(config["device"]))
    trainer.fit(train, valid, saved=True, show_progress=False)
    assert set(trainer.stage_files) == {"pretrain", "sft"}
    assert all(result[1] is not None for result in trainer.stage_results.values())


@pytest.mark.parametrize("extra, message", [
    ({"stages": ["pretrain"], "visual_tokens": 0}, "none of \\['pretrain'\\] can run here"),
    ({"stages": ["sft", "dpo"], "stage_epochs": {"sft": 1, "dpo": 0}}, "at least 1 epoch .*got \\{'dpo': 0\\}"),
])
def test_stages_that_cannot_train_are_refused(tiny_root, tmp_path, extra, message):
    from recbole_onevision.registry import get_trainer

    config, _, model, (train, valid, _) = prepare(tiny_root, tmp_path, checkpoint_dir=str(tmp_path), **extra)
    trainer = get_trainer(config["MODEL_TYPE"], "OneVision")(config, model)
    with pytest.raises(ValueError, match=message):
        trainer.fit(train, valid, saved=True, show_progress=False)


def test_dynamic_pruning_drops_unrelated_history_and_hopeless_beams(tiny_root, tmp_path):
    config, dataset, model, (train, _, test) = prepare(tiny_root, tmp_path, dropout=0.0)
    train_steps(model, list(train), 30)  # a model with confident beams
    model.eval()
    batch = next(iter(test))[0]
    items, scores = model.generate(batch, prune=False)
    plain = dict(model.decode_stats)
    # dropping absent tokens out of the encoder sequence is exact
    model.prune_keep_recent, model.prune_prefix_levels, model.prune_beam_margin = 10**6, 1, float("inf")
    same_items, same_scores = model.generate(batch, prune=True)
    assert torch.equal(same_items[:, :10], items[:, :10])
    assert torch.allclose(same_scores, scores, atol=1e-4)
    # history kept: the most recent items, and older ones sharing the photo's predicted level-1 code
    model.prune_keep_recent = 2
    kept = model.history_kept(batch)
    seq, length = batch["item_id_list"], batch["item_length"]
    prefix = model.query_prefix[batch["query_id"]][:, 0]
    for row in range(len(seq)):
        for pos in range(int(length[row])):
            recent = pos >= length[row] - 2
            related = model.item_tokens[seq[row, pos], 0] == prefix[row]
            assert bool(kept[row, pos]) == bool(recent or related or batch["query_id"][row] == 0)
    assert not kept[:, :].all()  # this batch has unrelated history to drop
    pruned_items, pruned_scores = model.generate(batch, prune=True)
    assert model.decode_stats["memory_tokens"] < plain["memory_tokens"]
    # beams far behind their row's best are dropped; what is left is real items, best first
    model.prune_beam_margin = 2.0
    pruned_items, pruned_scores = model.generate(batch, prune=True)
    assert pruned_items.shape == items.shape
    assert model.decode_stats["beams_expanded"] < plain["beams_expanded"]
    finite = torch.isfinite(pruned_scores)
    assert ((pruned_items >= 1) == finite).all() and (pruned_items < dataset.item_num).all()
    assert (pruned_scores[finite] >= (pruned_scores[:, :1] - 2.0).expand_as(pruned_scores)[finite]).all()
    assert finite[:, 0].all()
    with pytest.raises(ValueError, match="prune_beam_margin: expected a value >= 0"):
        prepare(tiny_root, tmp_path, prune_beam_margin=-1.0)


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


def test_scoring_several_items_per_row_equals_one_at_a_time(tiny_root, tmp_path):
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path)
    model.eval()
    batch = next(iter(test))[0]
    items = torch.stack([batch["item_id"], model.rejected_items(batch), torch.ones_like(batch["item_id"])], 1)
    together = model(batch, items)
    assert together.shape == items.shape
    for column in range(3):
        assert torch.allclose(together[:, column], model(batch, items[:, column]), atol=1e-5)


def test_visual_bias_follows_the_photos_nearest_catalogue_views(tiny_root, tmp_path):
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path)
    model.eval()
    batch = next(iter(test))[0]
    photos = model.catalogue.photos[batch["query_id"]]
    similarity = model.catalogue.nodes(photos)
    # each node's similarity is the best cosine between the photo and any view of an item under it
    cosine = photos @ model.catalogue.views.T
    for level in range(model.levels):
        nodes = model.trie.item_nodes(level)
        for node in torch.unique(nodes[1:])[:20].tolist():
            items = torch.nonzero(nodes == node).squeeze(1)
            views = torch.isin(model.view_item, items[items > 0])
            assert torch.allclose(similarity[level][:, node], cosine[:, views].max(1).values, atol=1e-6)
    # a catalogue view may not be its own neighbour
    view = torch.tensor([0])
    own = model.catalogue.nodes(model.catalogue.views[view], exclude_views=view)[-1][0, model.view_item[0]]
    siblings = (model.view_item == model.view_item[0]) & (torch.arange(len(model.view_item)) > 0)
    others = model.catalogue.views[0] @ model.catalogue.views[siblings].T
    assert torch.isclose(own, others.max())
    # with the bias dominating an untrained decoder, the best beam is the visual nearest neighbour
    with torch.no_grad():
        model.visual_bias_log_scale.fill_(float(np.log(1e4)))
    items, _ = model.generate(batch)
    has_photo = batch["query_id"] > 0
    assert torch.equal(items[has_photo, 0], similarity[-1][has_photo].argmax(1))
    # off: no bias parameters, and decoding still works
    _, _, plain, _ = prepare(tiny_root, tmp_path, visual_bias=False)
    assert not hasattr(plain, "visual_bias_log_scale") and plain.photo_similarity(batch) is None
    with pytest.raises(ValueError, match="visual_bias_scale: expected a value > 0"):
        prepare(tiny_root, tmp_path, visual_bias_scale=0.0)


def test_path_similarity_equals_the_full_search_along_the_sid(tiny_root, tmp_path, monkeypatch):
    """Teacher forcing reads the photo's similarity only along the target's SID (a level-0
    table + one subtree's views): it must equal the full search's nodes at the same children."""
    from recbole_onevision.model import catalogue_similarity
    config, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path)
    catalogue = model.catalogue
    monkeypatch.setattr(catalogue_similarity, "SEARCH_BLOCK", 7 * len(catalogue.views))  # several blocks
    generator = torch.Generator().manual_seed(0)

    def reference(level_nodes, items):
        out, parent = [], torch.zeros_like(items)
        for level in range(model.levels):
            children = model.trie.step(level, parent)
            out.append(level_nodes[level].gather(1, children.clamp_min(0)).masked_fill(children < 0, -1.0))
            parent = model.trie.item_nodes(level)[items]
        return out

    batch = next(iter(train))
    batch.interaction["query_id"][:5] = 0  # rows without a photo
    items = torch.randint(1, dataset.item_num, (len(batch),), generator=generator)
    expected = reference(model.photo_similarity(batch), items)
    got = model.path_similarity(batch, items)
    for level in range(model.levels):
        assert got[level].shape == (len(batch), model.sizes[level])
        assert torch.allclose(got[level], expected[level], atol=1e-6)
    assert (got[0][:5] >= -1).all() and (got[0][:5] <= 0).all()  # flat without a photo
    # catalogue views, each barred from matching itself
    views = torch.randint(len(catalogue.views), (40,), generator=generator)
    own = model.view_item[views]
    expected = reference(catalogue.nodes(catalogue.views[views], exclude_views=views), own)
    got = catalogue.along(views, own, of_views=True)
    for level in range(model.levels):
        assert torch.allclose(got[level], expected[level], atol=1e-6)
    # the level-0 tables cover every photo and view, filled once
    assert catalogue.photo_level0.shape == (len(catalogue.photos), catalogue.node_counts[0])
    table = catalogue.photo_level0
    model.path_similarity(batch, items)
    assert catalogue.photo_level0 is table
