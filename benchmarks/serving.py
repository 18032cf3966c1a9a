"""Serving benchmark: the search service end to end over loopback, one configuration at a time.

    python benchmarks/serving.py --checkpoint NAME=PATH [--checkpoint NAME=PATH ...]
        --dataset-kind images|embeddings [--requests 200] [--concurrency 1 4 16]
        [--batch-size 1 16] [--batch-wait-ms 5] [--prune off on] [--max-seconds 60]
        [--warmup 5] [--footprint] [--out results/serving-<dataset>-<kind>.json]

Configurations: every checkpoint x every ``--batch-size`` (1: micro-batching off) x, for
OneVision checkpoints only, every ``--prune`` setting (``on``: the service loads the run with
``{"prune": {"enabled": True}}``, OneVision's own thresholds). All checkpoints must be runs on
one dataset (checkpoints that record their settings: trained by this version's ``run.py``).

Each configuration is its own server process, ``python -m recbole_onevision.serve --checkpoint
NAME=PATH --port <free port> --batch-size B --batch-wait-ms T`` on 127.0.0.1 (with pruning on,
the same ``main`` started through ``serving_server.py``, which only adds the override to
``Searcher.from_checkpoint``: the service has no flag for it). The benchmark waits for
``/health`` (``--start-timeout``), sends ``--warmup`` requests one at a time (not counted), then
for each concurrency c runs c client workers (one asyncio httpx client, keep-alive connections)
that send ``--requests`` requests in all, or stop sending after ``--max-seconds``, whichever
comes first; then the server is stopped. So a run is bounded: at most configurations x
(start-timeout + warm-up + levels x (max-seconds + request-timeout)).

Requests are the dataset's held-out queries: the query photos of RecBole's test split, as the
checkpoint's own protocol builds it (in a child process before any server starts), cycled when
``--requests`` exceeds them. ``--dataset-kind images``: each request uploads the photo's file
bytes (multipart ``image``), so decoding, the image encoder and the model all run in the
service (ETH-80; the dataset must have been converted with its ``<name>.photos.json``).
``embeddings``: each request is JSON with the query photo's embedding from the dataset (MVShop,
which has no pixels). ``--user`` (default: on for embeddings, off for images) adds the test
row's user, so the search is personalised with that user's profile and history.

Measured per configuration and concurrency: client-side latency of each request, from sending
the bytes to holding the parsed top-k (p50/p95/p99, ms), throughput (answered requests per
second of the level's wall time), errors (HTTP status other than 200, or no answer), short
answers (200 with fewer than k hits: a model may retrieve fewer, e.g. OneVision's pruned
beams), the service's own ``model_ms``/``queued_ms`` (p50) and mean ``batch``; per
configuration: start-up time (process start to ``/health``), the server's resident memory after
loading (VmRSS), its peak while loading and over the whole run (VmHWM of /proc/<pid>/status,
read after ``/health`` and at the end), and the 1-minute
load average before each level (the client shares the machine with the server: on a small
machine it takes CPU from it; the load average says what else did). Writes ``--out`` (JSON:
every figure, the machine, the commit, the arguments) and prints the tables in markdown.
``--footprint`` also loads each checkpoint once more (in a child process, after the servers)
and records what the run holds in memory, by module: learnt parameters, and the tensors rebuilt
from the dataset at load (view tables, SIDs, item features).

Needs the ``serve`` extra and httpx2 (the ``test`` extra). The commands and figures are in
docs/serving.md ("Serving benchmark").
"""
from __future__ import annotations

import argparse
import asyncio
import datetime
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # its two halves, beside it
from serving_queries import footprint, held_out_queries, payloads  # noqa: E402
from serving_server import ROOT, Server, memory_kb  # noqa: E402


# ----- the client ------------------------------------------------------------------------------
async def load_level(url: str, requests: list[dict], n: int, concurrency: int, k: int, max_seconds: float,
                     timeout: float) -> dict:
    """Up to ``n`` requests from ``concurrency`` workers, none started after ``max_seconds``."""
    import httpx2 as httpx  # the test extra's client (httpx2: what FastAPI's TestClient needs too)

    counter = itertools.count()
    records = []
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:
        start = time.perf_counter()

        async def worker():
            while True:
                i = next(counter)
                if i >= n or time.perf_counter() - start > max_seconds:
                    return
                sent = time.perf_counter()
                record = {"status": None}
                try:
                    response = await client.post("/search", **requests[i % len(requests)])
                    record["status"] = response.status_code
                    if response.status_code == 200:
                        answer = response.json()
                        record.update(hits=len(answer["hits"]), batch=answer["batch"],
                                      model_ms=answer["model_ms"], queued_ms=answer["queued_ms"])
                    else:
                        record["error"] = response.text[:300]
                except httpx.HTTPError as err:
                    record["error"] = f"{type(err).__name__}: {err}"[:300]
                record["ms"] = 1e3 * (time.perf_counter() - sent)
                records.append(record)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - start
    return summarise(records, wall, concurrency, k)


