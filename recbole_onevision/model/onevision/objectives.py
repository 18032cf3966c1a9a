"""The training stages' objectives (the stage is picked by :class:`OneVisionTrainer`).

* ``pretrain``: the visual prior alone (:func:`visual_prior_loss`);
* ``sft``: cross-entropy on every SID level of the item the user engaged with (share
  ``loss_weights.pictured`` of it on the photographed product when that was another), orders
  weighted ``loss_weights.order`` x clicks, plus the dense head's cross-entropy and the visual prior;
* ``dpo``: preference optimisation against the model as SFT left it (:func:`dpo_loss`).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def row_weights(model, interaction, like: torch.Tensor) -> torch.Tensor:
    """Each row's weight: ``order`` for ordered items, 1 for clicks (1 without behaviours)."""
    if not model.behaviour_field:
        return torch.ones_like(like)
    return torch.where(interaction[model.behaviour_field] == model.order_token, model.params.order_weight, 1.0)


def weighted_mean(values: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted mean; 0 for a batch whose rows all weigh 0 (only orders under order weight 0)."""
    return (values * weight).sum() / weight.sum().clamp_min(1e-12)


def sft_loss(model, interaction) -> torch.Tensor:
    params = model.params
    target = interaction[model.POS_ITEM_ID]
    memory, mask, photo = model.encode(interaction)
    logp, first = model.sid_decoder.log_likelihood(memory, mask, target, model.codes,
                                                   model.path_similarity(interaction, target), model.visual_bias,
                                                   model.inputs.attributes, photo)
    nll = -params.sid_weight * logp.sum(1)
    if params.pictured_weight and params.photos:
        nll = share_with_pictured(model, interaction, (memory, mask, photo), target, nll)
    if params.dense_weight:
        nll = nll + params.dense_weight * model.dense.nll(model.dense.state(memory, mask, first),
                                                          model.item_vectors(), target)
    weight = row_weights(model, interaction, nll)
    loss = weighted_mean(nll, weight)
    if params.visual_prior_weight and params.photos:
        loss = loss + params.visual_prior_weight * visual_prior_loss(model, interaction)
    return loss


def pictured_products(model, interaction) -> torch.Tensor:
    """The product each row's query photo shows (0: unknown or no photo)."""
    return model.inputs.query_product[interaction[model.query_field]]


def share_with_pictured(model, interaction, encoded, target: torch.Tensor, nll: torch.Tensor) -> torch.Tensor:
    """``nll`` with share ``loss_weights.pictured`` of each row's target moved to the photographed
    product where the user engaged with another (a look-alike): a search that ended on a
    look-alike still says the pictured product was a likely answer, instead of pushing it down."""
    pictured = pictured_products(model, interaction)
    rows = torch.nonzero((pictured > 0) & (pictured != target)).squeeze(1)
    if not len(rows):
        return nll
    memory, mask, photo = (x.index_select(0, rows) for x in encoded)
    items = pictured.index_select(0, rows)
    logp, _ = model.sid_decoder.log_likelihood(memory, mask, items, model.codes,
                                               model.path_similarity(interaction[rows], items), model.visual_bias,
                                               model.inputs.attributes, photo)
    other = -model.params.sid_weight * logp.sum(1)
    return nll.index_add(0, rows, model.params.pictured_weight * (other - nll.index_select(0, rows)))


def rejected_items(model, interaction) -> torch.Tensor:
    """A visually close item the user did not choose: the photographed product when they engaged
    with another one, else the item whose SID shares the longest prefix with theirs."""
    target = interaction[model.POS_ITEM_ID]
    rejected = model.code_neighbour[target]
    if model.params.photos:
        pictured = pictured_products(model, interaction)
        rejected = torch.where((pictured > 0) & (pictured != target), pictured, rejected)
    return rejected


def dpo_loss(model, interaction, reference: dict[str, torch.Tensor]) -> torch.Tensor:
    """DPO (Rafailov et al. 2023) against ``reference`` (the weights frozen when the stage
    began): chosen = the item engaged with (orders weighted), rejected = :func:`rejected_items`."""
    params = model.params
    items = torch.stack([interaction[model.POS_ITEM_ID], rejected_items(model, interaction)], 1)
    prior = model.path_similarity(interaction, items)  # parameter-free: shared with the reference
    policy, first = model.score(interaction, items, prior)
    policy = policy.T  # (2, batch): chosen, rejected
    training = model.training
    model.train(False)  # the reference policy without dropout
    with torch.no_grad():
        reference = torch.func.functional_call(model, reference, (interaction, items, prior)).T
    model.train(training)
    margin = (policy[0] - reference[0]) - (policy[1] - reference[1])
    # + the chosen item's likelihood (as in RPO, Pang et al. 2024): pure DPO can lower both
    # likelihoods while widening their gap, and on MVShop it then lost ranking quality
    loss = -F.logsigmoid(params.dpo_beta * margin) - params.dpo_sft_weight * policy[0]
    if params.dense_weight:  # the chosen item's likelihood under the dense head too, as in SFT
        loss = loss + params.dpo_sft_weight * params.dense_weight * model.dense.nll(
            first, model.item_vectors(), items[:, 0])
    weight = row_weights(model, interaction, loss)
    return weighted_mean(loss, weight)


def visual_prior_loss(model, interaction) -> torch.Tensor:
    """Photo alone -> SID of the pictured product, and catalogue view -> its item's SID (as many
    random views as the batch has rows), so every item's SID is learnt from its appearance,
    clicked in training or not."""
    inputs, codes, terms = model.inputs, model.codes, []
    product = pictured_products(model, interaction)
    known = torch.nonzero(product > 0).squeeze(1)
    if len(known):
        rows = interaction[known]
        memory, mask, photo = model.encode(rows, context=False)
        prior = model.path_similarity(rows, product[known])
        logp, _ = model.sid_decoder.log_likelihood(memory, mask, product[known], codes, prior, model.visual_bias,
                                                   inputs.attributes, photo)
        terms.append(-logp.sum(1).mean())
    if inputs.view_feature is not None:
        views = torch.randint(len(inputs.view_item), (len(product),), device=product.device)
        photo = inputs.view_photo(views)
        memory, mask = inputs.views(views, codes, photo)
        items = inputs.view_item[views]
        prior = model.visual_bias.along_views(views, items) if model.visual_bias is not None else None
        logp, _ = model.sid_decoder.log_likelihood(memory, mask, items, codes, prior, model.visual_bias,
                                                   inputs.attributes, photo)
        terms.append(-logp.sum(1).mean())
    return sum(terms) / max(len(terms), 1)


def code_neighbours(item_sid: torch.Tensor) -> torch.Tensor:
    """For each item, another item whose SID shares the longest prefix with its own (its
    neighbour in lexicographic SID order); row 0 (padding) maps to 0."""
    sid = item_sid[1:].numpy()
    order = np.lexsort(sid.T[::-1])
    ranked = sid[order]
    shared = lambda a, b: np.cumprod(ranked[a] == ranked[b], axis=1).sum(1)  # noqa: E731
    n = len(order)
    before = np.r_[-1, shared(np.arange(1, n), np.arange(n - 1))]  # with the previous item
    after = np.r_[before[1:], -1]  # with the next one
    pick = np.where(after > before, np.minimum(np.arange(n) + 1, n - 1), np.maximum(np.arange(n) - 1, 0))
    neighbour = np.zeros(len(item_sid), dtype=np.int64)
    neighbour[order + 1] = order[pick] + 1
    return torch.from_numpy(neighbour)
