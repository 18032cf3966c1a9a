"""A user sample of an MVShop folder: the whole catalogue, the sampled users' rows, loadable."""
import filecmp
import os

import numpy as np
import pytest
import yaml

from recbole_onevision.preprocess.sample_users import SampleError, main, sample_users


def rows(path):
    with open(path, encoding="utf-8") as f:
        return [line.rstrip("\n").split("\t") for line in f][1:]


def test_the_sample_keeps_the_catalogue_and_only_the_sampled_users_rows(tiny_root, tmp_path):
    src = tiny_root / "mvshop-mini"
    folder = sample_users(str(src), 10, "tiny-u10", out=str(tmp_path), seed=7)
    out = lambda ext: os.path.join(folder, f"tiny-u10.{ext}")  # noqa: E731
    for ext in ("item", "view", "view.npy"):
        assert filecmp.cmp(src / f"mvshop-mini.{ext}", out(ext), shallow=False)
    users = {row[0] for row in rows(out("user"))}
    assert len(users) == 10 and users < {row[0] for row in rows(src / "mvshop-mini.user")}
    kept = [row for row in rows(src / "mvshop-mini.inter") if row[0] in users]
    assert rows(out("inter")) == kept and kept
    source_queries = [row[0] for row in rows(src / "mvshop-mini.query")]
    queries = [row[0] for row in rows(out("query"))]
    assert set(queries) == {row[2] for row in kept}
    photos = np.load(src / "mvshop-mini.query.npy")
    assert np.array_equal(np.load(out("query.npy")), photos[[source_queries.index(q) for q in queries]])
    # the same seed draws the same users; another seed others
    again = sample_users(str(src), 10, "again", out=str(tmp_path), seed=7)
    assert filecmp.cmp(out("user"), os.path.join(again, "again.user"), shallow=False)
    other = sample_users(str(src), 10, "other", out=str(tmp_path), seed=8)
    assert not filecmp.cmp(out("user"), os.path.join(other, "other.user"), shallow=False)


def test_the_sample_runs_under_its_own_name(tiny_root, tmp_path):
    from recbole_onevision.quick_start import run

    folder = sample_users(str(tiny_root / "mvshop-mini"), 20, "tiny-u20", out=str(tmp_path))
    with open(os.path.join(folder, "tiny-u20.yaml"), encoding="utf-8") as f:
        assert yaml.safe_load(f) == {"protocol": "mvshop"}  # named, not copied: protocol changes reach it
    result = run("VisualKNN", "tiny-u20", cmd_args=[f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path}",
                                                    "--show_progress=False", "--state=WARNING",
                                                    "--metrics=['NDCG','ProductHit']"])
    assert 0 < result["test_result"]["producthit@10"] <= 1


def test_bad_requests_name_what_is_wrong(tiny_root, tmp_path, capsys):
    src = str(tiny_root / "mvshop-mini")
    with pytest.raises(SampleError, match=r"--users 1000: expected 1 to 40"):
        sample_users(src, 1000, "x", out=str(tmp_path))
    with pytest.raises(SampleError, match="would overwrite its source"):
        sample_users(src, 5, "mvshop-mini")
    with pytest.raises(SystemExit) as exit_:
        main(["--src", str(tmp_path), "--users", "5", "--name", "x"])
    assert "expected an MVShop folder" in str(exit_.value.code)
    assert not (tmp_path / "x").exists()
