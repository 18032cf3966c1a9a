"""OneVision: one generative model in place of the recall -> pre-rank -> rank cascade.

An encoder-decoder transformer. The encoder reads, as one token sequence:

* a [CLS] token (always present, so a row with no other input still attends to something);
* the query photo: its VRQ-fused feature (aligned visual part + predicted attributes) projected
  into ``visual_tokens`` tokens, and its VRQ-predicted SID prefix;
* the user's profile tokens (``profile_fields``, default: every token field of ``.user``);
* the SIDs of the user's past items (one token per item: the sum of its SID codes' embeddings,
  plus its behaviour (click/order) and recency).

Any of these may be absent (an anonymous query, no photo as on Beauty, no profile). The decoder
emits the target item's SID code by code; beam search is constrained by a prefix trie to SIDs
that exist (:class:`~recbole_onevision.model.trie.SIDTrie`), and ``full_sort_predict`` turns
the beams into a RecBole score row (beam log-probability on the retrieved items, -inf
elsewhere), so RecBole's evaluator and metrics apply unchanged. Without query photos (Beauty,
Toys) the default ranks by a dense head instead (``dense_only``): the encoder's state at the most
recent history item . every item's embedding, trained beside the SID objective, because there
the beams alone rank far worse (docs/onevision.md); ``--dense_only=False`` decodes. With ``item_output`` every code's
logit also gains the decoder state's dot product with the mean item embedding (the history's
``history_item_embedding``) of the items under the SID prefix it leads to. With ``visual_bias`` (photos and
catalogue views present) every code's logit also gains a learned multiple of the photo's best
cosine to a catalogue view of an item under that code (:meth:`OneVision._init_visual_bias`).

Training (``calculate_loss``): cross-entropy on every SID level of the item the user engaged
with, orders weighted ``order_weight`` x clicks (personalised SFT), plus ``visual_prior_weight``
x the same loss for predicting the *pictured* product from the photo alone (keeps the visual
prior). Stages (``stages`` in the config, run by :class:`~recbole_onevision.trainer.OneVisionTrainer`):
``pretrain`` (the visual prior alone), ``sft`` (the above) and ``dpo`` (preference optimisation
against the SFT model).

Dynamic pruning (``prune``, inference only, :meth:`generate`): history items whose first
``prune_prefix_levels`` SID codes differ from the query photo's predicted prefix are dropped from
the encoder (the ``prune_keep_recent`` most recent are always kept), and beams more than
``prune_beam_margin`` log-probability behind their row's best are dropped at every level. Absent
and pruned tokens are then cut out of the encoder sequence, and finished (-inf) beams out of the
beam set, so the saved work is real, not masked.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.utils import FeatureType, InputType
from torch import nn

from recbole_onevision.model.catalogue_similarity import CatalogueSimilarity
from recbole_onevision.model.decoder_cache import DecoderCache
from recbole_onevision.model.packed_encoder import PackedEncoderLayer
from recbole_onevision.model.trie import SIDTrie

CLS, VISUAL, PREFIX, PROFILE, HISTORY = range(5)  # segment ids of encoder tokens
STAGES = ("pretrain", "sft", "dpo")  # in the order the paper trains them
GROUP_MIN_PAIRS = 256  # (row, child) pairs per parent from which one product per parent beats one per pair
DENSE_READOUTS = ("decoder", "history", "both")  # what the dense head reads (dense_state)
DENSE_ENCODER_DROPOUT = 0.3  # encoder_dropout's auto value when the dense head alone ranks


class OneVision(SequentialRecommender):
    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        sid = getattr(dataset, "item_sid", None)
        if sid is None:
            raise ValueError("OneVision needs semantic IDs: set `tokenizer: VRQ` and `dataset_class: "
                             "MultiViewSequentialDataset` (properties/model/OneVision.yaml does)")
        tokenizer = dataset.sid_tokenizer
        self.sizes = tokenizer.codebook_sizes
        self.levels = len(self.sizes)
        self.beam_size = int(config["beam_size"])
        largest_k = max(config["topk"]) if config["topk"] else 0
        if self.beam_size < max(largest_k, 1):
            raise ValueError(f"config beam_size: expected at least the largest topk ({largest_k}), "
                             f"got {self.beam_size}")
        d = config["d_model"]
        self.d_model = d
        offsets = torch.tensor([0] + self.sizes[:-1]).cumsum(0)
        self.register_buffer("offsets", offsets, persistent=False)
        n_tokens = sum(self.sizes)
        self.pad_token, self.bos_token = n_tokens, n_tokens + 1
        item_tokens = sid.clamp_min(0) + offsets
        item_tokens[0] = self.pad_token
        self.register_buffer("item_tokens", item_tokens, persistent=False)
        # saved with the weights, so a checkpoint cannot be loaded onto other SIDs (load_state_dict)
        self.register_buffer("item_sid", sid.clone())
        self.token_embedding = nn.Embedding(n_tokens + 2, d, padding_idx=self.pad_token)
        self.level_embedding = nn.Embedding(self.levels + 1, d)
        self.segment_embedding = nn.Embedding(5, d)

        self.visual_prior_weight = float(config["visual_prior_weight"])
        self._init_query(config, dataset, tokenizer)
        self._init_profile(config, dataset)
        self.trie = SIDTrie(sid, self.sizes)
        self._init_visual_bias(config, dataset)
        self.behaviour_field = config["BEHAVIOUR_FIELD"] or "behaviour"
        if self.behaviour_field not in dataset.field2type:
            self.behaviour_field = None
        n_behaviours = dataset.num(self.behaviour_field) if self.behaviour_field else 1
        self.behaviour_embedding = nn.Embedding(n_behaviours, d, padding_idx=0)
        self.order_token = (dataset.field2token_id[self.behaviour_field].get("order", -1)
                            if self.behaviour_field else -1)
        self.order_weight = float(config["order_weight"])
        self.recency_embedding = nn.Embedding(self.max_seq_length + 1, d)
        # an embedding per past item on top of its SID's: what items alone (not their codes) say;
        # auto (~): on without query photos (Beauty: +21%), off with them (MVShop mini: -0.013 test N@10)
        use = config["history_item_embedding"]
        use = self.query_feature is None if use is None else bool(use)
        self.history_item_embedding = nn.Embedding(self.n_items, d, padding_idx=0) if use else None
        # the same vectors as output ones: a code's logit also gets the decoder state's dot product
        # with the mean embedding of the items under the SID prefix that code leads to
        # off by default: trained through it the item vectors rank worse by the dense head (rare
        # items are pushed from every state whose target is a popular sibling; docs/results.md)
        self.item_output = bool(config["item_output"])
        if self.item_output and not use:
            raise ValueError("config item_output: True needs history_item_embedding: True (it reuses its vectors)")
        # no weights of its own, but a checkpoint's scores depend on it: saved, checked on loading
        self.register_buffer("item_output_flag", torch.tensor(self.item_output))
        if self.item_output:
            for level in range(self.levels - 1):  # the last level's nodes are the items
                nodes = self.trie.item_nodes(level)[1:]
                self.register_buffer(f"node_size{level}", torch.bincount(nodes).clamp_min(1).unsqueeze(1).float(),
                                     persistent=False)
        # a dense head beside the decoder (as LIGER pairs dense and generative retrieval): the
        # decoder's first state . every item's embedding, one softmax over the catalogue as SASRec
        # scores. The SID loss scores an item's own vector only when it or a sibling is the target,
        # this one every step; in inference its top items join the beams and its log-probability the scores
        # auto (~): on with the item embedding, i.e. by default without query photos
        loss_weight, score_weight = config["dense_loss_weight"], config["dense_score_weight"]
        self.dense_loss_weight = float(use) if loss_weight is None else float(loss_weight)
        self.dense_score_weight = (float(self.dense_loss_weight > 0) if score_weight is None
                                   else float(score_weight))
        for key, value in (("dense_loss_weight", self.dense_loss_weight),
                           ("dense_score_weight", self.dense_score_weight)):
            if value < 0 or (value and not use):
                raise ValueError(f"config {key}: expected a value >= 0, and 0 without history_item_embedding "
                                 f"(the dense head scores its vectors); got {value}")
        if self.dense_score_weight and not self.dense_loss_weight:
            raise ValueError("config dense_score_weight: expected 0 when dense_loss_weight is 0 (the dense head "
                             f"would be untrained); got {self.dense_score_weight}")
        # rank by the dense head alone, as SASRec ranks. Auto (~): when it is trained and item_output
        # is off, i.e. by default without query photos: there the beams alone trail it by half and
        # fusing them costs 13% test NDCG@10 (Toys, docs/results.md); with photos the beams rank
        only = config["dense_only"]
        self.dense_only = (self.dense_loss_weight > 0 and not self.item_output) if only is None else bool(only)
        if self.dense_only and not self.dense_loss_weight:
            raise ValueError("config dense_only: True needs dense_loss_weight > 0 (the dense head would be "
                             "untrained)")
        # an ablation: SFT without the SID objective trains the dense head alone (a SASRec-like
        # model on OneVision's encoder), to tell what the generative objective gives the dense score
        self.sid_loss_weight = float(config["sid_loss_weight"])
        if self.sid_loss_weight < 0:
            raise ValueError(f"config sid_loss_weight: expected a value >= 0, got {self.sid_loss_weight}")
        if not self.sid_loss_weight and not self.dense_only:  # dense_only already needs dense_loss_weight > 0
            raise ValueError("config sid_loss_weight: 0 leaves the decoder untrained, so it needs dense_loss_weight > 0 "
                             "and dense_only: True (rank by the dense head alone)")
        if not self.sid_loss_weight and "dpo" in (config["stages"] or []):
            raise ValueError("config sid_loss_weight: 0 cannot run the dpo stage (its preference is over SID "
                             "likelihoods); set `--stages=['sft']`")
        # what the dense head reads: the encoder's state at the most recent history item (as
        # SASRec reads its last position; the default), the decoder's state at BOS, or their sum
        self.dense_readout = config["dense_readout"] or "history"
        if self.dense_readout not in DENSE_READOUTS:
            raise ValueError(f"config dense_readout: expected one of {', '.join(DENSE_READOUTS)}, "
                             f"got {self.dense_readout!r}")
        # saved, so a checkpoint trained without the dense loss is not scored by an untrained head,
        # nor one trained with one readout by another
        self.register_buffer("dense_trained", torch.tensor(self.dense_loss_weight > 0))
        self.register_buffer("dense_readout_index", torch.tensor(DENSE_READOUTS.index(self.dense_readout)))
        # the dense head's logits: dot products as SASRec's (~), or cosine similarities / this
        # temperature, so no item is ranked by its vector's norm (docs/results.md "A temperature on
        # the dense head"); saved (0 = dot products), as it changes every dense score
        temperature = config["dense_temperature"]
        try:
            self.dense_temperature = None if temperature is None else float(temperature)
        except (TypeError, ValueError):
            self.dense_temperature = math.nan
        if self.dense_temperature is not None and not 0 < self.dense_temperature < math.inf:
            raise ValueError(f"config dense_temperature: expected ~ (dot products) or a value > 0, got {temperature!r}")
        self.register_buffer("dense_temperature_value", torch.tensor(self.dense_temperature or 0.0))

        heads, ffn, dropout = config["n_heads"], config["ffn_size"], float(config["dropout"])
        # the encoder (what reads the history) may be regularised apart from the decoder, which
        # must emit exact codes: 0.5 (SASRec's) on all four layers learned far slower on Beauty.
        # Auto (~): 0.3 when the dense head alone ranks (Toys, three seeds: +8% test NDCG@10 over 0.1), else dropout
        encoder_dropout = config["encoder_dropout"]
        encoder_dropout = ((DENSE_ENCODER_DROPOUT if self.dense_only else dropout) if encoder_dropout is None
                           else float(encoder_dropout))
        for key, value in (("dropout", dropout), ("encoder_dropout", encoder_dropout)):
            if not 0 <= value < 1:
                raise ValueError(f"config {key}: expected a value in [0, 1), got {value}")
        self.encoder = nn.TransformerEncoder(
            PackedEncoderLayer(d, heads, ffn, encoder_dropout, batch_first=True, norm_first=True),
            config["encoder_layers"], norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.decoder = nn.TransformerDecoder(
            nn.TransformerDecoderLayer(d, heads, ffn, dropout, batch_first=True, norm_first=True),
            config["decoder_layers"], norm=nn.LayerNorm(d))
        self.encoder_input_dropout = nn.Dropout(encoder_dropout)
        self.input_dropout = nn.Dropout(dropout)  # the decoder's
        self.output = nn.Linear(d, n_tokens)
        self.register_buffer("code_neighbour", _code_neighbours(sid), persistent=False)
        self.dpo_beta = float(config["dpo_beta"])
        self.dpo_sft_weight = float(config["dpo_sft_weight"] or 0.0)
        self.prune = bool(config["prune"])
        self.prune_keep_recent = int(config["prune_keep_recent"] or 0)
        self.prune_prefix_levels = int(config["prune_prefix_levels"] or 0)
        self.prune_beam_margin = float(config["prune_beam_margin"]) if config["prune_beam_margin"] is not None \
            else float("inf")
        for key, value in (("prune_keep_recent", self.prune_keep_recent),
                           ("prune_prefix_levels", self.prune_prefix_levels),
                           ("prune_beam_margin", self.prune_beam_margin)):
            if value < 0:
                raise ValueError(f"config {key}: expected a value >= 0, got {value}")
        self.stage = "sft"
        self._reference: dict[str, torch.Tensor] | None = None
        self.apply(self._init_weights)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As torch's, but first checks that the checkpoint was trained on this dataset's SIDs:
        its weights mean nothing on other codes (an item's SID is what the decoder emits)."""
        saved = state_dict.get("item_sid")
        if saved is None:  # checkpoints written before the SIDs were saved with them
            state_dict = {**state_dict, "item_sid": self.item_sid}
        elif saved.shape != self.item_sid.shape or not torch.equal(saved.to(self.item_sid.device), self.item_sid):
            raise ValueError(
                "OneVision checkpoint: it was trained on other semantic IDs than this dataset's "
                f"({tuple(saved.shape)} vs {tuple(self.item_sid.shape)} items x levels, or other codes). "
                "Load it with the config it was trained with (vrq_* keys, seed) and the same VRQ "
                "cache; SIDs fitted on a GPU can differ from run to run.")
        has_items = "history_item_embedding.weight" in state_dict
        if strict and has_items != (self.history_item_embedding is not None):
            raise ValueError(f"OneVision checkpoint: it was trained with history_item_embedding: {has_items}, "
                             f"this model has {not has_items}; set `--history_item_embedding={has_items}` "
                             "(checkpoints from before 2bb9e96 have none)")
        if "item_output_flag" not in state_dict:  # checkpoints from before item_output
            state_dict = {**state_dict, "item_output_flag": torch.tensor(False)}
        item_output = bool(state_dict["item_output_flag"])
        if strict and item_output != self.item_output:
            raise ValueError(f"OneVision checkpoint: it was trained with item_output: {item_output}, this model "
                             f"has {self.item_output}; set `--item_output={item_output}` (checkpoints from "
                             "before item_output have none)")
        if "dense_trained" not in state_dict:  # checkpoints from before the dense head
            state_dict = {**state_dict, "dense_trained": torch.tensor(False)}
        # the dense head's settings matter only where it scores, and only if the checkpoint trained it
        scores_dense = strict and bool(self.dense_score_weight or self.dense_only)
        if scores_dense and not bool(state_dict["dense_trained"]):
            raise ValueError("OneVision checkpoint: it was trained without the dense head's loss, so its dense "
                             "scores mean nothing; set `--dense_loss_weight=0 --dense_score_weight=0` and no "
                             "`--dense_only` (checkpoints from before the dense head have none)")
        if "dense_readout_index" not in state_dict:  # checkpoints from before dense_readout
            state_dict = {**state_dict, "dense_readout_index": torch.tensor(0)}
        readout = DENSE_READOUTS[int(state_dict["dense_readout_index"])]
        if scores_dense and readout != self.dense_readout:
            raise ValueError(f"OneVision checkpoint: its dense head was trained with dense_readout: {readout}, "
                             f"this model has {self.dense_readout}; set `--dense_readout={readout}` "
                             "(checkpoints from before dense_readout have decoder)")
        if "dense_temperature_value" not in state_dict:  # checkpoints from before dense_temperature
            state_dict = {**state_dict, "dense_temperature_value": torch.tensor(0.0)}
        saved = float(state_dict["dense_temperature_value"])
        if scores_dense and saved != float(self.dense_temperature_value):
            shown = f"{saved:.6g}" if saved else None  # the float32 buffer, as the config wrote it
            raise ValueError(f"OneVision checkpoint: its dense head was trained with dense_temperature: "
                             f"{shown or '~'}, this model has {self.dense_temperature or '~'}; set "
                             f"`--dense_temperature={shown}` (checkpoints from before dense_temperature have ~)")
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    # ----- inputs --------------------------------------------------------------------------
    def _init_query(self, config, dataset, tokenizer):
        self.query_field = config["QUERY_ID_FIELD"] or "query_id"
        photos = getattr(dataset, "query_embedding", None)
        self.visual_tokens = int(config["visual_tokens"])
        if photos is None or self.visual_tokens == 0:
            self.query_feature = self.view_feature = None
            return
        def features_and_prefix(embeddings):
            if not tokenizer.visual_width:  # SIDs fitted without images: raw photos, no prefix
                return F.normalize(embeddings, dim=1), torch.full((len(embeddings), 0), self.pad_token)
            codes = tokenizer.encode_queries(embeddings)
            return tokenizer.query_features(embeddings), codes + self.offsets[:codes.shape[1]]

        features, prefix = features_and_prefix(photos)
        features[0], prefix[0] = 0, self.pad_token  # query id 0: no photo
        self.register_buffer("query_feature", features, persistent=False)
        self.register_buffer("query_prefix", prefix, persistent=False)
        self.register_buffer("query_product", dataset.query_product.clone(), persistent=False)
        # catalogue views, read like photos: the view -> SID part of the visual prior
        views = getattr(dataset, "view_embedding", None)
        if views is not None:
            self.register_buffer("view_item", dataset.view_item.clone(), persistent=False)
        if views is None or not self.visual_prior_weight:
            self.view_feature = None
        else:
            features, prefix = features_and_prefix(views)
            self.register_buffer("view_feature", features, persistent=False)
            self.register_buffer("view_prefix", prefix, persistent=False)
        self.visual = nn.Sequential(nn.LayerNorm(features.shape[1]),
                                    nn.Linear(features.shape[1], self.visual_tokens * self.d_model))

    def _init_visual_bias(self, config, dataset):
        """The photo's similarity to the catalogue as a prior on the decoder's logits (fusing
        dense and generative retrieval, as LIGER does): at each level, a code's logit gains a
        learned per-level scale (initially ``visual_bias_scale``) x the best raw-feature cosine
        between the photo and a view of an item under the node that code leads to. The decoder
        then learns what to add to visual similarity (personalisation, the category) instead of
        memorising every item's appearance in its weights. On only with photos and views."""
        views = getattr(dataset, "view_embedding", None)
        self.visual_bias = bool(config["visual_bias"]) and self.query_feature is not None and views is not None
        if not self.visual_bias:
            return
        photos = F.normalize(dataset.query_embedding.float(), dim=1)
        self.catalogue = CatalogueSimilarity(photos, F.normalize(views.float(), dim=1), dataset.view_item.clone(),
                                             self.trie, self.item_sid.clamp_min(0))
        scale = float(config["visual_bias_scale"])
        if not scale > 0:
            raise ValueError(f"config visual_bias_scale: expected a value > 0, got {scale}")
        # learned in log space: Adam's ~learning-rate-sized steps then change it by a ratio, so it
        # can move by several times in one training run (a plain scale of 10 barely moved)
        self.visual_bias_log_scale = nn.Parameter(torch.full((self.levels,), float(np.log(scale))))

    def photo_similarity(self, interaction) -> list[torch.Tensor] | None:
        """Per level, (rows, nodes): the rows' query photos' similarity to every trie node
        (:meth:`CatalogueSimilarity.nodes`; flat for rows without a photo), for beam search;
        None when the visual bias is off."""
        if not self.visual_bias:
            return None
        query = interaction[self.query_field]
        out = self.catalogue.nodes(self.catalogue.photos[query])
        return [level.masked_fill((query == 0).unsqueeze(1), 0.0) for level in out]

    def path_similarity(self, interaction, items: torch.Tensor) -> list[torch.Tensor] | None:
        """Per level, (rows, codes): the rows' query photos' similarity to the children of
        ``items``' SID prefixes (:meth:`CatalogueSimilarity.along`), for teacher forcing; None
        when the visual bias is off. ``items`` (rows, n): rows in :meth:`_flat` order."""
        if not self.visual_bias:
            return None
        n = items.shape[1] if items.dim() == 2 else 1
        return self.catalogue.along(interaction[self.query_field].repeat(n), self._flat(items))

    def visual_logit_bias(self, level_similarity: torch.Tensor, level: int, children: torch.Tensor,
                          rows: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, codes) the visual bias of each code of ``level`` given the trie ``children``
        of the rows' current prefixes (-1: no such SID, bias as for the least similar item).
        ``rows``: the row of ``level_similarity`` each row of ``children`` reads (default: the
        same row); beams index their query's row instead of copying it (a row is every node)."""
        index = children.clamp_min(0)
        prior = level_similarity.gather(1, index) if rows is None else level_similarity[rows.unsqueeze(1), index]
        prior = prior.masked_fill(children < 0, -1.0)
        return self.visual_bias_log_scale[level].exp() * prior

    def _init_profile(self, config, dataset):
        fields = config["profile_fields"]
        if fields is None:
            user_feat = dataset.user_feat
            fields = [] if user_feat is None else [
                f for f in user_feat.columns if f != dataset.uid_field and dataset.field2type[f] == FeatureType.TOKEN]
        for field in fields:
            if dataset.field2type.get(field) != FeatureType.TOKEN:
                raise ValueError(f"config profile_fields: {field!r} is not a loaded user token field")
        self.profile_fields = list(fields)
        self.profile_embedding = nn.ModuleList(nn.Embedding(dataset.num(f), self.d_model, padding_idx=0)
                                               for f in self.profile_fields)

    @staticmethod
    def _init_weights(module):
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=0.02)
            if isinstance(module, nn.Linear) and module.bias is not None:
                nn.init.zeros_(module.bias)

    def _segment(self, x: torch.Tensor, segment: int) -> torch.Tensor:
        return x + self.segment_embedding.weight[segment]

    def encode(self, interaction, context: bool = True, prune: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states and key-padding mask (True = absent). ``context=False`` reads the
        photo alone (no profile, no history): the visual-prior task; ``prune`` drops history
        items unrelated to the photo (:meth:`history_kept`)."""
        seq = interaction[self.ITEM_SEQ]
        parts, masks = self._start(len(seq), seq.device)
        if self.query_feature is not None:
            query = interaction[self.query_field]
            self._add_photo(parts, masks, self.query_feature[query], self.query_prefix[query], query == 0)
        if context and self.profile_fields:
            tokens = torch.stack([interaction[f] for f in self.profile_fields], 1)
            embedded = torch.stack([emb(interaction[f]) for f, emb in zip(self.profile_fields, self.profile_embedding)], 1)
            parts.append(self._segment(embedded, PROFILE))
            masks.append(tokens == 0)
        if context:
            history = self.token_embedding(self.item_tokens[seq]).sum(2)
            length = interaction[self.ITEM_SEQ_LEN].unsqueeze(1)
            recency = (length - 1 - torch.arange(seq.shape[1], device=seq.device)).clamp(0, self.max_seq_length)
            history = history + self.recency_embedding(recency)
            if self.history_item_embedding is not None:
                history = history + self.history_item_embedding(seq)
            if self.behaviour_field:
                history = history + self.behaviour_embedding(interaction[self.behaviour_field + "_list"])
            parts.append(self._segment(history, HISTORY))
            absent = seq == 0
            if prune:
                absent = absent | ~self.history_kept(interaction)
            masks.append(absent)
        return self._run_encoder(parts, masks)

    def history_kept(self, interaction) -> torch.Tensor:
        """(batch, history) True for the history items dynamic pruning keeps: the
        ``prune_keep_recent`` most recent, and those whose first ``prune_prefix_levels`` SID codes
        equal the query photo's predicted prefix. Rows without a photo (or without predicted
        prefixes) keep everything: nothing tells which items are unrelated."""
        seq = interaction[self.ITEM_SEQ]
        levels = self.prune_prefix_levels
        if self.query_feature is None or not levels or self.query_prefix.shape[1] < levels:
            return torch.ones_like(seq, dtype=torch.bool)
        length = interaction[self.ITEM_SEQ_LEN].unsqueeze(1)
        recent = (length - 1 - torch.arange(seq.shape[1], device=seq.device)) < self.prune_keep_recent
        query = interaction[self.query_field]
        prefix = self.query_prefix[query][:, :levels]
        related = (self.item_tokens[seq][:, :, :levels] == prefix.unsqueeze(1)).all(2)
        return recent | related | (query == 0).unsqueeze(1)

    def encode_views(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder input of catalogue views read as if they were query photos (view -> SID)."""
        parts, masks = self._start(len(views), views.device)
        absent = torch.zeros(len(views), dtype=torch.bool, device=views.device)
        self._add_photo(parts, masks, self.view_feature[views], self.view_prefix[views], absent)
        return self._run_encoder(parts, masks)

    def _start(self, batch: int, device) -> tuple[list, list]:
        cls = self._segment(torch.zeros(batch, 1, self.d_model, device=device), CLS)
        return [cls], [torch.zeros(batch, 1, dtype=torch.bool, device=device)]

    def _add_photo(self, parts, masks, features, prefix, absent):
        batch = len(features)
        visual = self.visual(features).view(batch, self.visual_tokens, self.d_model)
        parts.append(self._segment(visual, VISUAL))
        masks.append(absent.unsqueeze(1).expand(batch, self.visual_tokens))
        if prefix.shape[1]:
            levels = self.level_embedding.weight[1:prefix.shape[1] + 1]
            parts.append(self._segment(self.token_embedding(prefix) + levels, PREFIX))
            masks.append(prefix == self.pad_token)

    def _run_encoder(self, parts, masks):
        x, mask = torch.cat(parts, 1), torch.cat(masks, 1)
        if not self.training:  # absent tokens out of the sequence: exact, and less work
            x, mask = _compact(x, mask)
        return self.encoder(self.encoder_input_dropout(x), src_key_padding_mask=mask), mask

    # ----- decoding --------------------------------------------------------------------------
    def decode(self, memory, mask, tokens: torch.Tensor) -> torch.Tensor:
        """Output states for decoder inputs ``tokens`` (BOS first): (rows, len, d_model)."""
        steps = tokens.shape[1]
        y = self.token_embedding(tokens) + self.level_embedding.weight[:steps]
        causal = torch.triu(torch.full((steps, steps), float("-inf"), device=tokens.device), 1)
        return self.decoder(self.input_dropout(y), memory, tgt_mask=causal, memory_key_padding_mask=mask)

    def node_vectors(self) -> list[torch.Tensor] | None:
        """Per level, (nodes, d_model): the mean item embedding of each trie node's items (the
        last level's nodes are the items themselves); None without ``item_output``."""
        if not self.item_output:
            return None
        items = self.history_item_embedding.weight
        out = []
        for level in range(self.levels - 1):
            nodes = self.trie.item_nodes(level)[1:]
            size = getattr(self, f"node_size{level}")
            out.append(items.new_zeros(len(size), items.shape[1]).index_add(0, nodes, items[1:]) / size)
        return out + [items]

    @staticmethod
    def node_logits(states: torch.Tensor, vectors: torch.Tensor, children: torch.Tensor) -> torch.Tensor:
        """(rows, codes): each row's state dotted with the vector of the node each code leads to
        (``children``: rows of :meth:`SIDTrie.step`; -1: no such SID, 0). Few nodes (the first
        level): one matrix product with all of them. Below it only the real children count, as
        most codes continue no SID: one dot product per (row, child) pair, except in inference
        where parents carry many pairs (beam search's second level on Beauty: 20 beams per query
        under 128 parents of ~40 children), as rows under one parent share its children: one
        product per parent there, ~12x faster (with gradients, the products' backward is slower)."""
        real = children >= 0
        if len(vectors) <= 2 * children.shape[1]:
            return (states @ vectors.T).gather(1, children.clamp_min(0)) * real
        out = states.new_zeros(children.shape)
        if not torch.is_grad_enabled():
            # a parent's children are its own, so its largest names it (-1: a row with none)
            keys, group, sizes = torch.unique(children.max(1).values, return_inverse=True, return_counts=True)
            if int(real.sum()) >= GROUP_MIN_PAIRS * len(keys):
                for rows in torch.split(torch.argsort(group), sizes.tolist()):
                    codes = torch.nonzero(real[rows[0]]).squeeze(1)
                    if len(codes):
                        out[rows.unsqueeze(1), codes] = states[rows] @ vectors[children[rows[0], codes]].T
                return out
        rows, codes = torch.nonzero(real, as_tuple=True)
        out[rows, codes] = (states[rows] * vectors[children[rows, codes]]).sum(1)
        return out

    def level_logits(self, states: torch.Tensor, level: int) -> torch.Tensor:
        codes = slice(int(self.offsets[level]), int(self.offsets[level]) + self.sizes[level])
        return F.linear(states, self.output.weight[codes], self.output.bias[codes])  # this level's rows only

    def sid_log_likelihood(self, memory, mask, items: torch.Tensor, prior: list[torch.Tensor] | None = None,
                           first_state: bool = False):
        """(rows, levels) log-probabilities of each level of ``items``' SIDs (teacher forcing);
        ``prior``: the rows' :meth:`path_similarity` to ``items`` when the visual bias is on.
        ``first_state``: also return the decoder's state at BOS (rows, d_model)."""
        targets = self.item_tokens[items]
        bos = torch.full((len(items), 1), self.bos_token, device=items.device)
        states = self.decode(memory, mask, torch.cat([bos, targets[:, :-1]], 1))
        vectors, parent = self.node_vectors(), torch.zeros_like(items)
        out = []
        for level in range(self.levels):
            logits = self.level_logits(states[:, level], level)
            if prior is not None:
                logits = logits + self.visual_bias_log_scale[level].exp() * prior[level]
            if vectors is not None:
                logits = logits + self.node_logits(states[:, level], vectors[level], self.trie.step(level, parent))
                parent = self.trie.item_nodes(level)[items]
            logp = torch.log_softmax(logits, -1)
            code = targets[:, level] - self.offsets[level]
            out.append(logp.gather(1, code.unsqueeze(1)).squeeze(1))
        return (torch.stack(out, 1), states[:, 0]) if first_state else torch.stack(out, 1)

    def dense_state(self, memory, mask, first: torch.Tensor | None) -> torch.Tensor:
        """(rows, d_model) what the dense head reads (``dense_readout``), from the encoder's
        ``memory`` and ``mask`` and ``first``, the decoder's states at BOS (not read, and may be
        None, with ``history``). The most recent history
        item is each row's last present token: history is the encoder's last segment, in order
        (also after :func:`_compact`); a row without history reads its last context token."""
        if self.dense_readout == "decoder":
            return first
        last = (torch.arange(mask.shape[1], device=mask.device) * ~mask).argmax(1)
        recent = memory[torch.arange(len(memory), device=memory.device), last]
        return recent if self.dense_readout == "history" else recent + first

    def dense_logits(self, states: torch.Tensor) -> torch.Tensor:
        """(rows, n_items): the dense head, the rows' :meth:`dense_state` dotted with every item's
        embedding, or their cosine / ``dense_temperature`` (padding id 0 at -inf)."""
        items = self.history_item_embedding.weight
        if self.dense_temperature:
            logits = F.normalize(states, dim=-1) @ F.normalize(items, dim=-1).T / self.dense_temperature
        else:
            logits = states @ items.T
        return logits.index_fill(1, torch.zeros(1, dtype=torch.long, device=logits.device), float("-inf"))

    def dense_nll(self, states: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """(rows,) the dense head's cross-entropy of ``items`` over the catalogue."""
        return F.cross_entropy(self.dense_logits(states), items, reduction="none")

    # ----- training stages ------------------------------------------------------------------
    def supports_stage(self, stage: str) -> bool:
        return stage != "pretrain" or self.query_feature is not None

    def set_stage(self, stage: str) -> None:
        """Switch the training objective. Entering ``dpo`` freezes the current weights as the
        reference policy (kept outside the state dict)."""
        if stage not in STAGES:
            raise ValueError(f"config stages: unknown stage {stage!r}; expected some of {', '.join(STAGES)}")
        if not self.supports_stage(stage):
            raise ValueError(f"stage {stage!r} needs query photos; this dataset has none")
        self.stage = stage
        self._reference = ({k: v.detach().clone() for k, v in self.named_parameters()}
                           if stage == "dpo" else None)

    def forward(self, interaction, items: torch.Tensor, prior: list[torch.Tensor] | None = None,
                first_state: bool = False):
        """Log-probability of ``items``' SIDs given ``interaction`` (summed over levels):
        ``items`` (rows,) gives (rows,); (rows, n) scores n items per row with one encoder pass.
        ``prior``: :meth:`path_similarity` of the rows to ``items`` in :meth:`_flat` order,
        when the caller has it already. ``first_state``: also return what the dense head reads
        (rows, d_model; :meth:`dense_state`)."""
        memory, mask = self.encode(interaction)
        n = items.shape[1] if items.dim() == 2 else 0
        if n:
            memory, mask = memory.repeat(n, 1, 1), mask.repeat(n, 1)
        if prior is None:
            prior = self.path_similarity(interaction, items)
        likelihood, first = self.sid_log_likelihood(memory, mask, self._flat(items), prior, first_state=True)
        likelihood = likelihood.sum(1)
        out = likelihood.view(n, -1).T if n else likelihood
        if not first_state:
            return out
        rows = len(out)  # _flat order: the rows' first items (and memory copies) lead
        return out, self.dense_state(memory[:rows], mask[:rows], first[:rows])

    @staticmethod
    def _flat(items: torch.Tensor) -> torch.Tensor:
        """(rows, n) items column-major: the rows' first items, then their second ones, ..."""
        return items.T.reshape(-1) if items.dim() == 2 else items

    def calculate_loss(self, interaction):
        if self.stage == "pretrain":
            return self._visual_prior_loss(interaction)
        if self.stage == "dpo":
            return self._dpo_loss(interaction)
        return self._sft_loss(interaction)

    def _row_weights(self, interaction, like: torch.Tensor) -> torch.Tensor:
        if not self.behaviour_field:
            return torch.ones_like(like)
        return torch.where(interaction[self.behaviour_field] == self.order_token, self.order_weight, 1.0)

    def _sft_loss(self, interaction):
        target = interaction[self.POS_ITEM_ID]
        memory, mask = self.encode(interaction)
        logp, first = self.sid_log_likelihood(memory, mask, target, self.path_similarity(interaction, target),
                                              first_state=True)
        nll = -self.sid_loss_weight * logp.sum(1)
        if self.dense_loss_weight:
            nll = nll + self.dense_loss_weight * self.dense_nll(self.dense_state(memory, mask, first), target)
        weight = self._row_weights(interaction, nll)
        loss = (nll * weight).sum() / weight.sum()
        if self.visual_prior_weight and self.query_feature is not None:
            loss = loss + self.visual_prior_weight * self._visual_prior_loss(interaction)
        return loss

    def rejected_items(self, interaction) -> torch.Tensor:
        """A visually close item the user did not choose: the photographed product when they
        engaged with another one, else the item whose SID shares the longest prefix with theirs."""
        target = interaction[self.POS_ITEM_ID]
        rejected = self.code_neighbour[target]
        if self.query_feature is not None:
            pictured = self.query_product[interaction[self.query_field]]
            rejected = torch.where((pictured > 0) & (pictured != target), pictured, rejected)
        return rejected

    def _dpo_loss(self, interaction):
        """DPO (Rafailov et al. 2023) against the reference frozen when the stage began:
        chosen = the item engaged with (orders weighted ``order_weight``), rejected =
        :meth:`rejected_items`."""
        if self._reference is None:
            raise RuntimeError("dpo stage without a reference policy: call set_stage('dpo') first")
        items = torch.stack([interaction[self.POS_ITEM_ID], self.rejected_items(interaction)], 1)
        prior = self.path_similarity(interaction, items)  # parameter-free: shared with the reference
        policy, first = self(interaction, items, prior, first_state=True)
        policy = policy.T  # (2, batch): chosen, rejected
        training = self.training
        self.train(False)  # the reference policy without dropout
        with torch.no_grad():
            reference = torch.func.functional_call(self, self._reference, (interaction, items, prior)).T
        self.train(training)
        margin = (policy[0] - reference[0]) - (policy[1] - reference[1])
        # + the chosen item's likelihood (as in RPO, Pang et al. 2024): pure DPO can lower both
        # likelihoods while widening their gap, and on MVShop it then lost ranking quality
        loss = -F.logsigmoid(self.dpo_beta * margin) - self.dpo_sft_weight * policy[0]
        if self.dense_loss_weight:  # the chosen item's likelihood under the dense head too, as in SFT
            loss = loss + self.dpo_sft_weight * self.dense_loss_weight * self.dense_nll(first, items[:, 0])
        weight = self._row_weights(interaction, loss)
        return (loss * weight).sum() / weight.sum()

    def _visual_prior_loss(self, interaction):
        """Photo alone -> SID of the pictured product, and catalogue view -> its item's SID
        (as many random views as the batch has rows), so every item's SID is learnt from its
        appearance, clicked in training or not."""
        terms = []
        product = self.query_product[interaction[self.query_field]]
        known = torch.nonzero(product > 0).squeeze(1)
        if len(known):
            rows = interaction[known]
            memory, mask = self.encode(rows, context=False)
            prior = self.path_similarity(rows, product[known])
            terms.append(-self.sid_log_likelihood(memory, mask, product[known], prior).sum(1).mean())
        if self.view_feature is not None:
            views = torch.randint(len(self.view_item), (len(product),), device=product.device)
            memory, mask = self.encode_views(views)
            # a view's bias comes from the *other* views: matching itself would teach blind trust
            items = self.view_item[views]
            prior = self.catalogue.along(views, items, of_views=True) if self.visual_bias else None
            terms.append(-self.sid_log_likelihood(memory, mask, items, prior).sum(1).mean())
        return sum(terms) / max(len(terms), 1)

    @torch.no_grad()
    def generate(self, interaction, beam_size: int | None = None,
                 prune: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Constrained beam search: (items, log-probabilities), each (batch, beam), best first.
        Fewer real SIDs than beams (or beams dropped by pruning; ``prune`` defaults to the
        config's) leaves item 0 with score -inf in the last columns."""
        beams = beam_size or self.beam_size
        prune = self.prune if prune is None else prune
        margin = self.prune_beam_margin if prune else float("inf")
        memory, mask = self.encode(interaction, prune=prune)
        similarity = self.photo_similarity(interaction)
        batch, device = memory.shape[0], memory.device
        cache = DecoderCache(self.decoder, memory, mask)
        vectors = self.node_vectors()
        last = torch.full((batch, 1), self.bos_token, device=device)  # each beam's last token
        nodes = torch.zeros(batch, 1, dtype=torch.long, device=device)
        scores = torch.zeros(batch, 1, device=device)
        self.decode_stats = {"rows": batch, "memory_tokens": int((~mask).sum()), "beams_expanded": 0}
        for level in range(self.levels):
            k, size = last.shape[1], self.sizes[level]
            scores = scores.contiguous()
            live = torch.nonzero(torch.isfinite(scores).view(-1)).squeeze(1)  # only these are decoded
            self.decode_stats["beams_expanded"] += len(live)
            rows = live // k
            inputs = self.token_embedding(last.reshape(-1)[live]) + self.level_embedding.weight[level]
            states = cache.step(self.input_dropout(inputs), live, rows)
            if level == 0:
                first = states  # one per row: what the dense head reads
            child = torch.full((batch * k, size), -1, dtype=torch.long, device=device)
            child[live] = self.trie.step(level, nodes.view(-1)[live])
            logp = self.constrained_log_probs(states, level, child[live], rows, similarity, vectors)
            total = torch.full((batch * k, size), float("-inf"), device=device)
            total[live] = scores.view(-1)[live].unsqueeze(1) + logp
            scores, index = total.view(batch, k * size).topk(min(beams, k * size), dim=1)
            scores = scores.masked_fill(scores < scores[:, :1] - margin, float("-inf"))
            alive = max(int(torch.isfinite(scores).sum(1).max()), 1)  # beams are sorted: a prefix
            scores, index = scores[:, :alive], index[:, :alive]
            parent, code = index // size, index % size
            cache.reorder((parent + k * torch.arange(batch, device=device).unsqueeze(1)).view(-1))
            last = code + self.offsets[level]
            nodes = child.view(batch, k, size)[torch.arange(batch, device=device).unsqueeze(1), parent, code]
        items = torch.where(torch.isfinite(scores), nodes, torch.zeros_like(nodes))
        if self.dense_score_weight:
            dense = self.dense_state(memory, mask, first)
            items, scores = self._add_dense(memory, mask, similarity, vectors, dense, items, scores, beams)
        missing = beams - items.shape[1]
        if missing > 0:  # keep the documented (batch, beam) shape
            items = F.pad(items, (0, missing))
            scores = F.pad(scores, (0, missing), value=float("-inf"))
        return items, scores

    def constrained_log_probs(self, states, level: int, child, rows, similarity, vectors) -> torch.Tensor:
        """(beams, codes) log-probabilities of level ``level``'s codes for decoder ``states``, over
        the codes that continue a real SID only (``child``: :meth:`SIDTrie.step` rows; others
        -inf); ``rows``: each beam's query row (for the photo's ``similarity``)."""
        logits = self.level_logits(states, level)
        if similarity is not None:
            logits = logits + self.visual_logit_bias(similarity[level], level, child, rows)
        if vectors is not None:
            logits = logits + self.node_logits(states, vectors[level], child)
        logits = logits.masked_fill(child < 0, -1e9)
        return torch.log_softmax(logits, -1).masked_fill(child < 0, float("-inf"))

    def _add_dense(self, memory, mask, similarity, vectors, first, items, scores, beams: int):
        """The beams and the dense head's top ``beams`` items (``first``: the rows'
        :meth:`dense_state`), each scored by its constrained SID log-probability (as beam search scores it;
        a beam's score is that already) + ``dense_score_weight`` x its dense log-probability;
        the best ``beams`` of them, best first."""
        dense = torch.log_softmax(self.dense_logits(first), -1)
        top = dense.topk(min(beams, self.n_items - 1), 1).indices  # (rows, n)
        rows, n = top.shape
        # teacher-force the retrieved items through the decoder cache, n hypotheses per row
        cache = DecoderCache(self.decoder, memory, mask)
        every_row = torch.arange(rows, device=top.device)
        row = every_row.repeat_interleave(n)
        flat, tokens = top.reshape(-1), self.item_tokens[top.reshape(-1)]
        # BOS and the first level are the same for a row's n items: decoded and scored once per row
        bos = self.token_embedding.weight[self.bos_token].expand(rows, -1) + self.level_embedding.weight[0]
        states = cache.step(self.input_dropout(bos), every_row, every_row)
        logp = self.constrained_log_probs(states, 0, self.trie.step(0, torch.zeros_like(every_row)), every_row,
                                          similarity, vectors)
        sid = logp[row, tokens[:, 0] - self.offsets[0]]
        cache.reorder(row)
        for level in range(1, self.levels):
            inputs = self.token_embedding(tokens[:, level - 1]) + self.level_embedding.weight[level]
            states = cache.step(self.input_dropout(inputs), torch.arange(rows * n, device=top.device), row)
            child = self.trie.step(level, self.trie.item_nodes(level - 1)[flat])
            logp = self.constrained_log_probs(states, level, child, row, similarity, vectors)
            sid = sid + logp.gather(1, (tokens[:, level] - self.offsets[level]).unsqueeze(1)).squeeze(1)
        candidates = torch.cat([items, top], 1)
        total = torch.cat([scores, sid.view(rows, n)], 1) + self.dense_score_weight * dense.gather(1, candidates)
        # an item both beamed and retrieved counts once (same score either way, up to rounding)
        ordered, order = candidates.sort(1)
        repeat = torch.zeros_like(ordered, dtype=torch.bool)
        repeat[:, 1:] = ordered[:, 1:] == ordered[:, :-1]
        total = total.masked_fill(torch.zeros_like(repeat).scatter(1, order, repeat), float("-inf"))
        total, best = total.topk(min(beams, total.shape[1]), 1)
        return torch.where(torch.isfinite(total), candidates.gather(1, best), 0), total

    def dense_log_probs(self, interaction) -> torch.Tensor:
        """(rows, n_items) every item's dense log-probability (what ``dense_only`` ranks by)."""
        memory, mask = self.encode(interaction, prune=self.prune)
        bos = torch.full((len(memory), 1), self.bos_token, device=memory.device)
        first = None if self.dense_readout == "history" else self.decode(memory, mask, bos)[:, 0]
        return torch.log_softmax(self.dense_logits(self.dense_state(memory, mask, first)), -1)

    def full_sort_predict(self, interaction):
        if self.dense_only:  # no beam search
            return self.dense_log_probs(interaction)
        items, scores = self.generate(interaction)
        out = torch.full((len(items), self.n_items), float("-inf"), device=items.device)
        out.scatter_(1, items, scores)
        out[:, 0] = float("-inf")
        return out

    def predict(self, interaction):
        """Sampled evaluation: ``interaction``'s item's dense log-probability with ``dense_only``
        (as full ranking scores it), else the log-probability of its SID."""
        items = interaction[self.ITEM_ID]
        if self.dense_only:
            return self.dense_log_probs(interaction).gather(1, items.unsqueeze(1)).squeeze(1)
        return self(interaction, items)


def _compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's present tokens (mask False) first and cut the columns no row uses.
    Attention ignores masked keys, so the encoder's output on present tokens is unchanged."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    width = max(int((~mask).sum(1).max()), 1)
    order = order[:, :width]
    return x.gather(1, order.unsqueeze(2).expand(-1, -1, x.shape[2])), mask.gather(1, order)


def _code_neighbours(item_sid: torch.Tensor) -> torch.Tensor:
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
