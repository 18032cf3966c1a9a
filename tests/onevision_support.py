"""Shared by the OneVision tests: a tiny generated shop, a model on it, a few training steps;
and the benchmark scripts, loaded as modules."""
import importlib.util
import os
import shutil

import torch
from recbole.data import data_preparation
from recbole.utils import init_seed

from recbole_onevision.config import Config
from recbole_onevision.preprocess import mvshop
from recbole_onevision.registry import create_dataset, dataset_properties_file, get_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCHMARKS = os.path.join(REPO, "benchmarks")
PHOTO_LESS = os.path.join(REPO, "properties", "photo-less.yaml")
TINY = mvshop.MVShopSpec(n_items=300, n_users=40, sessions_per_user=8, branching=(3, 2, 2), n_brands=12)


def load_benchmark(name: str):
    """``benchmarks/<name>.py`` as a module (the folder is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(name, os.path.join(BENCHMARKS, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def prepare(root, tmp_path, config_files=None, **extra):
    """A OneVision model (untrained) on the tiny shop under ``root``, with its data."""
    config = Config("OneVision", "mvshop-mini", config_files, {
        # one VRQ cache for the shop: fits are keyed by their settings and data, so tests share them
        "data_path": str(root), "vrq_align_steps": 100, "vrq_cache_dir": str(root / "vrq-cache"),
        "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False, "state": "WARNING",
        "d_model": 32, "ffn_size": 64, "train_batch_size": 64, "eval_batch_size": 64, **extra})
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    train, valid, test = data_preparation(config, dataset)
    init_seed(config["seed"], config["reproducibility"])
    model = get_model("OneVision")(config, train._dataset)
    return config, dataset, model, (train, valid, test)


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


def dense_logits_of(model, batch) -> torch.Tensor:
    """(rows, n_items) the dense head's scores, from the full decoder's state at BOS."""
    memory, mask = model.inputs(batch, model.codes)
    bos = torch.full((len(batch), 1), model.codes.bos_token)
    first = model.sid_decoder(memory, mask, bos, model.codes)[:, 0]
    return model.dense.logits(model.dense.state(memory, mask, first), model.item_vectors())


def dense_target_ranks(model, batches) -> torch.Tensor:
    """Each training row's target's rank (0 = first) among all items by the dense head."""
    ranks = []
    with torch.no_grad():
        for batch in batches:
            logits = dense_logits_of(model, batch)
            target = logits.gather(1, batch["item_id"].unsqueeze(1))
            ranks.append((logits > target).sum(1))
    return torch.cat(ranks).float()


def tinyshop(tiny_root, tmp_path) -> tuple[list[str], list[str]]:
    """The tiny shop as dataset ``tinyshop`` in ``tmp_path`` (under its own name: run() would
    regenerate a folder called mvshop-mini at the real scale): (its protocol file, overrides)."""
    (tmp_path / "tinyshop").mkdir()
    for f in (tiny_root / "mvshop-mini").iterdir():
        if f.is_file():  # not caches other tests left beside the data (.cache/)
            shutil.copy(f, tmp_path / "tinyshop" / f.name.replace("mvshop-mini", "tinyshop"))
    return [dataset_properties_file("mvshop-mini")], [
        f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path}", "--show_progress=False", "--state=WARNING",
        "--vrq_align_steps=100"]


def full_decoder_log_probs(model, batch, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row's ``items`` (rows, k), from the full (uncached) decoder: the constrained SID
    log-probability (codes that continue no real SID left out; rows, k), and each level's
    log-probability over the whole codebook (rows * k, levels), as teacher forcing computes it."""
    codes = model.codes
    memory, mask, photo = model.encode(batch)
    similarity = model.photo_similarity(batch)
    k = items.shape[1]
    rows, best = torch.arange(len(batch)).repeat_interleave(k), items.reshape(-1)
    targets = codes.item_tokens[best]
    bos = torch.full((len(best), 1), codes.bos_token)
    states = model.sid_decoder(memory[rows], mask[rows], torch.cat([bos, targets[:, :-1]], 1), codes)
    total, parent, unmasked = torch.zeros(len(best)), torch.zeros_like(best), []
    for level in range(codes.levels):
        child = model.trie.step(level, parent)
        logits = model.sid_decoder.level_logits(states[:, level], level, codes)
        if model.inputs.attributes is not None:
            logits = logits + model.inputs.attributes.logits(states[:, level], level, child)
        if model.sid_decoder.nodes is not None:
            logits = logits + model.sid_decoder.nodes.logits(states[:, level], photo[rows], level, child)
        if similarity is not None:
            logits = logits + model.visual_bias.of_children(similarity[level][rows], level, child)  # rows copied
        logp = torch.log_softmax(logits.masked_fill(child < 0, -1e9), -1)
        code = targets[:, level] - codes.offsets[level]
        total += logp.gather(1, code.unsqueeze(1)).squeeze(1)
        parent = model.trie.item_nodes(level)[best]
        unmasked.append(torch.log_softmax(logits, -1).gather(1, code.unsqueeze(1)).squeeze(1))
    return total.view(len(batch), k), torch.stack(unmasked, 1)
