"""OneVision: one generative model in place of the recall -> pre-rank -> rank cascade.

An encoder reads the query photo, the user's profile and the SIDs of their past items
(:mod:`.inputs`); a decoder emits the SID of the item to show, code by code (:mod:`.decoder`),
with beam search constrained to SIDs that exist (:mod:`.beam_search`). ``full_sort_predict``
turns the beams into a RecBole score row (beam log-probability on the retrieved items, -inf
elsewhere), so RecBole's evaluator and metrics apply unchanged; ``full_sort_topk`` hands the
beams to the evaluator as they are (:mod:`recbole_onevision.topk`). Optional parts: the photo's
similarity to the catalogue in the logits (:mod:`.visual_bias`) and a dense head that ranks
alone or beside the beams (:mod:`.dense_head`, ``ranking``). Every setting is resolved once
(:mod:`.params`) and logged at the start of a run.
"""
from __future__ import annotations

from logging import getLogger

import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import InputType
from torch import nn

from recbole_onevision.model.onevision import checkpoint, objectives
from recbole_onevision.model.onevision.beam_search import beam_search, score_row
from recbole_onevision.model.onevision.codes import SIDCodes
from recbole_onevision.model.onevision.decoder import SIDDecoder
from recbole_onevision.model.onevision.dense_head import DenseHead
from recbole_onevision.model.onevision.inputs import EncoderInputs
from recbole_onevision.model.onevision.item_attributes import ItemAttributes
from recbole_onevision.model.onevision.node_outputs import NodeOutputs
from recbole_onevision.model.onevision.params import OneVisionParams
from recbole_onevision.model.onevision.visual_bias import VisualBias
from recbole_onevision.model.trie import SIDTrie
from recbole_onevision.topk import RankedLists, top_of
from recbole_onevision.trainer import STAGES


