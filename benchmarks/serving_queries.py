"""The serving benchmark's requests and footprint (benchmarks/serving.py): the held-out queries
of a run's test split and what a loaded run holds in memory, each computed in a child process so
that the dataset stays out of the client."""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def held_out_queries(checkpoints: list[str], kind: str, limit: int, with_user: bool) -> dict:
    """(in a child process: the dataset stays out of the client) Each checkpoint's model and
    dataset, and up to ``limit`` test-split queries of the first one's dataset, spread over the
    split: {"runs": [{model, dataset}], "queries": [{query, user, image | embedding}],
    "held_out": n}."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, ROOT)
    from recbole.utils import init_seed

    from recbole_onevision.compat import load_checkpoint
    from recbole_onevision.config import Config
    from recbole_onevision.registry import create_dataset, data_preparation
    from recbole_onevision.search.run import catalogue_of

    runs, saved = [], None
    for path in checkpoints:
        state = load_checkpoint(path, map_location="cpu")
        config = state.get("config") if isinstance(state, dict) else None
        if not isinstance(config, dict) or "overrides" not in config:
            raise SystemExit(f"serving: {path} records no run settings (trained before checkpoints did): "
                             "train it again with run.py")
        runs.append({"model": config["model"], "dataset": config["dataset"]})
        saved = saved or config
    if len({r["dataset"] for r in runs}) > 1:
        raise SystemExit(f"serving: one dataset per run; got {sorted({r['dataset'] for r in runs})}")
    settings = {**saved["overrides"], "data_path": saved["data_path"], "show_progress": False, "state": "WARNING",
                "save_dataset": False, "save_dataloaders": False}
    config = Config(saved["model"], saved["dataset"], config_dict=settings)
    init_seed(config["seed"], config["reproducibility"])
    dataset = create_dataset(config)
    test = data_preparation(config, dataset)[2]._dataset
    field = config["QUERY_ID_FIELD"] or "query_id"
    queries, users = test.inter_feat[field].tolist(), test.inter_feat[dataset.uid_field].tolist()
    rows = [n for n, q in enumerate(queries) if q]
    tokens, user_tokens = dataset.field2id_token[field], dataset.field2id_token[dataset.uid_field]
    images = catalogue_of(config, dataset).images if kind == "images" else {}
    if kind == "images":
        rows = [n for n in rows if os.path.isfile(images.get(str(tokens[queries[n]]), ""))]
        if not rows:
            raise SystemExit(f"serving: no test query of {saved['dataset']} has an image file: convert it again "
                             "(the converter's <name>.photos.json records them)")
    out = []
    for n in rows[::max(len(rows) // limit, 1)][:limit]:
        token = str(tokens[queries[n]])
        query = {"query": token, "user": str(user_tokens[users[n]]) if with_user and users[n] else None}
        if kind == "images":
            query["image"] = images[token]
        else:
            query["embedding"] = dataset.query_embedding[queries[n]].tolist()
        out.append(query)
    return {"runs": runs, "queries": out, "held_out": len(rows)}


def footprint(checkpoint: str) -> dict:
    """(in a child process) What the loaded run holds: learnt parameters and the tensors
    rebuilt from the dataset (non-persistent buffers: view tables, SIDs, item features), in MB
    by module, and the rows of the RecBole dataset the service keeps for user histories."""
    import warnings

    warnings.filterwarnings("ignore")
    sys.path.insert(0, ROOT)
    from recbole_onevision.search.run import load_run

    run = load_run(checkpoint)
    mb = lambda t: t.numel() * t.element_size() / 2 ** 20  # noqa: E731

    def group(name: str) -> str:  # the module (two levels at most), or the tensor's own name at the top
        parts = name.split(".")
        parts = [p for p in (parts[:-1] or parts)[:2] if not p.isdigit()]
        return ".".join(parts)

    parameters, buffers, seen = {}, {}, set()
    for name, p in run.model.named_parameters():
        parameters[group(name)] = parameters.get(group(name), 0) + mb(p)
    for name, b in run.model.named_buffers():
        if b is None or b.data_ptr() in seen:
            continue
        seen.add(b.data_ptr())
        buffers[name] = buffers.get(name, 0) + mb(b)
    dataset = run.dataset
    tokenizer = getattr(dataset, "sid_tokenizer", None)  # VRQ: photo -> SID prefix, outside the model's modules
    vrq = None
    if tokenizer is not None:
        head = list(tokenizer.head.parameters()) if tokenizer.head is not None else []
        vrq = {"codebooks": sum(map(mb, tokenizer.codebooks)), "attribute_prototypes": sum(map(mb, tokenizer.prototypes)),
               "alignment_head": sum(map(mb, head)), "item_sid": mb(tokenizer.item_sid)}
    rounded = lambda d: {k: round(v, 2) for k, v in sorted(d.items(), key=lambda kv: -kv[1]) if v >= 0.01}  # noqa: E731
    return {"model": run.config["model"], "dataset": run.config["dataset"],
            "parameters": sum(p.numel() for p in run.model.parameters()),
            "parameter_mb": rounded(parameters), "buffer_mb": rounded(buffers), "vrq_mb": vrq and rounded(vrq),
            "items": int(dataset.item_num) - 1, "users": int(dataset.user_num) - 1,
            "interactions": len(dataset.inter_feat),
            "catalogue_views": len(dataset.view_item) if getattr(dataset, "view_item", None) is not None else None}


def payloads(queries: list[dict], kind: str, k: int) -> list[dict]:
    """httpx keyword arguments of each request, built before any timing."""
    out = []
    for q in queries:
        user = {"user": q["user"]} if q["user"] else {}
        if kind == "images":
            with open(q["image"], "rb") as f:
                body = f.read()
            out.append({"files": {"image": (os.path.basename(q["image"]), body, "application/octet-stream")},
                        "data": {"k": str(k), **user}})
        else:
            out.append({"json": {"embedding": q["embedding"], "k": k, **user}})
    return out
