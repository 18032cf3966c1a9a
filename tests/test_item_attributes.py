"""OneVision's item attributes (``item_attributes``): what the history and the output codes read."""
import logging
import re

import pytest
import torch

from onevision_support import prepare, train_steps


def test_node_vectors_are_the_means_of_the_items_below_and_follow_the_weights(tiny_root, tmp_path):
    _, dataset, model, (train, _, _) = prepare(tiny_root, tmp_path)
    attributes = model.inputs.attributes
    assert model.params.item_attributes and attributes.fields == ["category", "brand", "price_level"]
    every = attributes.items(torch.arange(dataset.item_num))
    assert torch.equal(every[0], torch.zeros_like(every[0]))  # padding
    # an item's vector: its brand's and price level's embeddings + the mean of its category path's
    brand, category = dataset.item_feat["brand"][5], dataset.item_feat["category"][5]
    level = dataset.item_feat["price_level"][5]
    path = category[category > 0]
    expected = (attributes.embedding[1].weight[brand] + attributes.embedding[2].weight[level]
                + attributes.embedding[0].weight[path].mean(0))
    assert torch.allclose(every[5], expected, atol=1e-6)
    model.eval()
    with torch.no_grad():
        for level in range(model.trie.levels):
            nodes = model.trie.item_nodes(level)
            table = attributes.tables()[level]
            for node in nodes[1:].unique()[:5]:
                assert torch.allclose(table[node], every[1:][nodes[1:] == node].mean(0), atol=1e-5)
        leaves = attributes.tables()[-1]  # the last level's nodes are the items
        assert torch.allclose(leaves[1:dataset.item_num], every[1:], atol=1e-6)
        before = attributes.tables()[0].clone()
    # kept for inference, but never stale: a training step changes the table it returns
    model.train()
    train_steps(model, [next(iter(train))], 1)
    model.eval()
    with torch.no_grad():
        after = attributes.tables()[0]
        fresh = attributes._tables()[0]
    assert not torch.allclose(after, before) and torch.allclose(after, fresh)
    assert not torch.allclose(attributes.items(torch.arange(dataset.item_num)), every)


def test_history_items_carry_their_attributes(tiny_root, tmp_path):
    _, _, model, (_, _, test) = prepare(tiny_root, tmp_path)
    model.eval()
    batch = next(iter(test))[0]
    with torch.no_grad():
        before, _ = model.inputs(batch, model.codes)
        model.inputs.attributes.embedding[1].weight.mul_(3.0)  # brands weigh more
        after, _ = model.inputs(batch, model.codes)
        photo_only, _ = model.inputs(batch, model.codes, context=False)
        model.inputs.attributes.embedding[1].weight.div_(3.0)
        photo_only_before, _ = model.inputs(batch, model.codes, context=False)
    assert not torch.allclose(before, after)  # the history tokens read the brands
    assert torch.allclose(photo_only, photo_only_before)  # without history, nothing does


def test_without_item_token_fields_the_attributes_are_off_and_logged(tiny_root, tmp_path, caplog):
    load = {"inter": ["user_id", "item_id", "query_id", "timestamp", "behaviour"], "item": ["item_id", "price"],
            "user": ["user_id", "age", "region"]}
    with caplog.at_level(logging.INFO):
        _, _, model, _ = prepare(tiny_root, tmp_path, load_col=load, state="INFO",
                                 vrq_attribute_fields=["price"], item_float_levels=0)
    assert not model.params.item_attributes and model.inputs.attributes is None
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert re.search("item attributes +off", logged)
    _, _, model, _ = prepare(tiny_root, tmp_path, item_attributes=False)
    assert model.inputs.attributes is None


def test_price_levels_are_read_as_an_attribute_and_leave_the_sids_alone(tiny_root, tmp_path):
    _, _, plain, _ = prepare(tiny_root, tmp_path, item_float_levels=0)
    assert plain.inputs.attributes.fields == ["category", "brand"]
    _, dataset, model, _ = prepare(tiny_root, tmp_path, item_float_levels=4)
    attributes = model.inputs.attributes
    assert attributes.fields == ["category", "brand", "price_level"]
    assert attributes.embedding[2].num_embeddings == 5
    assert torch.equal(model.codes.item_sid, plain.codes.item_sid)  # VRQ buckets price itself
    assert "float fields in 4 levels" in model.params.table()
    with pytest.raises(ValueError, match="trained with item_float_levels: 4 \\(this run: 0\\)"):
        plain.load_state_dict(model.state_dict())
    # two items of one leaf and brand that differ in price level differ in their attribute vectors
    level = dataset.item_feat["price_level"]
    every = attributes.items(torch.arange(dataset.item_num))
    assert len(set(level[1:].tolist())) == 4
    assert not torch.allclose(every[level == 1].mean(0), every[level == 4].mean(0))
