"""Real kills: a run killed during the tokenizer fit, during pretraining, during SFT or during DPO,
then rerun (or resumed from its last finished stage's checkpoint), ends where an uninterrupted run
ends."""
import glob
import json
import os
import subprocess
import sys
import time

import numpy as np

from onevision_support import REPO, tinyshop

STAGES = "--stages={'pretrain': {'epochs': 2}, 'sft': {'epochs': 3}, 'dpo': {'epochs': 2}}"


def start(args, log):
    return subprocess.Popen([sys.executable, os.path.join(REPO, "run.py"), *args], cwd=REPO,
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def kill_when(child, ready, timeout=240):
    """Kill ``child`` once ``ready()`` holds (or fail if it ends first)."""
    deadline = time.time() + timeout
    while not ready():
        assert child.poll() is None and time.time() < deadline, "the run ended before the fault"
        time.sleep(0.05)
    child.kill()
    child.wait()


def finish(args, log) -> dict:
    assert start(args, log).wait() == 0, open(log).read()[-2000:]
    results = sorted(glob.glob(os.path.join(args_value(args, "checkpoint_dir"), "*.json")), key=os.path.getmtime)
    with open(results[-1]) as f:
        return json.load(f)["test_result"]


def args_value(args, key):
    return next(a.split("=", 1)[1] for a in args if a.startswith(f"--{key}="))


def test_killed_during_the_fit_and_during_each_stage_then_rerun_or_resumed_equals_an_uninterrupted_run(tiny_root, tmp_path):
    protocol, common = tinyshop(tiny_root, tmp_path)
    # each run its own checkpoint folder; INFO logs say when to kill
    common = [a for a in common if not a.startswith(("--checkpoint_dir=", "--state="))] + ["--state=INFO"]
    base = ["--model=OneVision", "--dataset=tinyshop", f"--config_files={protocol[0]}", *common, STAGES,
            "--d_model=32", "--ffn_size=64"]
    cache = tmp_path / "tinyshop" / ".cache"
    whole = finish([*base, f"--checkpoint_dir={tmp_path / 'whole'}", "--vrq_cache=False"], tmp_path / "whole.log")

    # 1. killed while VRQ fits (its alignment has started, nothing cached yet): the rerun fits
    #    again and ends where the uninterrupted run did
    killed = [*base, f"--checkpoint_dir={tmp_path / 'killed'}"]
    child = start(killed, tmp_path / "fit.log")
    kill_when(child, lambda: "VRQ: fitting" in open(tmp_path / "fit.log").read())
    assert not cache.exists() or not [n for n in os.listdir(cache) if n.endswith(".npz")]
    # 2. rerun, and killed during pretraining (the fit is done and cached by then): no results,
    #    nothing half-written
    child = start(killed, tmp_path / "pretrain.log")
    kill_when(child, lambda: "OneVision stage pretrain:" in open(tmp_path / "pretrain.log").read())
    assert "stage pretrain done" not in open(tmp_path / "pretrain.log").read(), "killed after pretraining"
    assert len([n for n in os.listdir(cache) if n.endswith(".npz")]) == 1
    assert not glob.glob(str(tmp_path / "killed" / "*.json"))
    assert not glob.glob(str(tmp_path / "killed" / ".*tmp")) and not glob.glob(str(cache / ".*tmp"))
    # its checkpoint, if it got as far as saving one, is not the one resumed from below: that
    # one comes from a run whose pretraining finished (the kill above may leave a best-so-far)
    unfinished = set(glob.glob(str(tmp_path / "killed" / "*-pretrain.pth")))
    # 3. rerun again (the fit reused from its cache, pretraining from scratch), and killed during
    #    SFT, after pretraining's checkpoint is on disk
    child = start(killed, tmp_path / "sft.log")
    kill_when(child, lambda: "stage sft" in open(tmp_path / "sft.log").read())
    assert "VRQ: reloaded SIDs" in open(tmp_path / "sft.log").read()
    pretrain = [p for p in glob.glob(str(tmp_path / "killed" / "*-pretrain.pth")) if p not in unfinished]
    assert len(pretrain) == 1 and not glob.glob(str(tmp_path / "killed" / "*.json"))
    assert not [n for n in os.listdir(cache) if n.endswith(".tmp")]  # no half-written cache
    # 4. resumed from it, with the stages as before (pretraining skipped, SFT trained again), and
    #    killed again during DPO, after SFT's checkpoint is on disk (each resume its own folder)
    again = [*base, f"--checkpoint_dir={tmp_path / 'again'}", f"--start_checkpoint={pretrain[0]}"]
    child = start(again, tmp_path / "dpo.log")
    kill_when(child, lambda: "stage dpo" in open(tmp_path / "dpo.log").read())
    assert "skipping stage 'pretrain'" in open(tmp_path / "dpo.log").read()
    sft = glob.glob(str(tmp_path / "again" / "*-sft.pth"))
    assert len(sft) == 1 and not glob.glob(str(tmp_path / "again" / "*.json"))
    # 5. resumed from SFT's checkpoint: both earlier stages skipped, DPO trained again, and the
    #    test metrics are the uninterrupted run's
    last = [*base, f"--checkpoint_dir={tmp_path / 'last'}", f"--start_checkpoint={sft[0]}"]
    resumed = finish(last, tmp_path / "resumed.log")
    log = open(tmp_path / "resumed.log").read()
    assert "skipping stage 'pretrain'" in log and "skipping stage 'sft'" in log
    np.testing.assert_allclose([resumed[k] for k in sorted(whole)], [whole[k] for k in sorted(whole)], atol=1e-4)