def summarise(records: list[dict], wall: float, concurrency: int, k: int) -> dict:
    ok = [r for r in records if r["status"] == 200]
    errors = [r for r in records if r["status"] != 200]
    latency = np.array([r["ms"] for r in ok]) if ok else np.array([np.nan])
    pct = lambda values, p: round(float(np.percentile(values, p)), 2) if len(values) else None  # noqa: E731
    return {"concurrency": concurrency, "requests": len(records), "answered": len(ok), "errors": len(errors),
            "first_errors": sorted({str(r.get("error") or r["status"]) for r in errors})[:3],
            "short": sum(r["hits"] < k for r in ok),
            "mean_hits": round(float(np.mean([r["hits"] for r in ok])), 2) if ok else None, "wall_s": round(wall, 3),
            "throughput_rps": round(len(ok) / wall, 2) if wall > 0 else None,
            "latency_ms": {"p50": pct(latency, 50), "p95": pct(latency, 95), "p99": pct(latency, 99),
                           "mean": round(float(latency.mean()), 2), "max": round(float(latency.max()), 2)},
            "model_ms_p50": pct([r["model_ms"] for r in ok], 50),
            "queued_ms_p50": pct([r["queued_ms"] for r in ok], 50),
            "mean_batch": round(float(np.mean([r["batch"] for r in ok])), 2) if ok else None}


def configurations(args, runs: list[dict]) -> list[dict]:
    out = []
    for (name, path), run in zip(args.checkpoint, runs):
        prunes = args.prune if run["model"] == "OneVision" else ["off"]
        for prune, batch in itertools.product(prunes, args.batch_size):
            label = name + (", prune on" if prune == "on" else "") + (
                ", no batching" if batch == 1 else f", batch {batch}/{args.batch_wait_ms:g} ms")
            out.append({"name": label, "served_as": name, "checkpoint": path, "model": run["model"],
                        "dataset": run["dataset"], "prune": prune if run["model"] == "OneVision" else None,
                        "batch_size": batch, "batch_wait_ms": args.batch_wait_ms,
                        "overrides": {"prune": {"enabled": True}} if prune == "on" else None})
    return out


def measure(config: dict, requests: list[dict], args) -> dict:
    server = Server(config["served_as"], config["checkpoint"], config["batch_size"], config["batch_wait_ms"],
                    config["overrides"])
    result = {**{k: v for k, v in config.items() if k != "overrides"}, "command": server.command[1:]}
    try:
        result["startup_s"] = round(server.wait_healthy(args.start_timeout), 2)
        loaded = memory_kb(server.process.pid)
        result["rss_loaded_mb"] = round(loaded.get("VmRSS", 0) / 1024, 1)
        result["peak_rss_loading_mb"] = round(loaded.get("VmHWM", 0) / 1024, 1)
        result["levels"] = []
        warm = asyncio.run(load_level(server.url, requests, args.warmup, 1, args.k, args.max_seconds,
                                      args.request_timeout)) if args.warmup else None
        result["warmup_errors"] = warm["errors"] if warm else 0
        for concurrency in args.concurrency:
            load = os.getloadavg()[0]
            level = asyncio.run(load_level(server.url, requests, args.requests, concurrency, args.k,
                                           args.max_seconds, args.request_timeout))
            level["load_avg_1min_before"] = round(load, 2)
            result["levels"].append(level)
            print(f"  {config['name']}: c={concurrency} {level['answered']}/{level['requests']} answered, "
                  f"p50 {level['latency_ms']['p50']} ms, {level['throughput_rps']} req/s", flush=True)
        result["peak_rss_mb"] = round(memory_kb(server.process.pid).get("VmHWM", 0) / 1024, 1)
        if server.process.poll() is not None:
            result["failed"] = f"server exited with {server.process.returncode}:\n{server.log_tail()}"
    except RuntimeError as err:
        result["failed"] = str(err)
        print(f"  {config['name']}: FAILED: {str(err)[:2000]}", flush=True)
    finally:
        server.stop()
    return result


