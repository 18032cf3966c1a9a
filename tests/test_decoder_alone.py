"""The options of the decoder-alone preset (properties/decoder-alone.yaml): ``node_outputs`` (an
output vector per trie node, read with the photo), ``photo_noise`` and the SFT target's share on
the photographed product (``loss_weights.pictured``)."""
import pytest
import torch
import torch.nn.functional as F

from onevision_support import prepare, train_steps


def test_node_outputs_start_as_the_decoder_without_them_where_there_are_no_photos(tiny_root, tmp_path):
    _, _, plain, (train, _, _) = prepare(tiny_root, tmp_path, visual_tokens=0)
    _, _, nodes, _ = prepare(tiny_root, tmp_path, node_outputs=True, visual_tokens=0)
    extra = set(nodes.state_dict()) - set(plain.state_dict())
    assert extra and all(k.startswith("sid_decoder.nodes.") for k in extra)
    state = {k: v for k, v in plain.state_dict().items() if k != "_extra_state"}
    nodes.load_state_dict({**nodes.state_dict(), **state})
    plain.eval(), nodes.eval()
    batch = next(iter(train))
    items = batch["item_id"]
    assert torch.allclose(plain(batch, items), nodes(batch, items), atol=1e-5)


def _pictured_ranks(model, batches) -> torch.Tensor:
    """Rank (0 = first) of each photo's pictured product among all items, by the decoder alone."""
    model.eval()
    ranks = []
    with torch.no_grad():
        for batch in batches:
            product = model.inputs.query_product[batch["query_id"]]
            rows = batch[product > 0]
            items = torch.arange(1, model.n_items).expand(len(rows), -1)
            scores = model(rows, items)
            target = scores.gather(1, product[product > 0].unsqueeze(1) - 1)
            ranks.append((scores > target).sum(1))
    return torch.cat(ranks)


def test_node_outputs_start_from_the_items_content(tiny_root, tmp_path):
    """With catalogue views, node outputs start from each item's mean view feature: untrained, the
    decoder alone already finds the photographed product (nearest centroid); started at zero it
    would rank at random."""
    _, _, nodes, (train, _, _) = prepare(tiny_root, tmp_path, node_outputs=True, visual_bias=0)
    _, _, plain, _ = prepare(tiny_root, tmp_path, visual_bias=0)
    batches = [b for _, b in zip(range(2), train)]
    found, chance = _pictured_ranks(nodes, batches), _pictured_ranks(plain, batches)
    assert (found < 5).float().mean() > 0.5 > (chance < 5).float().mean() + 0.3, (found, chance)
    basis = nodes.sid_decoder.nodes.photo.weight  # orthonormal rows: P projects, it does not distort
    assert torch.allclose(basis @ basis.T, torch.eye(len(basis)), atol=1e-4)


def _photo_fit(model, batches, steps) -> float:
    """Mean log-likelihood of the pictured product's SID given the photo alone, on training
    photos, after ``steps`` steps of the photo-only task (the pretrain stage)."""
    model.set_stage("pretrain")
    train_steps(model, batches, steps)
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            product = model.inputs.query_product[batch["query_id"]]
            known = product > 0
            memory, mask, photo = model.encode(batch[known], context=False)
            logp, _ = model.sid_decoder.log_likelihood(memory, mask, product[known], model.codes, None, None,
                                                       model.inputs.attributes, photo)
            total, count = total + float(logp.sum()), count + int(known.sum())
    return total / count


def test_node_outputs_fit_what_shared_output_rows_cannot(tiny_root, tmp_path):
    """Below the first level a code means another node under each prefix; shared output rows
    must compromise among them, a vector per node need not: the same training fits the
    photographed products better with node outputs (no visual bias: the decoder alone)."""
    fits = {}
    for on in (False, True):
        _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, node_outputs=on, visual_bias=0, dropout=0.0,
                                             encoder_dropout=0.0)
        batches = [b for _, b in zip(range(2), train)]
        fits[on] = _photo_fit(model, batches, 60)
    assert fits[True] > fits[False] + 0.2, fits


def test_photo_noise_perturbs_training_photos_only(tiny_root, tmp_path):
    _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, photo_noise=0.05)
    batch = next(iter(train))
    batch.interaction["query_id"][::2] = 0  # every other row without a photo
    query = batch["query_id"]
    clean = model.inputs.query_feature[query]
    model.train()
    first, second = model.inputs.photo(batch), model.inputs.photo(batch)
    present = query > 0
    assert not torch.allclose(first[present], second[present])  # a new draw each time
    assert (first[~present] == 0).all()  # a row without a photo stays without one
    width = model.inputs.tokenizer.visual_width
    assert torch.allclose(first[present, :width].norm(dim=1), torch.ones(int(present.sum())), atol=1e-5)
    cosine = F.cosine_similarity(first[present, :width], clean[present, :width])
    assert (cosine > 0.5).all() and (cosine < 0.9999).all()  # near the photo, not the photo
    model.eval()
    assert torch.equal(model.inputs.photo(batch), clean)  # inference reads the photo as it is
    _, _, quiet, _ = prepare(tiny_root, tmp_path)  # the default: no noise
    quiet.train()
    assert torch.equal(quiet.inputs.photo(batch), quiet.inputs.query_feature[query])


@pytest.mark.parametrize("extra, message", [
    ({"photo_noise": -0.1}, "config photo_noise: expected a value >= 0, got -0.1"),
    ({"node_outputs": "yes"}, "config node_outputs: expected True/False"),
])
def test_bad_settings_are_refused(tiny_root, tmp_path, extra, message):
    with pytest.raises(ValueError, match=message):
        prepare(tiny_root, tmp_path, **extra)


def test_a_checkpoint_with_node_outputs_needs_them(tiny_root, tmp_path):
    _, _, nodes, _ = prepare(tiny_root, tmp_path, node_outputs=True)
    assert nodes.state_dict()["_extra_state"]["settings"]["node_outputs"] is True
    _, _, plain, _ = prepare(tiny_root, tmp_path)
    assert "node_outputs" not in plain.state_dict()["_extra_state"]["settings"]  # older checkpoints still load
    with pytest.raises(ValueError, match="node_outputs"):
        plain.load_state_dict(nodes.state_dict())


def _pictured_log_likelihood(model, batches) -> float:
    """Mean log-likelihood, with the user's context, of the photographed product in the
    searches that ended on another item."""
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in batches:
            pictured = model.inputs.query_product[batch["query_id"]]
            rows = (pictured > 0) & (pictured != batch["item_id"])
            total += float(model(batch[rows], pictured[rows]).sum())
            count += int(rows.sum())
    return total / count


def test_a_share_of_the_target_on_the_pictured_product_keeps_it_likely(tiny_root, tmp_path):
    likelihood = {}
    for share in (0.0, 0.5):
        _, _, model, (train, _, _) = prepare(tiny_root, tmp_path, loss_weights={"pictured": share},
                                             stages=["sft"], visual_bias=0)
        batches = [b for _, b in zip(range(2), train)]
        train_steps(model, batches, 40)
        likelihood[share] = _pictured_log_likelihood(model, batches)
    assert likelihood[0.5] > likelihood[0.0] + 0.2, likelihood
    with pytest.raises(ValueError, match=r"config loss_weights pictured: expected a value in \[0, 1\], got 1.5"):
        prepare(tiny_root, tmp_path, loss_weights={"pictured": 1.5})
