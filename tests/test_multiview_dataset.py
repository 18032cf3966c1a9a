"""MultiView datasets: load MVShop's query photos and views by internal ids; refuse bad files."""
import shutil

import numpy as np
import pytest

from recbole_onevision.config import Config
from recbole_onevision.data.multiview import MultiViewDataError
from recbole_onevision.preprocess import mvshop
from recbole_onevision.registry import create_dataset

TINY = mvshop.MVShopSpec(n_items=120, n_users=20, sessions_per_user=6, branching=(2, 2, 2), n_brands=8)


@pytest.fixture(scope="module")
def tiny_source(tmp_path_factory):
    return mvshop.generate("mini", str(tmp_path_factory.mktemp("src")), seed=3, spec=TINY)


@pytest.fixture
def tiny(tiny_source, tmp_path):
    """A private copy of tiny MVShop to corrupt, and a loader for it."""
    folder = tmp_path / "mvshop-mini"
    shutil.copytree(tiny_source, folder)

    def load(model="SASRec", dataset_class="MultiViewSequentialDataset", **extra):
        config = Config(model, "mvshop-mini", config_dict={
            "data_path": str(tmp_path), "dataset_class": dataset_class, "state": "WARNING",
            "checkpoint_dir": str(tmp_path / "saved"), **extra})
        return create_dataset(config)

    return folder, load


def test_query_photos_and_views_are_indexed_by_internal_ids(tiny):
    folder, load = tiny
    dataset = load()
    assert type(dataset).__name__ == "MultiViewSequentialDataset"
    views = np.load(folder / "mvshop-mini.view.npy")
    queries = np.load(folder / "mvshop-mini.query.npy")
    assert dataset.view_embedding.shape == views.shape and len(dataset.view_item) == len(views)
    # every interaction's query id looks up exactly the photo row of that query in the files
    query_rows = {line.split("\t")[0]: k for k, line in
                  enumerate((folder / "mvshop-mini.query").read_text().splitlines()[1:])}
    products = {line.split("\t")[0]: line.split("\t")[1] for line in
                (folder / "mvshop-mini.query").read_text().splitlines()[1:]}
    tokens = dataset.field2id_token["query_id"]
    for qid in dataset.inter_feat["query_id"][:50].tolist():
        np.testing.assert_array_equal(dataset.query_embedding[qid].numpy(), queries[query_rows[tokens[qid]]])
        pictured = dataset.field2id_token["item_id"][int(dataset.query_product[qid])]
        assert pictured == products[tokens[qid]]
    # per interaction: the behaviour, and in the sequential splits the history of behaviours too
    assert set(dataset.field2id_token["behaviour"][1:]) == {"click", "order"}
    train = dataset.build()[0]
    assert {"item_id_list", "behaviour_list", "query_id_list"} <= set(train.inter_feat.columns)
    item_of_first_view = dataset.field2id_token["item_id"][int(dataset.view_item[0])]
    assert item_of_first_view == (folder / "mvshop-mini.view").read_text().splitlines()[1].split("\t")[1]


def test_general_models_get_the_plain_variant(tiny):
    _, load = tiny
    dataset = load(model="Pop", dataset_class="MultiViewDataset")
    assert type(dataset).__name__ == "MultiViewDataset" and dataset.query_embedding is not None


def corrupt_npy(path, change):
    matrix = np.load(path)
    np.save(path, change(matrix))


def append_line(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")


@pytest.mark.parametrize("corrupt, message", [
    (lambda f: corrupt_npy(f / "mvshop-mini.query.npy", lambda m: m[:, :32]),
     r"mvshop-mini.query.npy: embeddings are 32-d, expected 64-d"),
    (lambda f: corrupt_npy(f / "mvshop-mini.view.npy", lambda m: np.where(np.arange(len(m))[:, None] == 5, np.nan, m)),
     r"mvshop-mini.view.npy, row 5 \(view_id 'v5'\): NaN"),
    (lambda f: corrupt_npy(f / "mvshop-mini.view.npy", lambda m: m[:-1]),
     r"mvshop-mini.view.npy: expected a \(360, width\) matrix"),
    (lambda f: append_line(f / "mvshop-mini.view", "v0\ti1"),
     r"mvshop-mini.view, line 362: duplicate view_id 'v0'"),
    (lambda f: (f / "mvshop-mini.view").write_text(
        (f / "mvshop-mini.view").read_text().replace("v7\ti2\n", "v7\tno-such-item\n")),
     r"mvshop-mini.view, line 9: unknown item 'no-such-item'"),
    (lambda f: (f / "mvshop-mini.query").write_text(
        (f / "mvshop-mini.query").read_text().replace("query_id:token", "qid:token")),
     r"mvshop-mini.query, line 1: expected a column 'query_id:token'"),
    (lambda f: (append_line(f / "mvshop-mini.query", "q-extra\ti1"),
                corrupt_npy(f / "mvshop-mini.query.npy", lambda m: np.vstack([m, m[:1]]))),
     r"query 'q-extra' has no interaction"),
    (lambda f: (f / "mvshop-mini.view.npy").unlink(), r"multi-view file not found: .*mvshop-mini.view.npy"),
])
def test_bad_files_are_refused_with_file_and_line(tiny, corrupt, message):
    folder, load = tiny
    corrupt(folder)
    with pytest.raises((MultiViewDataError, FileNotFoundError), match=message):
        load()


def test_float_item_fields_become_levels_within_their_leaf_category(tiny):
    _, load = tiny
    assert load().num("price_level") == 9  # MVShop's default: eight levels
    assert "price_level" not in load(item_float_levels=0).item_feat.columns
    dataset = load(item_float_levels=4)
    assert dataset.derived_item_fields == ["price_level"] and dataset.num("price_level") == 5
    feat = dataset.item_feat
    level, price = feat["price_level"].to_numpy(), feat["price"].to_numpy()
    leaf = np.array([" ".join(map(str, path)) for path in feat["category"]])
    assert level[0] == 0 and set(level[1:]) <= {1, 2, 3, 4}
    cheapest, dearest = [], []
    for path in set(leaf[1:]):
        rows = np.flatnonzero(leaf == path)
        rows = rows[rows > 0]
        order = rows[np.argsort(price[rows], kind="stable")]
        assert np.all(np.diff(level[order]) >= 0)  # dearer within the leaf: never a lower level
        if len(rows) >= 4:
            assert level[order[0]] == 1 and level[order[-1]] == 4
        cheapest.append(price[order[0]])
        dearest.append(price[order[-1]])
    # relative to the leaf, not the catalogue: some leaf's cheapest item costs more than another's dearest
    assert max(cheapest) > min(dearest)


@pytest.mark.parametrize("extra, message", [
    ({"item_float_levels": -1}, "item_float_levels: expected an integer >= 0"),
    ({"item_float_levels": 4, "load_col": {"inter": ["user_id", "item_id", "query_id", "timestamp", "behaviour"],
                                           "item": ["item_id", "brand", "price"]}},
     "'category' \\(leaf_category_field\\), which is not loaded"),
])
def test_bad_float_level_settings_are_refused(tiny, extra, message):
    _, load = tiny
    with pytest.raises(ValueError, match=message):
        load(**extra)
