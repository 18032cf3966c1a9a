"""MVShop generator: files, determinism, and the "two halves" property of its story."""
import dataclasses
import filecmp
import os

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression

from recbole_onevision.preprocess import mvshop
from recbole_onevision.retrieval import nearest_view_scores, recall_at

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


def test_run_py_generates_with_the_configured_seed(tmp_path, monkeypatch):
    """``mvshop_seed`` (mvshop.yaml, default 2025) reaches the generator; a bad one is named."""
    from recbole_onevision.quick_start import run

    class Generated(Exception):
        pass

    def record(scale, out, seed=2025, spec=None):
        raise Generated(scale, seed)

    monkeypatch.setattr(mvshop, "generate", record)
    for args, seed in (([], 2025), (["--mvshop_seed=7"], 7)):
        with pytest.raises(Generated) as generated:
            run("Pop", "mvshop-mini", cmd_args=[*args, f"--data_path={tmp_path}", "--state=WARNING",
                                                f"--checkpoint_dir={tmp_path}"])
        assert generated.value.args == ("mini", seed)
    assert not mvshop.ensure("Beauty", str(tmp_path), 7)  # not MVShop: nothing generated
    with pytest.raises(ValueError, match="config mvshop_seed: expected an integer"):
        mvshop.ensure("mvshop-mini", str(tmp_path), "seven")


