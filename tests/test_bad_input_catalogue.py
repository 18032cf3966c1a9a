"""The bad-input catalogue, by family: each case ends with exit status 2 or the documented
exception, a message naming the file or key and what was expected, no traceback shown, and no
file left half-written. Other families live beside their code: config values
(test_config_checks), atomic files (test_data_checks), multi-view matrices
(test_multiview_dataset), VRQ settings (test_vrq), converters (test_s3rec_convert,
test_amazon2023, test_image_folder), the benchmark grid (test_benchmark), search requests
(test_serve); docs/bad-input.md counts them all."""
import os
import re

import numpy as np
import pytest
import torch

from recbole_onevision.cli import main
from recbole_onevision.quick_start import run
from recbole_onevision.registry import dataset_properties_file

ML100K = ["--dataset=ml-100k", "--show_progress=False", "--state=WARNING"]

CLI = [  # run.py arguments -> what the one line on stderr must say
    (["--model=SASRec", "--epochs=abc"], "config epochs: expected an integer .*got 'abc'"),
    (["--model=OneVision", "--beam_size=abc"], "command line --beam_size: config beam_size: expected an integer"),
    (["--model=NoSuchModel"], "unknown model 'NoSuchModel' \\(names are case-sensitive\\)"),
    (["--model=SASRec", "--dataset=nosuch"], "dataset 'nosuch': .*nosuch.inter not found. Datasets under"),
    (["--model=SASRec", "--config_files=missing.yaml"], "config file not found: missing.yaml"),
    (["--model=SASRec", "stray"], "unrecognised arguments \\['stray'\\]: overrides must look like --key=value"),
    (["--model=SASRec", "--epochs=1", "--epochs=2"], "--epochs given twice with different values"),
    (["--model=SASRec", "--topk=[0]"], "topk must be a positive integer"),
    (["--model=SASRec", "--train_batch_size=-5"], "batch_size should be a positive integer value"),
    (["--model=SASRec", "--metrics=['Recall','Nope']"], "config metrics: unknown metric 'Nope'; known"),
    (["--model=OneVision", "--stages=[sft,polish]"], "config stages: unknown stage 'polish'; expected some of"),
    (["--model=OneVision", "--ranking=magic"], "config ranking: expected one of beams, dense, fused, got 'magic'"),
    (["--model=OneVision", "--beam_size=3"], "config beam_size: expected at least the largest topk \\(10\\), got 3"),
    (["--model=SASRec", "--seed=1.5"], "config seed: expected an integer .*got 1.5"),
    (["--model=OneVision", "--vrq_levels=0"], "config vrq_levels: expected an integer >= 1, got 0"),
    (["--model=OneVision", "--vrq_codebook_size=8"], "unknown config key 'vrq_codebook_size'; did you mean"),
    (["--model=MCA"], "MCA needs query photos and catalogue views"),
    (["--model=SASRec", "--eval_args={'order': 'RO'}"], "ordering args for sequential recommendation has to be 'TO'"),
    (["--model=OneVision", "--start_checkpoint=nope.pth"], "config start_checkpoint: no such file 'nope.pth'"),
]


@pytest.mark.parametrize("args, message", CLI, ids=[" ".join(a) for a, _ in CLI])
def test_command_line(args, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main(ML100K + [f"--checkpoint_dir={tmp_path}"] + args)  # a case's own --dataset comes last and wins
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "Traceback" not in err
    assert re.search(message, err), err
    assert not list(tmp_path.glob("*.pth")) and not list(tmp_path.glob(".*tmp*"))  # nothing (half-)written


@pytest.fixture(scope="module")
def tiny_cache(tiny_root, tmp_path_factory):
    """The tiny shop's VRQ cache file, fitted once, and a function that loads the shop again."""
    from onevision_support import prepare

    tmp = tmp_path_factory.mktemp("cache")
    cache_dir = tmp / "vrq"
    prepare(tiny_root, tmp, vrq_cache_dir=str(cache_dir))
    (path,) = list(cache_dir.glob("vrq-*.npz"))
    return path, lambda: prepare(tiny_root, tmp, vrq_cache_dir=str(cache_dir))


def _rewrite_npz(path, change):
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    change(arrays)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


CACHES = [  # how the cache is damaged -> the error
    ("truncated", lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]), "is unreadable"),
    ("not an archive", lambda p: p.write_bytes(b"hello"), "is unreadable"),
    ("empty", lambda p: p.write_bytes(b""), "is unreadable"),
    ("no SIDs", lambda p: _rewrite_npz(p, lambda a: a.pop("sid")), "is unreadable .*sid"),
    ("meta not JSON", lambda p: _rewrite_npz(p, lambda a: a.update(meta=np.array("{oops"))), "is unreadable"),
    ("a codebook missing", lambda p: _rewrite_npz(p, lambda a: a.pop("field_weights")), "is incomplete .*field_weights"),
    ("other data's key", lambda p: _rewrite_npz(p, lambda a: a.update(meta=np.array('{"key": "x"}'))),
     "does not match this config/dataset"),
    ("duplicate SIDs", lambda p: _rewrite_npz(p, lambda a: a["sid"].__setitem__(2, a["sid"][1])), "has SIDs that are not unique"),
    ("a pickled object array", lambda p: _rewrite_npz(p, lambda a: a.update(sid=np.array([{"x": 1}], dtype=object))),
     "is unreadable .*pickle"),
]


