"""Codebooks trained to retrieve their item, after k-means has placed them.

k-means codebooks minimise reconstruction error over the whole catalogue, so look-alike products
end up with quantized vectors that a photo cannot tell apart. As IRGen (arXiv 2303.10126) trains
its tokenizer so that codes predict identity, this step fine-tunes every codebook so that an
item's quantized vector, the sum of its codewords, is the nearest one to its own training photos
and catalogue views, as the (fixed) alignment head encodes them: cross-entropy over the catalogue
on negative squared distances. The codes themselves stay fixed, so SIDs, their uniqueness and
the prefix tree are what k-means gave; only where the codewords lie moves. The head is left as
alignment trained it (training it too gained little and moved the aligned features others read).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

BATCH = 1024  # query rows per step
LEARNING_RATE = 3e-3
TEMPERATURE = 0.05  # on squared distances between unit-scale vectors
CANDIDATES = 16384  # larger catalogues: the softmax runs over the batch's items + a random sample


def training_queries(inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Image embeddings of the training query photos and catalogue views, and the item each shows."""
    photos = inputs.train_queries
    embeddings = torch.cat([torch.from_numpy(inputs.query_embedding[photos]),
                            torch.from_numpy(inputs.view_embedding)]).float()
    items = torch.cat([torch.from_numpy(inputs.query_product[photos]), torch.from_numpy(inputs.view_item)])
    return embeddings, items.long()


def train_codebooks(tokenizer, inputs, item_codes: np.ndarray, steps: int, seed: int,
                    show_progress: bool = False) -> None:
    """Fine-tune ``tokenizer.codebooks`` in place; ``item_codes``: (item_num, levels)
    codes of every level with a codebook, row 0 (padding) never a candidate."""
    embeddings, items = training_queries(inputs)
    codes = torch.from_numpy(item_codes)
    n_items = len(item_codes) - 1
    codebooks = [torch.nn.Parameter(c.clone()) for c in tokenizer.codebooks]
    optimizer = torch.optim.Adam(codebooks, lr=LEARNING_RATE)
    generator = torch.Generator().manual_seed(seed)
    progress = tqdm(range(steps), desc="VRQ code training", disable=not show_progress)
    for _ in progress:
        rows = torch.randint(len(embeddings), (min(BATCH, len(embeddings)),), generator=generator)
        query = tokenizer.query_features(embeddings[rows])  # the head stays as alignment left it
        if n_items <= CANDIDATES:
            candidates, target = torch.arange(1, n_items + 1), items[rows] - 1
        else:
            sample = torch.randint(1, n_items + 1, (CANDIDATES,), generator=generator)
            candidates, target = torch.unique(torch.cat([items[rows], sample]), return_inverse=True)
            target = target[:len(rows)]
        quantized = sum(book[codes[candidates, level]] for level, book in enumerate(codebooks))
        logits = -(torch.cdist(query, quantized) ** 2) / TEMPERATURE
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        progress.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    tokenizer.codebooks = [book.detach() for book in codebooks]
