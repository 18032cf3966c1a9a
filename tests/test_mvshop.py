"""MVShop generator (draft): files, determinism. The two-halves property tests come with issue 3."""
import filecmp

import pytest

from recbole_onevision.data import mvshop

TINY = mvshop.MVShopSpec(n_items=300, n_users=40, sessions_per_user=6, branching=(3, 2, 2), n_brands=12)


def test_same_seed_same_files_and_cache_reuse(tmp_path):
    a = mvshop.generate("mini", str(tmp_path / "a"), seed=7, spec=TINY)
    b = mvshop.generate("mini", str(tmp_path / "b"), seed=7, spec=TINY)
    names = sorted(p.name for p in (tmp_path / "a" / "mvshop-mini").iterdir())
    assert names == sorted(f"mvshop-mini.{e}" for e in
                           ("item", "user", "inter", "query", "query.npy", "view", "view.npy", "json"))
    match, mismatch, errors = filecmp.cmpfiles(a, b, names, shallow=False)
    assert not mismatch and not errors
    inter = (tmp_path / "a" / "mvshop-mini" / "mvshop-mini.inter").stat().st_mtime_ns
    mvshop.generate("mini", str(tmp_path / "a"), seed=7, spec=TINY)  # same spec and seed: reused
    assert (tmp_path / "a" / "mvshop-mini" / "mvshop-mini.inter").stat().st_mtime_ns == inter
    c = mvshop.generate("mini", str(tmp_path / "c"), seed=8, spec=TINY)
    assert not filecmp.cmp(f"{a}/mvshop-mini.inter", f"{c}/mvshop-mini.inter", shallow=False)


def test_unknown_scale_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown MVShop scale 'huge'"):
        mvshop.generate("huge", str(tmp_path))
