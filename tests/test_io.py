"""Atomic writes: a killed writer's temporary is removed by the next writer, a live one's kept;
a generator killed mid-run is redone exactly on the next run."""
import filecmp
import os
import subprocess
import sys
import time

from recbole_onevision.io import atomic_write_text, remove_orphans
from recbole_onevision.preprocess import mvshop


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_the_next_writer_removes_a_killed_writers_temporary_and_keeps_a_live_one(tmp_path):
    orphan = tmp_path / f".out.txt.{dead_pid()}.abc123.tmp"
    live = tmp_path / f".out.txt.{os.getpid()}.def456.tmp"
    other = tmp_path / f".other.txt.{dead_pid()}.abc123.tmp"  # another file's: not ours to judge
    for path in (orphan, live, other):
        path.write_text("partial")
    atomic_write_text(str(tmp_path / "out.txt"), "done")
    assert (tmp_path / "out.txt").read_text() == "done"
    assert not orphan.exists() and live.exists() and other.exists()
    assert remove_orphans(str(tmp_path / "other.txt")) == [other.name]


def test_a_new_run_removes_checkpoint_temporaries_of_killed_runs(tmp_path, quiet_config):
    """Checkpoint names are unique per run, so no later writer of the same name would clean up:
    every trainer clears dead writers' checkpoint temporaries from its folder when it starts."""
    from recbole.model.general_recommender import Pop
    from recbole_onevision.config import Config
    from recbole_onevision.registry import create_dataset, get_trainer

    saved = tmp_path / "saved"
    saved.mkdir()
    orphan = saved / f".OneVision-x-Dec-06-2026_10-00-00-1.pth.{dead_pid()}.abc123.tmp"
    live = saved / f".OneVision-y-Dec-06-2026_10-00-00-2.pth.{os.getpid()}.def456.tmp"
    other = saved / f".notes.txt.{dead_pid()}.abc123.tmp"  # not a checkpoint's
    for path in (orphan, live, other):
        path.write_bytes(b"partial")
    config = Config("Pop", "ml-100k", None, quiet_config(tmp_path, epochs=1))
    dataset = create_dataset(config)
    get_trainer(config["MODEL_TYPE"], "Pop")(config, Pop(config, dataset))
    assert not orphan.exists() and live.exists() and other.exists()


def test_a_generator_killed_mid_run_is_redone_exactly(tmp_path):
    spec = mvshop.SCALES["mini"]
    child = subprocess.Popen([sys.executable, "-m", "recbole_onevision.preprocess.mvshop", "--out",
                              str(tmp_path / "killed")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    folder = tmp_path / "killed" / "mvshop-mini"
    deadline = time.time() + 60
    while time.time() < deadline and not (folder.exists() and any(folder.iterdir())):
        time.sleep(0.05)  # kill once it has started writing
    child.kill()
    child.wait()
    if (folder / "mvshop-mini.json").exists():  # a loaded machine let it finish first: leave what a kill leaves
        (folder / "mvshop-mini.json").unlink()
        (folder / "mvshop-mini.inter").write_text("user_id:token\n")
        (folder / f".mvshop-mini.item.{dead_pid()}.abc123.tmp").write_text("partial")
    assert not (folder / "mvshop-mini.json").exists()  # unfinished: its record is written last
    again = mvshop.generate("mini", str(tmp_path / "killed"), spec=spec)
    clean = mvshop.generate("mini", str(tmp_path / "clean"), spec=spec)
    names = sorted(os.listdir(clean))
    assert sorted(os.listdir(again)) == names  # no temporary left behind
    match, mismatch, errors = filecmp.cmpfiles(again, clean, names, shallow=False)
    assert not mismatch and not errors