def test_a_truncated_record_is_regenerated_not_trusted(tmp_path):
    folder = mvshop.generate("mini", str(tmp_path), seed=7, spec=TINY)
    record = os.path.join(folder, "mvshop-mini.json")
    item = os.path.join(folder, "mvshop-mini.item")
    with open(record) as f:
        text = f.read()
    with open(record, "w") as f:
        f.write(text[: len(text) // 2])
    with open(item, "w") as f:
        f.write("damaged")
    mvshop.generate("mini", str(tmp_path), seed=7, spec=TINY)
    with open(record) as f:
        assert f.read() == text
    with open(item) as f:
        assert f.read().startswith("item_id:token")


def test_unknown_scale_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown MVShop scale 'huge'"):
        mvshop.generate("huge", str(tmp_path))


def test_the_sweep_knobs_move_what_they_name(tmp_path):
    """Taste decides among look-alikes and the order threshold sets how many clicks become orders."""
    def sessions(**knobs):
        folder = mvshop.generate("mini", str(tmp_path / str(knobs)), seed=3, spec=dataclasses.replace(TINY, **knobs))
        inter = pd.read_csv(f"{folder}/mvshop-mini.inter", sep="\t")
        product = pd.read_csv(f"{folder}/mvshop-mini.query", sep="\t").set_index("query_id:token")["product_id:token"]
        pictured = inter["query_id:token"].map(product) == inter["item_id:token"]
        return (inter["behaviour:token"] == "order").mean(), pictured.mean()

    orders_low, _ = sessions(order_threshold=-1.0)
    orders_high, _ = sessions(order_threshold=2.0)
    assert orders_low > orders_high + 0.2
    # a sharper choice by utility moves sessions away from a uniform pick among the family
    _, flat = sessions(taste_strength=0.0)
    _, sharp = sessions(taste_strength=8.0)
    assert abs(flat - 1 / TINY.family_size) < 0.08 and abs(sharp - flat) > 0.1


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    """MVShop mini as files, plus the raw query -> item similarity (best catalogue view)."""
    folder = mvshop.generate("mini", str(tmp_path_factory.mktemp("mvshop")))
    base = f"{folder}/mvshop-mini"
    read = lambda ext: pd.read_csv(f"{base}.{ext}", sep="\t")  # noqa: E731
    items, inter, queries = read("item"), read("inter"), read("query")
    index = {token: i for i, token in enumerate(items["item_id:token"])}
    view_item = read("view")["item_id:token"].map(index).to_numpy()
    sim = nearest_view_scores(np.load(f"{base}.query.npy"), np.load(f"{base}.view.npy"), view_item, len(items))
    return {
        "items": items, "sim": sim,
        "user": pd.factorize(inter["user_id:token"])[0],
        "pictured": queries["product_id:token"].map(index).to_numpy(),
        "clicked": inter["item_id:token"].map(index).to_numpy(),
    }


def hit_at(scores, targets, k):
    return recall_at(scores, targets, ks=(k,))[f"recall@{k}"]


def test_query_shows_what_was_photographed_not_what_is_clicked(mini):
    pictured = hit_at(mini["sim"], mini["pictured"], 1)
    clicked = hit_at(mini["sim"], mini["clicked"], 1)
    assert 0.3 < pictured < 0.9  # the photo finds the product, but views differ: room for VRQ
    assert clicked < 0.6 * pictured  # which look-alike this user takes is not in the photo
    assert (mini["pictured"] != mini["clicked"]).mean() > 0.3


def taste_features(mini, candidates_per_query=10):
    """Per session after a user's 3rd: the query's top candidates, each with (query cosine,
    share of the user's earlier clicks of that brand, distance to the user's usual price
    level within a leaf); the label marks the clicked item."""
    items, sim, clicked = mini["items"], mini["sim"], mini["clicked"]
    brand = pd.factorize(items["brand:token"])[0]
    leaf = items["category:token_seq"].str.split().str[-1]
    log_price = np.log(items["price:float"].to_numpy())
    rel_price = log_price - pd.Series(log_price).groupby(leaf).transform("median").to_numpy()
    rows, labels, groups, history_scores = [], [], [], []
    for user in np.unique(mini["user"]):
        sessions = np.flatnonzero(mini["user"] == user)
        for j in range(3, len(sessions)):
            s, past = sessions[j], clicked[sessions[:j]]
            brand_share = np.bincount(brand[past], minlength=brand.max() + 1)[brand] / j
            history_scores.append((s, brand_share - np.abs(rel_price - rel_price[past].mean())))
            top = np.argsort(-sim[s])[:candidates_per_query]
            rows.append(np.stack([sim[s, top], brand_share[top], np.abs(rel_price[top] - rel_price[past].mean())], 1))
            labels.append(top == clicked[s])
            groups.append(user)
    return np.array(rows), np.array(labels), np.array(groups), history_scores


def test_history_alone_cannot_say_what_was_photographed(mini):
    *_, history_scores = taste_features(mini)
    sessions = np.array([s for s, _ in history_scores])
    scores = np.stack([h for _, h in history_scores])
    by_history = hit_at(scores, mini["pictured"][sessions], 10)
    by_query = hit_at(mini["sim"][sessions], mini["pictured"][sessions], 10)
    assert by_history < 0.25 * by_query


def test_taste_helps_only_together_with_the_query(mini):
    """A logistic taste model fitted on half the users re-ranks the query's top 10 for the
    other half: it must pick the clicked item more often than the query alone."""
    x, y, users, _ = taste_features(mini)
    train = users % 2 == 0
    model = LogisticRegression(max_iter=1000).fit(x[train].reshape(-1, 3), y[train].reshape(-1))
    test_x, test_y = x[~train], y[~train]
    reranked = model.decision_function(test_x.reshape(-1, 3)).reshape(test_y.shape)
    pick = lambda scores: float(test_y[np.arange(len(test_y)), scores.argmax(1)].mean())  # noqa: E731
    assert pick(reranked) > pick(test_x[:, :, 0]) + 0.04


def test_run_py_default_generates_mvshop_mini_and_trains(tmp_path):
    from recbole_onevision.cli import main as run_main

    result = run_main(["--stages={'sft': {'epochs': 1}}", "--vrq_align_steps=50",  # one stage: kept short
                       f"--data_path={tmp_path}", f"--checkpoint_dir={tmp_path / 'saved'}",
                       "--show_progress=False", "--state=WARNING"])
    assert result["dataset"] == "mvshop-mini" and result["model"] == "OneVision"
    assert (tmp_path / "mvshop-mini" / "mvshop-mini.view.npy").is_file()
    assert result["test_result"]["hit@10"] > 10 / 3000  # above a random ranking of 3,000 items