@pytest.mark.parametrize("name, damage, message", CACHES, ids=[c[0] for c in CACHES])
def test_vrq_cache(tiny_cache, name, damage, message):
    path, load = tiny_cache
    good = path.read_bytes()
    try:
        damage(path)
        with pytest.raises(ValueError, match=f"VRQ cache {re.escape(str(path))} {message}.*delete it to refit"):
            load()
    finally:
        path.write_bytes(good)


def _checkpoint_cases(search_runs, tmp_path):
    """name -> (checkpoint path to evaluate as OneVision, expected message)."""
    own = search_runs[1]["OneVision"]
    state = torch.load(own, weights_only=True)
    cases = {}
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(own, "rb").read()[:5000])
    cases["truncated"] = (truncated, "truncated.pth: not a readable checkpoint .*truncated")
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    cases["text"] = (text, "notes.pth: .*(not a readable checkpoint|refusing|unreadable)")
    cases["missing"] = (tmp_path / "missing.pth", "checkpoint file not found: .*missing.pth")
    cases["another model"] = (search_runs[1]["VisualKNN"], "a checkpoint of model VisualKNN, but this run is OneVision")
    older = dict(state, state_dict={k: v for k, v in state["state_dict"].items() if not k.endswith("_extra_state")})
    torch.save(older, tmp_path / "older.pth")
    cases["an earlier format"] = (tmp_path / "older.pth", "OneVision checkpoint: format unrecorded")
    other_ids = dict(state, state_dict={**state["state_dict"], "codes.item_sid": state["state_dict"]["codes.item_sid"].flip(0)})
    torch.save(other_ids, tmp_path / "other-sids.pth")
    cases["other SIDs"] = (tmp_path / "other-sids.pth", "trained on other semantic IDs")

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'PWNED'}",))

    torch.save({"config": {"model": "OneVision"}, "x": Payload()}, tmp_path / "planted.pth")
    cases["a planted pickle"] = (tmp_path / "planted.pth", "planted.pth: refusing to unpickle arbitrary objects")
    return cases


CHECKPOINTS = ["truncated", "text", "missing", "another model", "an earlier format", "other SIDs", "a planted pickle"]


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_checkpoint(search_runs, tmp_path, name):
    path, message = _checkpoint_cases(search_runs, tmp_path)[name]
    root = search_runs[0]
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        run("OneVision", "tinyshop", [dataset_properties_file("mvshop-mini")], {
            "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
            "state": "WARNING", "vrq_align_steps": 100, "d_model": 32, "ffn_size": 64,
            "stages": {"pretrain": {"epochs": 2}, "sft": {"epochs": 2}, "dpo": {"epochs": 1}}}, checkpoint=str(path))
    assert not (tmp_path / "PWNED").exists()


# any model, not only OneVision: (model evaluated, its overrides, checkpoint's run, expected message)
OTHER_RUNS = [("MCA", {}, "VisualKNN", "a checkpoint of model VisualKNN, but this run is MCA"),
              ("VisualKNN", {}, "MCA", "a checkpoint of model MCA, but this run is VisualKNN"),
              ("MCA", {"embedding_size": 32}, "MCA", "its weights do not fit this MCA .*size mismatch"),
              ("MCA", {"ranker_hidden": 64}, "MCA", "its weights do not fit this MCA")]


@pytest.mark.parametrize("model, overrides, of, message", OTHER_RUNS,
                         ids=[f"{m} given {o}{' ' + str(x) if x else ''}" for m, x, o, _ in OTHER_RUNS])
def test_checkpoint_of_another_run(search_runs, tmp_path, model, overrides, of, message):
    root, runs = search_runs
    with pytest.raises(ValueError, match=message):
        run(model, "tinyshop", [dataset_properties_file("mvshop-mini")], {
            "data_path": str(root), "checkpoint_dir": str(tmp_path / "saved"), "show_progress": False,
            "state": "WARNING", **overrides}, checkpoint=str(runs[of]))