class OneVision(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sid = getattr(dataset, "item_sid", None)
        if sid is None:
            raise ValueError("OneVision needs semantic IDs: set `tokenizer: VRQ` and `dataset_class: "
                             "MultiViewSequentialDataset` (properties/model/OneVision.yaml does)")
        self.params = params = OneVisionParams.from_config(config, dataset)
        getLogger().info(params.table())
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        behaviour = config["BEHAVIOUR_FIELD"] or "behaviour"
        self.behaviour_field = behaviour if behaviour in dataset.field2type else None
        self.order_token = (dataset.field2token_id[self.behaviour_field].get("order", -1)
                            if self.behaviour_field else -1)
        # modules are built in this order so that one seed gives the same initial weights as before
        self.codes = SIDCodes(sid, dataset.sid_tokenizer.codebook_sizes, params.d_model)
        fields = {"item_seq": self.ITEM_SEQ, "item_seq_len": self.ITEM_SEQ_LEN, "query": self.query_field,
                  "behaviour": self.behaviour_field}
        trie = SIDTrie(sid, self.codes.sizes)
        attributes = ItemAttributes(dataset, trie, params.d_model) if params.item_attributes else None
        self.inputs = EncoderInputs(params, dataset, self.codes, fields, self.max_seq_length, attributes)
        self.trie = trie
        self.visual_bias = (VisualBias(dataset, self.trie, sid.clamp_min(0), params.visual_bias, self.codes.levels)
                            if params.visual_bias else None)
        nodes = None
        if params.node_outputs:
            nodes = NodeOutputs(trie, params.d_model, self.inputs.query_feature.shape[1] if params.photos else 0)
        self.sid_decoder = SIDDecoder(params, self.codes.n_tokens, nodes)
        self.dense = DenseHead(params.dense_readout, params.dense_temperature)
        self.register_buffer("code_neighbour", objectives.code_neighbours(sid), persistent=False)
        self.stage = "sft"
        self.stages_done: tuple[str, ...] = ()  # stages finished (a checkpoint records them)
        self.stage_set: str | None = None  # the stage a trainer set, None before any
        self._reference: dict[str, torch.Tensor] | None = None  # DPO's frozen policy
        self.apply(self._init_weights)
        centroids = self.inputs.item_centroids(dataset, self.codes) if nodes is not None and params.photos else None
        if centroids is not None:  # after the weight initialisation, which would overwrite P
            nodes.start_from_content(centroids)

    @classmethod
    def check_config(cls, config) -> None:
        """Refuse bad settings before any data is read or the tokenizer is fitted."""
        OneVisionParams.from_config(config)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def forward(self, interaction, items: torch.Tensor, prior: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Log-probability of ``items``' SIDs given ``interaction`` (summed over levels, teacher
        forcing): ``items`` (rows,) gives (rows,); (rows, n) scores n items per row with one
        encoder pass. ``prior``: :meth:`path_similarity` to ``items``, when the caller has it."""
        return self.score(interaction, items, prior)[0]

    def score(self, interaction, items: torch.Tensor, prior=None) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`forward`'s log-probabilities, and the rows' dense-head state (rows, d_model)."""
        memory, mask, photo = self.encode(interaction)
        n = items.shape[1] if items.dim() == 2 else 0
        if n:
            memory, mask = memory.repeat(n, 1, 1), mask.repeat(n, 1)
            photo = None if photo is None else photo.repeat(n, 1)
        if prior is None:
            prior = self.path_similarity(interaction, items)
        likelihood, first = self.sid_decoder.log_likelihood(memory, mask, _flat(items), self.codes, prior,
                                                            self.visual_bias, self.inputs.attributes, photo)
        likelihood = likelihood.sum(1)
        out = likelihood.view(n, -1).T if n else likelihood
        rows = len(out)  # _flat order: the rows' first items (and memory copies) lead
        return out, self.dense.state(memory[:rows], mask[:rows], first[:rows])

    def encode(self, interaction, context: bool = True, prune=None):
        """Encoder states, key-padding mask and the rows' photo features (None without photos),
        the same (noisy, in training) copy the encoder read: what the decoder's output reads."""
        photo = self.inputs.photo(interaction)
        return (*self.inputs(interaction, self.codes, context, prune, photo), photo)

    def calculate_loss(self, interaction):
        if self.stage == "pretrain":
            return objectives.visual_prior_loss(self, interaction)
        if self.stage == "dpo":
            return objectives.dpo_loss(self, interaction, self._reference)
        return objectives.sft_loss(self, interaction)

    def predict(self, interaction):
        """Sampled evaluation: an item's score as full ranking gives it (dense log-probability with
        ``ranking: dense``, else the log-probability of its SID)."""
        items = interaction[self.ITEM_ID]
        if self.params.ranking == "dense":
            return self.dense_log_probs(interaction).gather(1, items.unsqueeze(1)).squeeze(1)
        return self(interaction, items)

    def full_sort_predict(self, interaction):
        if self.params.ranking == "dense":  # no beam search
            return self.dense_log_probs(interaction)
        items, scores, _ = self.generate(interaction)
        return score_row(items, scores, self.n_items)

    def full_sort_topk(self, interaction, k: int) -> RankedLists:
        """Each row's ranked list without a dense score row: the beams themselves (the dense
        head's best ``k`` with ``ranking: dense``)."""
        if self.params.ranking == "dense":
            return top_of(self.dense_log_probs(interaction), k)
        items, scores, _ = self.generate(interaction)
        return RankedLists(scores, items)

    # ----- what the RecBole contract builds on -------------------------------------------------
    @torch.no_grad()
    def generate(self, interaction, beam_size: int | None = None, prune: bool | None = None):
        """Constrained beam search (:func:`beam_search`): (items, log-probabilities, statistics),
        best first; ``beam_size`` and ``prune`` default to the config's."""
        prune = self.params.prune_enabled if prune is None else prune
        fuse = 1.0 if self.params.ranking == "fused" else 0.0
        return beam_search(self, interaction, beam_size or self.params.beam_size, prune, fuse)

    def dense_log_probs(self, interaction) -> torch.Tensor:
        """(rows, n_items) every item's dense log-probability (what ``ranking: dense`` ranks by)."""
        memory, mask = self.inputs(interaction, self.codes,
                                   prune=self.params.prune if self.params.prune_enabled else None)
        first = None
        if self.dense.readout != "history":
            bos = torch.full((len(memory), 1), self.codes.bos_token, device=memory.device)
            first = self.sid_decoder(memory, mask, bos, self.codes)[:, 0]
        return self.dense.log_probs(self.dense.state(memory, mask, first), self.item_vectors())

    def item_vectors(self) -> torch.Tensor:
        return self.inputs.history_item_embedding.weight

    def photo_similarity(self, interaction) -> list[torch.Tensor] | None:
        """Per level, the query photos' similarity to every trie node (None without the visual bias)."""
        return None if self.visual_bias is None else self.visual_bias.photos(interaction[self.query_field])

    def path_similarity(self, interaction, items: torch.Tensor) -> list[torch.Tensor] | None:
        """Per level, the query photos' similarity along ``items``' SIDs (rows in :func:`_flat`
        order; None without the visual bias)."""
        if self.visual_bias is None:
            return None
        n = items.shape[1] if items.dim() == 2 else 1
        return self.visual_bias.along(interaction[self.query_field].repeat(n), _flat(items))

    def use_query_photos(self, embeddings: torch.Tensor) -> None:
        """The photo embeddings query ids index from now on (row 0: no photo): the dataset's at
        construction, a search's own photos in :mod:`recbole_onevision.search`."""
        if not self.params.photos:
            raise ValueError("this OneVision was trained without query photos")
        self.inputs.use_query_photos(embeddings, self.codes)
        if self.visual_bias is not None:
            self.visual_bias.use_query_photos(embeddings)

    def supports_stage(self, stage: str) -> bool:
        return stage != "pretrain" or self.params.photos

    def set_stage(self, stage: str) -> None:
        """Switch the training objective. Entering ``dpo`` freezes the current weights as the
        reference policy (kept outside the state dict)."""
        if stage not in STAGES:
            raise ValueError(f"config stages: unknown stage {stage!r}; expected some of {', '.join(STAGES)}")
        if not self.supports_stage(stage):
            raise ValueError(f"stage {stage!r} needs query photos; this dataset has none")
        if stage == "dpo" and self.params.dpo_beta is None:
            raise ValueError("stage 'dpo' is not in config stages, so it has no settings (beta, sft_weight)")
        self.stage = self.stage_set = stage
        self._reference = ({k: v.detach().clone() for k, v in self.named_parameters()}
                           if stage == "dpo" else None)

    def get_extra_state(self) -> dict:
        running = None if self.stage_set in self.stages_done else self.stage_set
        return checkpoint.extra_state(self.params, self.stages_done, running)

    def set_extra_state(self, state) -> None:
        pass  # checked before loading (load_state_dict)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As torch's, after :func:`checkpoint.check`: its format, training settings and SIDs."""
        checkpoint.check(state_dict, self.params, self.codes.item_sid)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def _flat(items: torch.Tensor) -> torch.Tensor:
    """(rows, n) items column-major: the rows' first items, then their second ones, ..."""
    return items.T.reshape(-1) if items.dim() == 2 else items