# ----- report ----------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = ["| configuration | concurrency | requests | errors | short (mean hits) | p50 (ms) | p95 (ms) | p99 (ms) | "
             "req/s | mean batch | model ms p50 | load avg |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in report["configurations"]:
        for lv in c.get("levels", []):
            ms = lv["latency_ms"]
            lines.append(f"| {c['name']} | {lv['concurrency']} | {lv['requests']} | {lv['errors']} | {lv['short']} ({lv['mean_hits']}) | "
                         f"{ms['p50']} | {ms['p95']} | {ms['p99']} | {lv['throughput_rps']} | {lv['mean_batch']} | "
                         f"{lv['model_ms_p50']} | {lv['load_avg_1min_before']} |")
    lines += ["", "| configuration | start-up (s) | RSS after loading (MB) | peak RSS while loading (MB) | peak RSS (MB) |",
              "|---|---|---|---|---|"]
    for c in report["configurations"]:
        if "failed" in c and "levels" not in c:
            lines.append(f"| {c['name']} | failed | | | |")
        else:
            lines.append(f"| {c['name']} | {c.get('startup_s')} | {c.get('rss_loaded_mb')} | "
                         f"{c.get('peak_rss_loading_mb', '')} | {c.get('peak_rss_mb')} |")
    return "\n".join(lines)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu": model, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "commit": commit}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", action="append", required=True, metavar="NAME=PATH",
                        help="a trained run (repeat; all on one dataset)")
    parser.add_argument("--dataset-kind", choices=("images", "embeddings"), required=True,
                        help="images: upload the test photos' files; embeddings: send their embeddings as JSON")
    parser.add_argument("--requests", type=int, default=200, help="requests per concurrency level (default 200)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--batch-size", type=int, nargs="+", default=[1, 16],
                        help="the service's micro-batch sizes to try (1: off; default 1 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0)
    parser.add_argument("--prune", choices=("off", "on"), nargs="+", default=["off", "on"],
                        help="OneVision's pruning settings to try (default off on)")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--user", action=argparse.BooleanOptionalAction, default=None,
                        help="send the test row's user (default: yes for embeddings, no for images)")
    parser.add_argument("--warmup", type=int, default=5, help="uncounted requests after start-up (default 5)")
    parser.add_argument("--max-seconds", type=float, default=60.0,
                        help="no request is started after this many seconds of a level (default 60)")
    parser.add_argument("--request-timeout", type=float, default=60.0)
    parser.add_argument("--start-timeout", type=float, default=900.0, help="seconds to wait for /health")
    parser.add_argument("--footprint", action="store_true",
                        help="also load each checkpoint once (child process) and record what it holds, by module")
    parser.add_argument("--out", default=None, help="JSON file (default results/serving-<dataset>-<kind>.json)")
    args = parser.parse_args(argv)
    pairs = []
    for spec in args.checkpoint:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            parser.error(f"--checkpoint {spec!r}: expected NAME=PATH")
        if not os.path.isfile(path):
            parser.error(f"--checkpoint {spec!r}: no such file {path}")
        pairs.append((name, path))
    args.checkpoint = pairs
    if any(n < 1 for n in [args.requests, *args.concurrency, *args.batch_size]) or args.warmup < 0:
        parser.error("--requests, --concurrency and --batch-size take positive integers")
    if args.user is None:
        args.user = args.dataset_kind == "embeddings"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    began = time.perf_counter()
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        prepared = pool.submit(held_out_queries, [p for _, p in args.checkpoint], args.dataset_kind,
                               args.requests, args.user).result()
    dataset = prepared["runs"][0]["dataset"]
    queries = prepared["queries"]
    print(f"{dataset}: {len(queries)} of {prepared['held_out']} test queries ({args.dataset_kind}), "
          f"prepared in {time.perf_counter() - began:.0f} s", flush=True)
    requests = payloads(queries, args.dataset_kind, args.k)
    report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "machine": machine(), "dataset": dataset, "dataset_kind": args.dataset_kind,
              "queries": len(queries), "held_out_queries": prepared["held_out"], "with_user": args.user,
              "arguments": {k: v for k, v in vars(args).items()}, "configurations": []}
    for config in configurations(args, prepared["runs"]):
        print(f"{config['name']} ({config['checkpoint']})", flush=True)
        report["configurations"].append(measure(config, requests, args))
    if args.footprint:
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            report["footprint"] = {name: pool.submit(footprint, path).result() for name, path in args.checkpoint}
    report["total_s"] = round(time.perf_counter() - began, 1)
    out = args.out or os.path.join(ROOT, "results", f"serving-{dataset}-{args.dataset_kind}.json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print()
    print(markdown(report))
    for name, f in report.get("footprint", {}).items():
        print(f"\n{name} ({f['model']} on {f['dataset']}): {f['parameters']:,} parameters; parameters MB by module "
              f"{f['parameter_mb']}; rebuilt from the dataset (buffers) MB {f['buffer_mb']}; VRQ tokenizer MB {f['vrq_mb']}")
    print(f"\n{report['machine']['cpu']}, {report['machine']['cores']} cores, commit {report['machine']['commit']}, "
          f"{report['date']}; {report['total_s']} s in all; written to {out}")
    return report


if __name__ == "__main__":
    main()
