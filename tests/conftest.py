import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.path.join(REPO, "..", "shared", "data")
S3REC = os.path.join(SHARED_DATA, "amazon-s3rec")


@pytest.fixture(scope="session")
def s3rec_dir():
    if not os.path.isfile(os.path.join(S3REC, "Beauty.txt")):
        pytest.skip(f"real Amazon data not found at {S3REC} (../shared/data is absent on this machine)")
    return S3REC


@pytest.fixture(scope="session")
def quiet_config():
    """Config keys that keep test runs small and their files inside a temp folder."""
    def make(tmp_path, **extra):
        return {"show_progress": False, "checkpoint_dir": str(tmp_path / "saved"),
                "state": "WARNING", **extra}
    return make


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory):
    """A tiny generated multi-view shop (300 items, 40 users) as dataset mvshop-mini."""
    from onevision_support import TINY
    from recbole_onevision.preprocess import mvshop

    root = tmp_path_factory.mktemp("tiny")
    mvshop.generate("mini", str(root), spec=TINY)
    return root


@pytest.fixture(scope="session")
def search_runs(tiny_root, tmp_path_factory):
    """(root, {model: checkpoint}): OneVision, MCA and VisualKNN trained briefly on the tiny shop."""
    from search_support import train_runs

    root = tmp_path_factory.mktemp("search")
    return root, train_runs(tiny_root, root)
