"""OneVision's inference on a tiny shop: the trie, constrained beam search and its cached decoding,
full_sort_predict, pruning and the visual bias. Training and its stages: test_onevision_training.py;
the dense head and ranking modes: test_onevision_dense.py; settings and checkpoints:
test_onevision_settings.py."""
import dataclasses

import numpy as np
import pytest
import torch
from recbole.data.interaction import Interaction

from onevision_support import full_decoder_log_probs, prepare, train_steps
from recbole_onevision.model import trie as trie_module
from recbole_onevision.model import visual_similarity
from recbole_onevision.model.decoder_cache import DecoderCache
from recbole_onevision.model.onevision import objectives
from recbole_onevision.model.trie import SIDTrie


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


@pytest.mark.parametrize("node_outputs", [False, True])
def test_beam_search_yields_real_items_and_full_sort_agrees(tiny_root, tmp_path, node_outputs):
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path, node_outputs=node_outputs)  # the beams alone
    assert model.inputs.history_item_embedding is None and model.params.ranking == "beams"  # the defaults
    if node_outputs:  # as if trained: they start at zero, which would check nothing
        torch.manual_seed(0)
        for table in model.sid_decoder.nodes.vectors:
            table.data.normal_(0, 1.0)
    model.eval()
    batch = next(iter(test))[0]
    items, scores, _ = model.generate(batch)
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
    memory, mask, photo = model.encode(batch)
    trained, _ = model.sid_decoder.log_likelihood(memory[rows], mask[rows], best, model.codes, prior,
                                                  model.visual_bias, model.inputs.attributes, photo[rows])
    assert torch.allclose(trained, unmasked, atol=1e-4)
    # an anonymous query with no photo still decodes real items
    batch.interaction["query_id"] = torch.zeros_like(batch["query_id"])
    anonymous, _, _ = model.generate(batch)
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


def test_dynamic_pruning_drops_unrelated_history_and_hopeless_beams(tiny_root, tmp_path):
    config, dataset, model, (train, _, test) = prepare(tiny_root, tmp_path, dropout=0.0)
    train_steps(model, list(train), 30)  # a model with confident beams
    model.eval()
    batch = next(iter(test))[0]
    items, scores, plain = model.generate(batch, prune=False)

    def pruning(**changes):
        model.params = dataclasses.replace(model.params, prune=dataclasses.replace(model.params.prune, **changes))

    # dropping absent tokens out of the encoder sequence is exact
    pruning(keep_recent=10**6, prefix_levels=1, beam_margin=float("inf"))
    same_items, same_scores, _ = model.generate(batch, prune=True)
    assert torch.equal(same_items[:, :10], items[:, :10])
    assert torch.allclose(same_scores, scores, atol=1e-4)
    # history kept: the most recent items, and older ones sharing the photo's predicted level-1 code
    pruning(keep_recent=2)
    kept = model.inputs.history_kept(batch, model.codes, model.params.prune)
    seq, length = batch["item_id_list"], batch["item_length"]
    prefix = model.inputs.query_prefix[batch["query_id"]][:, 0]
    for row in range(len(seq)):
        for pos in range(int(length[row])):
            recent = pos >= length[row] - 2
            related = model.codes.item_tokens[seq[row, pos], 0] == prefix[row]
            assert bool(kept[row, pos]) == bool(recent or related or batch["query_id"][row] == 0)
    assert not kept[:, :].all()  # this batch has unrelated history to drop
    _, _, stats = model.generate(batch, prune=True)
    assert stats.memory_tokens < plain.memory_tokens
    # beams far behind their row's best are dropped; what is left is real items, best first
    pruning(beam_margin=2.0)
    pruned_items, pruned_scores, stats = model.generate(batch, prune=True)
    assert pruned_items.shape == items.shape
    assert stats.beams_expanded < plain.beams_expanded
    finite = torch.isfinite(pruned_scores)
    assert ((pruned_items >= 1) == finite).all() and (pruned_items < dataset.item_num).all()
    keep = model.params.prune.min_beams  # the largest topk: never dropped, so the list stays full
    assert keep == 10 and finite[:, :keep].all()
    beyond = finite[:, keep:]
    assert (pruned_scores[:, keep:][beyond] >= (pruned_scores[:, :1] - 2.0).expand_as(pruned_scores)[:, keep:][beyond]).all()
    assert not beyond.all()  # some beams past the first 10 were dropped
    with pytest.raises(ValueError, match="prune beam_margin: expected a value >= 0"):
        prepare(tiny_root, tmp_path, prune={"beam_margin": -1.0})


def test_scoring_several_items_per_row_equals_one_at_a_time(tiny_root, tmp_path):
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path)
    model.eval()
    batch = next(iter(test))[0]
    items = torch.stack([batch["item_id"], objectives.rejected_items(model, batch), torch.ones_like(batch["item_id"])], 1)
    together = model(batch, items)
    assert together.shape == items.shape
    for column in range(3):
        assert torch.allclose(together[:, column], model(batch, items[:, column]), atol=1e-5)


