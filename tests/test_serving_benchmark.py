"""benchmarks/serving.py end to end on the tiny shop's runs: one server per configuration on
127.0.0.1, every request answered, the report written, and a bad argument refused."""
import json
import os
import subprocess
import sys

import pytest
import torch

from recbole_onevision.compat import load_checkpoint

pytest.importorskip("httpx2")
pytest.importorskip("fastapi")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "benchmarks", "serving.py")


def benchmark(*args, timeout=600):
    # the tiny shop's photos.json names an image encoder in tests/search_support.py
    path = [os.path.dirname(__file__), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    return subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=timeout, env=env)


def test_every_configuration_answers_every_request(search_runs, tmp_path):
    _, runs = search_runs
    out = tmp_path / "serving.json"
    done = benchmark("--checkpoint", f"OneVision={runs['OneVision']}", "--checkpoint", f"VisualKNN={runs['VisualKNN']}",
                     "--dataset-kind", "embeddings", "--requests", "6", "--concurrency", "1", "3", "--batch-size", "4",
                     "--prune", "on", "--warmup", "1", "--max-seconds", "60", "--footprint", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())
    names = [c["name"] for c in report["configurations"]]
    # OneVision through serving_server.py (the override), VisualKNN through ``python -m recbole_onevision.serve``
    assert names == ["OneVision, prune on, batch 4/5 ms", "VisualKNN, batch 4/5 ms"]
    for config in report["configurations"]:
        assert "failed" not in config, config["failed"]
        assert [lv["concurrency"] for lv in config["levels"]] == [1, 3]
        for level in config["levels"]:
            assert (level["requests"], level["answered"], level["errors"]) == (6, 6, 0), config["name"]
            assert level["latency_ms"]["p50"] > 0 and level["throughput_rps"] > 0
        assert config["rss_loaded_mb"] > 0 and config["peak_rss_mb"] >= config["rss_loaded_mb"]
    pruned, knn = report["configurations"]
    assert "--serve-with-overrides" in pruned["command"] and "--serve-with-overrides" not in knn["command"]
    assert knn["levels"][0]["short"] == 0  # VisualKNN always returns k hits
    state = load_checkpoint(runs["OneVision"], map_location="cpu")["state_dict"]
    learnt = sum(t.numel() for t in state.values() if isinstance(t, torch.Tensor) and t.is_floating_point())
    assert 0 < report["footprint"]["OneVision"]["parameters"] <= learnt
    assert "| OneVision, prune on, batch 4/5 ms | 3 | 6 | 0 |" in done.stdout  # the markdown table


def test_a_bad_checkpoint_argument_is_refused(tmp_path):
    done = benchmark("--checkpoint", "no-name-here", "--dataset-kind", "embeddings", timeout=120)
    assert done.returncode == 2 and "expected NAME=PATH" in done.stderr
    done = benchmark("--checkpoint", f"X={tmp_path / 'missing.pth'}", "--dataset-kind", "embeddings", timeout=120)
    assert done.returncode == 2 and "no such file" in done.stderr
