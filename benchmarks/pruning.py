"""OneVision's dynamic pruning, off and on, on the same trained checkpoint in one run.

    python benchmarks/pruning.py --checkpoint saved/<run>-dpo.pth [--dataset mvshop-mini]
                                 [--latency_queries 300] [--key=value ...]

The checkpoint is evaluated on the test split twice through RecBole's evaluator (pruning off,
then on; a ``--prune={...}`` override sets the thresholds). For each setting the table gives the
metrics, the FLOPs of decoding per query (torch's FlopCounterMode over the whole test split),
the encoder tokens and decoder beam expansions per query, the single-query latency (p50/p95
over ``--latency_queries`` test queries, one at a time, after a warm-up) and the batched
throughput of the evaluation; timings alternate off/on for ``--repeats`` rounds and keep each
setting's best round. Run with the config overrides the checkpoint was trained with,
so the same SIDs are rebuilt (they come from the VRQ cache).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import platform
import sys
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from recbole_onevision.cli import parse_with_overrides  # noqa: E402
from recbole_onevision.quick_start import load_trained, single_query_latency  # noqa: E402


def decode_cost(model, test_data) -> dict:
    """FLOPs, encoder tokens and beam expansions per query over the whole test split."""
    flops = tokens = beams = rows = 0
    for batch in test_data:
        interaction = batch[0].to(model.device)
        with FlopCounterMode(display=False) as counter:
            _, _, stats = model.generate(interaction)
        flops += counter.get_total_flops()
        tokens, beams, rows = tokens + stats.memory_tokens, beams + stats.beams_expanded, rows + stats.rows
    return {"mflops": flops / rows / 1e6, "tokens": tokens / rows, "beams": beams / rows}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a OneVision checkpoint written by run.py")
    parser.add_argument("--dataset", default="mvshop-mini")
    parser.add_argument("--latency_queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds (off, on alternating); best kept")
    args, overrides = parse_with_overrides(parser, argv)
    trained = load_trained("OneVision", args.dataset, args.checkpoint, cmd_args=overrides)
    config, model, trainer, (_, _, test_data) = trained.config, trained.model, trained.trainer, trained.splits

    rows = []
    with torch.no_grad():
        for prune in (False, True):
            model.params = dataclasses.replace(model.params, prune_enabled=prune)
            result = trainer.evaluate(test_data, load_best_model=False, show_progress=False)
            rows.append({"setting": "pruning on" if prune else "pruning off", **result,
                         **decode_cost(model, test_data), "seconds": float("inf")})
        # timings alternate off/on (best of --repeats), so load from other processes hits both alike
        for _ in range(args.repeats):
            for prune, row in zip((False, True), rows):
                model.params = dataclasses.replace(model.params, prune_enabled=prune)
                start = time.perf_counter()
                trainer.evaluate(test_data, load_best_model=False, show_progress=False)
                row["seconds"] = min(row["seconds"], time.perf_counter() - start)
                latency = single_query_latency(model, test_data, args.latency_queries, warmup=10)
                if "p50_ms" not in row or latency["p50"] < row["p50_ms"]:
                    row.update(p50_ms=latency["p50"], p95_ms=latency["p95"], queries=latency["queries"])
    for row in rows:
        row["throughput"] = len(test_data.dataset.inter_feat) / row["seconds"]

    metrics = [m for m in rows[0] if "@" in m]
    columns = metrics + ["mflops", "tokens", "beams", "p50_ms", "p95_ms", "throughput"]
    heads = metrics + ["MFLOPs/query", "encoder tokens/query", "beams decoded/query", "latency p50 (ms)",
                       "latency p95 (ms)", "queries/s (batched)"]
    print(f"\nOneVision dynamic pruning on {args.dataset} test ({len(test_data.dataset.inter_feat)} queries), "
          f"checkpoint {args.checkpoint}; thresholds: {model.params.prune}, beam_size "
          f"{config['beam_size']}; latency over {rows[0]['queries']} single queries, best of {args.repeats} rounds")
    print(f"{platform.node()} ({platform.processor() or platform.machine()}), torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {datetime.date.today()}\n")
    print("| setting | " + " | ".join(heads) + " |\n" + "|---" * (len(heads) + 1) + "|")
    for row in rows:
        print(f"| {row['setting']} | " + " | ".join(f"{row[c]:.4f}" if c in metrics else f"{row[c]:.1f}"
                                                    for c in columns) + " |")
    off, on = rows
    print("| on / off | " + " | ".join(f"{on[c] / off[c]:.3f}" if off[c] else "-" for c in columns) + " |")


if __name__ == "__main__":
    main()