def test_visual_bias_follows_the_photos_nearest_catalogue_views(tiny_root, tmp_path):
    config, dataset, model, (_, _, test) = prepare(tiny_root, tmp_path)
    model.eval()
    batch = next(iter(test))[0]
    photos = model.visual_bias.catalogue.photos[batch["query_id"]]
    similarity = model.visual_bias.catalogue.nodes(photos)
    # each node's similarity is the best cosine between the photo and any view of an item under it
    cosine = photos @ model.visual_bias.catalogue.views.T
    for level in range(model.codes.levels):
        nodes = model.trie.item_nodes(level)
        for node in torch.unique(nodes[1:])[:20].tolist():
            items = torch.nonzero(nodes == node).squeeze(1)
            views = torch.isin(model.inputs.view_item, items[items > 0])
            assert torch.allclose(similarity[level][:, node], cosine[:, views].max(1).values, atol=1e-6)
    # a catalogue view may not be its own neighbour
    view = torch.tensor([0])
    own = model.visual_bias.catalogue.nodes(model.visual_bias.catalogue.views[view], exclude_views=view)[-1][0, model.inputs.view_item[0]]
    siblings = (model.inputs.view_item == model.inputs.view_item[0]) & (torch.arange(len(model.inputs.view_item)) > 0)
    others = model.visual_bias.catalogue.views[0] @ model.visual_bias.catalogue.views[siblings].T
    assert torch.isclose(own, others.max())
    # with the bias dominating an untrained decoder, the best beam is the visual nearest neighbour
    with torch.no_grad():
        model.visual_bias.log_scale.fill_(float(np.log(1e4)))
    items, _, _ = model.generate(batch)
    has_photo = batch["query_id"] > 0
    assert torch.equal(items[has_photo, 0], similarity[-1][has_photo].argmax(1))
    # off: no bias parameters, and decoding still works
    _, _, plain, _ = prepare(tiny_root, tmp_path, visual_bias=0.0)
    assert plain.visual_bias is None and plain.photo_similarity(batch) is None
    assert not any("log_scale" in name for name, _ in plain.named_parameters())
    with pytest.raises(ValueError, match="visual_bias: expected a value >= 0, got -1.0"):
        prepare(tiny_root, tmp_path, visual_bias=-1.0)


@pytest.mark.parametrize("table", [True, False], ids=["level-0 table", "searched per batch"])
def test_path_similarity_equals_the_full_search_along_the_sid(table, tiny_root, tmp_path, monkeypatch):
    """Teacher forcing reads the photo's similarity only along the target's SID (a level-0
    table, or per batch where the table would be too large, + one subtree's views): it must
    equal the full search's nodes at the same children."""
    config, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path)
    catalogue = model.visual_bias.catalogue
    monkeypatch.setattr(visual_similarity, "SEARCH_BLOCK", 7 * len(catalogue.views))  # several blocks
    if not table:
        monkeypatch.setattr(visual_similarity, "LEVEL0_TABLE_LIMIT", 0)
    generator = torch.Generator().manual_seed(0)

    def reference(level_nodes, items):
        out, parent = [], torch.zeros_like(items)
        for level in range(model.codes.levels):
            children = model.trie.step(level, parent)
            out.append(level_nodes[level].gather(1, children.clamp_min(0)).masked_fill(children < 0, -1.0))
            parent = model.trie.item_nodes(level)[items]
        return out

    batch = next(iter(train))
    batch.interaction["query_id"][:5] = 0  # rows without a photo
    items = torch.randint(1, dataset.item_num, (len(batch),), generator=generator)
    expected = reference(model.photo_similarity(batch), items)
    got = model.path_similarity(batch, items)
    for level in range(model.codes.levels):
        assert got[level].shape == (len(batch), model.codes.sizes[level])
        assert torch.allclose(got[level], expected[level], atol=1e-6)
    assert (got[0][:5] >= -1).all() and (got[0][:5] <= 0).all()  # flat without a photo
    # catalogue views, each barred from matching itself
    views = torch.randint(len(catalogue.views), (40,), generator=generator)
    own = model.inputs.view_item[views]
    expected = reference(catalogue.nodes(catalogue.views[views], exclude_views=views), own)
    got = catalogue.along(views, own, of_views=True)
    for level in range(model.codes.levels):
        assert torch.allclose(got[level], expected[level], atol=1e-6)
    if not table:
        assert catalogue.photo_level0 is None and catalogue.view_level0 is None
        return
    # the level-0 tables cover every photo and view, filled once
    assert catalogue.photo_level0.shape == (len(catalogue.photos), catalogue.node_counts[0])
    table = catalogue.photo_level0
    model.path_similarity(batch, items)
    assert catalogue.photo_level0 is table
