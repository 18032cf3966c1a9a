"""The encoder and what it reads: one token sequence per query.

* a [CLS] token (always present, so a row with no other input still attends to something);
* the query photo: its VRQ-fused feature projected into ``visual_tokens`` tokens, and its
  VRQ-predicted SID prefix;
* the user's profile tokens (``PROFILE_FIELDS``);
* the user's past items, one token each: the sum of its SID codes' embeddings, plus its
  behaviour (click/order), its recency and, with ``history_item_embedding``, a vector of its own.

Any of these may be absent (an anonymous query, no photo, no profile). In inference absent
tokens are cut out of the sequence (exact: attention ignores masked keys), and so are the
history items dynamic pruning drops.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from recbole_onevision.model.onevision.codes import SIDCodes
from recbole_onevision.model.onevision.params import OneVisionParams, Pruning
from recbole_onevision.model.packed_encoder import PackedEncoderLayer

CLS, VISUAL, PREFIX, PROFILE, HISTORY = range(5)  # segment ids of encoder tokens


class EncoderInputs(nn.Module):
    def __init__(self, params: OneVisionParams, dataset, codes: SIDCodes, fields: dict[str, str | None],
                 max_seq_length: int, attributes: nn.Module | None = None):
        """``fields``: the interaction fields read (item_seq, item_seq_len, query, behaviour; the
        last two may be None); ``attributes``: the :class:`ItemAttributes` added to history
        items (the decoder's output reads them too), or None."""
        super().__init__()
        d = params.d_model
        self.params, self.fields, self.max_seq_length = params, fields, max_seq_length
        self.segment_embedding = nn.Embedding(5, d)
        if params.photos:
            self._init_photos(dataset, codes)
        else:
            self.query_feature = self.view_feature = None
        self.profile_fields = list(params.profile_fields)
        self.profile_embedding = nn.ModuleList(nn.Embedding(dataset.num(f), d, padding_idx=0)
                                               for f in self.profile_fields)
        behaviour = fields["behaviour"]
        self.behaviour_embedding = nn.Embedding(dataset.num(behaviour) if behaviour else 1, d, padding_idx=0)
        self.recency_embedding = nn.Embedding(max_seq_length + 1, d)
        # what items alone (not their codes) say; also the dense head's output vectors
        self.history_item_embedding = (nn.Embedding(dataset.item_num, d, padding_idx=0)
                                       if params.history_item_embedding else None)
        self.encoder = nn.TransformerEncoder(
            PackedEncoderLayer(d, params.n_heads, params.ffn_size, params.encoder_dropout, batch_first=True,
                               norm_first=True),
            params.layers, norm=nn.LayerNorm(d), enable_nested_tensor=False)
        self.input_dropout = nn.Dropout(params.encoder_dropout)
        self.attributes = attributes

    def _init_photos(self, dataset, codes: SIDCodes) -> None:
        self.tokenizer = dataset.sid_tokenizer
        self.use_query_photos(dataset.query_embedding, codes)
        self.register_buffer("query_product", dataset.query_product.clone(), persistent=False)
        # catalogue views, read like photos: the view -> SID part of the visual prior
        views = getattr(dataset, "view_embedding", None)
        if views is not None:
            self.register_buffer("view_item", dataset.view_item.clone(), persistent=False)
        if views is None or not self.params.visual_prior_weight:
            self.view_feature = None
        else:
            view_features, view_prefix = self._features_and_prefix(views, codes)
            self.register_buffer("view_feature", view_features, persistent=False)
            self.register_buffer("view_prefix", view_prefix, persistent=False)
        width, tokens = self.query_feature.shape[1], self.params.visual_tokens
        self.visual = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, tokens * self.params.d_model))

    def use_query_photos(self, embeddings: torch.Tensor, codes: SIDCodes) -> None:
        """The photo embeddings query ids index from now on (row 0: no photo): their fused
        features and predicted SID prefixes. The dataset's at construction, a search's after."""
        device = self.query_feature.device if hasattr(self, "query_feature") else embeddings.device
        features, prefix = self._features_and_prefix(embeddings.cpu(), codes)
        features[0], prefix[0] = 0, codes.pad_token  # query id 0: no photo
        self.register_buffer("query_feature", features.to(device), persistent=False)
        self.register_buffer("query_prefix", prefix.to(device), persistent=False)

    def _features_and_prefix(self, embeddings: torch.Tensor, codes: SIDCodes) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.tokenizer.visual_width:  # SIDs fitted without images: raw photos, no prefix
            return F.normalize(embeddings, dim=1), torch.full((len(embeddings), 0), codes.pad_token)
        predicted = self.tokenizer.encode_queries(embeddings)
        offsets = codes.offsets[:predicted.shape[1]].to(predicted.device)
        return self.tokenizer.query_features(embeddings), predicted + offsets

    def item_centroids(self, dataset, codes: SIDCodes) -> torch.Tensor | None:
        """(item_num, width) each item's mean catalogue-view feature as photos are read, unit
        length (zeros: padding and items without views); None without catalogue views."""
        views = getattr(dataset, "view_embedding", None)
        if views is None:
            return None
        features = self.view_feature if self.view_feature is not None else self._features_and_prefix(views, codes)[0]
        sums = torch.zeros(dataset.item_num, features.shape[1]).index_add_(0, dataset.view_item, features.cpu())
        return F.normalize(sums, dim=1)

    def photo(self, interaction) -> torch.Tensor | None:
        """The rows' fused photo features as the encoder reads them (zeros for rows without a
        photo; None without photos): in training, with ``photo_noise``, a noisy copy."""
        if self.query_feature is None:
            return None
        query = interaction[self.fields["query"]]
        return self._noisy(self.query_feature[query]).masked_fill((query == 0).unsqueeze(1), 0.0)

    def view_photo(self, views: torch.Tensor) -> torch.Tensor:
        """:meth:`photo` for catalogue views read as query photos."""
        return self._noisy(self.view_feature[views])

    def _noisy(self, features: torch.Tensor) -> torch.Tensor:
        """Gaussian noise on the visual part (then unit length, the attributes predicted again):
        query photos are noisy views, so without it the decoder learns the views too exactly."""
        sigma = self.params.photo_noise
        if not (self.training and sigma):
            return features
        width = self.tokenizer.visual_width or features.shape[1]
        visual = F.normalize(features[:, :width] + sigma * torch.randn_like(features[:, :width]), dim=1)
        return self.tokenizer.fuse_query(visual) if self.tokenizer.visual_width else visual

    def forward(self, interaction, codes: SIDCodes, context: bool = True, prune: Pruning | None = None,
                photo: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states and key-padding mask (True = absent). ``context=False`` reads the
        photo alone (no profile, no history): the visual-prior task; ``prune`` drops history
        items unrelated to the photo (:meth:`history_kept`); ``photo``: the rows' :meth:`photo`,
        when the caller has it (the same noisy copy must reach the decoder's output)."""
        seq = interaction[self.fields["item_seq"]]
        parts, masks = self._start(len(seq), seq.device)
        if self.query_feature is not None:
            query = interaction[self.fields["query"]]
            photo = self.photo(interaction) if photo is None else photo
            self._add_photo(parts, masks, codes, photo, self.query_prefix[query], query == 0)
        if context and self.profile_fields:
            tokens = torch.stack([interaction[f] for f in self.profile_fields], 1)
            embedded = torch.stack([embed(interaction[f])
                                    for f, embed in zip(self.profile_fields, self.profile_embedding)], 1)
            parts.append(self._segment(embedded, PROFILE))
            masks.append(tokens == 0)
        if context:
            history = codes.items(seq)
            length = interaction[self.fields["item_seq_len"]].unsqueeze(1)
            recency = (length - 1 - torch.arange(seq.shape[1], device=seq.device)).clamp(0, self.max_seq_length)
            history = history + self.recency_embedding(recency)
            if self.history_item_embedding is not None:
                history = history + self.history_item_embedding(seq)
            if self.attributes is not None:
                history = history + self.attributes.items(seq)
            if self.fields["behaviour"]:
                history = history + self.behaviour_embedding(interaction[self.fields["behaviour"] + "_list"])
            parts.append(self._segment(history, HISTORY))
            absent = seq == 0
            if prune is not None:
                absent = absent | ~self.history_kept(interaction, codes, prune)
            masks.append(absent)
        return self._run(parts, masks)

    def history_kept(self, interaction, codes: SIDCodes, prune: Pruning) -> torch.Tensor:
        """(batch, history) True for the history items dynamic pruning keeps: the ``keep_recent``
        most recent, and those whose first ``prefix_levels`` SID codes equal the query photo's
        predicted prefix. Rows without a photo (or without predicted prefixes) keep everything:
        nothing tells which items are unrelated."""
        seq = interaction[self.fields["item_seq"]]
        levels, keep_recent = prune.prefix_levels, prune.keep_recent
        if self.query_feature is None or not levels or self.query_prefix.shape[1] < levels:
            return torch.ones_like(seq, dtype=torch.bool)
        length = interaction[self.fields["item_seq_len"]].unsqueeze(1)
        recent = (length - 1 - torch.arange(seq.shape[1], device=seq.device)) < keep_recent
        query = interaction[self.fields["query"]]
        prefix = self.query_prefix[query][:, :levels]
        related = (codes.item_tokens[seq][:, :, :levels] == prefix.unsqueeze(1)).all(2)
        return recent | related | (query == 0).unsqueeze(1)

    def views(self, views: torch.Tensor, codes: SIDCodes, photo: torch.Tensor | None = None):
        """Encoder states and mask of catalogue views read as if they were query photos (view ->
        SID); ``photo``: their :meth:`view_photo`, when the caller has it."""
        parts, masks = self._start(len(views), views.device)
        absent = torch.zeros(len(views), dtype=torch.bool, device=views.device)
        photo = self.view_photo(views) if photo is None else photo
        self._add_photo(parts, masks, codes, photo, self.view_prefix[views], absent)
        return self._run(parts, masks)

    def _segment(self, x: torch.Tensor, segment: int) -> torch.Tensor:
        return x + self.segment_embedding.weight[segment]

    def _start(self, batch: int, device) -> tuple[list, list]:
        cls = self._segment(torch.zeros(batch, 1, self.params.d_model, device=device), CLS)
        return [cls], [torch.zeros(batch, 1, dtype=torch.bool, device=device)]

    def _add_photo(self, parts, masks, codes: SIDCodes, features, prefix, absent):
        batch = len(features)
        visual = self.visual(features).view(batch, self.params.visual_tokens, self.params.d_model)
        parts.append(self._segment(visual, VISUAL))
        masks.append(absent.unsqueeze(1).expand(batch, self.params.visual_tokens))
        if prefix.shape[1]:
            levels = codes.level_embedding.weight[1:prefix.shape[1] + 1]
            parts.append(self._segment(codes.token_embedding(prefix) + levels, PREFIX))
            masks.append(prefix == codes.pad_token)

    def _run(self, parts, masks):
        x, mask = torch.cat(parts, 1), torch.cat(masks, 1)
        if not self.training:  # absent tokens out of the sequence: exact, and less work
            x, mask = _compact(x, mask)
        return self.encoder(self.input_dropout(x), src_key_padding_mask=mask), mask


def _compact(x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each row's present tokens (mask False) first and cut the columns no row uses."""
    order = torch.argsort(mask.to(torch.int8), dim=1, stable=True)
    width = max(int((~mask).sum(1).max()), 1)
    order = order[:, :width]
    return x.gather(1, order.unsqueeze(2).expand(-1, -1, x.shape[2])), mask.gather(1, order)
