"""Image-folder converter: layout errors, and a real run on a few ETH-80 photographs."""
import os
import shutil

import numpy as np
import pytest

from recbole_onevision.preprocess import image_folder
from recbole_onevision.retrieval import load, nearest_view_scores, recall_at

ETH80 = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "eth80")


def touch(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "wb").close()


@pytest.mark.parametrize("files, message", [
    (["cat/obj/a.jpg", "cat/loose.jpg"], r"cat/loose.jpg: expected an object folder"),
    (["cat/obj/a.jpg", "cat/obj/notes.txt"], r"notes.txt: not an image"),
    (["top.jpg"], r"top.jpg: expected a category folder"),
    (["a/obj/x.jpg", "b/obj/y.jpg"], r"object folder name 'obj' appears under 'a' and 'b'"),
])
def test_bad_layouts_name_the_path(tmp_path, files, message):
    for f in files:
        touch(str(tmp_path / "src" / f))
    with pytest.raises(image_folder.ImageFolderError, match=message):
        image_folder.scan(str(tmp_path / "src"))


def test_every_object_keeps_a_catalogue_view(tmp_path):
    for f in ["cat/obj/q-1.jpg", "cat/obj/q-2.jpg", "cat/other/v-1.jpg"]:
        touch(str(tmp_path / f))
    records = image_folder.scan(str(tmp_path))
    with pytest.raises(image_folder.ImageFolderError, match="object 'obj': every image was chosen as a query"):
        image_folder.choose_queries(records, "q-", 0.25, 0)
    share = image_folder.choose_queries(records, None, 0.5, 0)
    assert share.tolist() == image_folder.choose_queries(records, None, 0.5, 0).tolist()  # seeded
    assert not share[2]  # a single-image object keeps it as its catalogue view


class FakeEncoder:
    """Stands in for EfficientNet (needs no image packages): one distinct unit vector per image."""

    def embed_cached(self, paths, cache_dir, show_progress):
        return np.eye(len(paths), dtype=np.float32)

    def describe(self):
        return {"encoder": "fake"}


def test_same_file_names_in_two_objects_get_distinct_ids_and_numbers_order_naturally(tmp_path):
    """Product folders of 0.jpg, 1.jpg, ...: ids carry the object; view 10 comes after view 2."""
    for obj in ["shoe", "boot"]:
        for view in [0, 1, 2, 10]:
            touch(str(tmp_path / "src" / "footwear" / obj / f"{view}.jpg"))
    folder = image_folder.convert(str(tmp_path / "src"), str(tmp_path / "out"), "shop", query_pattern="^(2|10)$",
                                  encoder=FakeEncoder(), show_progress=False)
    inter = [line.rstrip("\n").split("\t") for line in open(f"{folder}/shop.inter")][1:]
    assert [(r[2], r[3]) for r in inter] == [("boot/2", "0"), ("boot/10", "1"), ("shoe/2", "0"), ("shoe/10", "1")]
    assert len({line.split("\t")[0] for line in open(f"{folder}/shop.view")}) == 5  # header + 4 distinct views


@pytest.mark.parametrize("files, pattern, message", [
    ([b"cat/obj/\xe9.jpg", b"cat/obj/b.jpg"], None, r"cat/obj/\\xe9.jpg: the name is not UTF-8 \(byte 0xe9\)"),
    ([b"cat/ob\xe9/a.jpg", b"cat/ob\xe9/b.jpg"], None, r"cat/ob\\xe9: the name is not UTF-8"),
    (["cat/o\tbj/a.jpg", "cat/o\tbj/b.jpg"], None, r"o\\tbj': the name holds a tab or line break"),
    (["cat/obj/a\nx.jpg", "cat/obj/b.jpg"], None, r"a\\nx.jpg': the name holds a tab or line break"),
    (["cat/obj/a.jpg", "cat/obj/b.jpg"], "zzz", r"--query-pattern 'zzz' matches none of the 2 images"),
    (["cat/obj/a.jpg", "cat/other/b.jpg"], None, r"query_share 0.25 picks none .* of the 2 images"),
])
def test_names_the_files_cannot_hold_and_no_queries_are_refused_before_embedding(tmp_path, files, pattern, message):
    """A name that is not UTF-8 or holds a tab or line break (it would shift the written files'
    columns), or no query photo at all (no interactions): refused naming the path or the rule,
    before any image is embedded."""
    class Refuses(FakeEncoder):
        def embed_cached(self, paths, cache_dir, show_progress):
            raise AssertionError("embedded before the check")

    for f in files:
        path = os.path.join(os.fsencode(tmp_path / "src"), f) if isinstance(f, bytes) else str(tmp_path / "src" / f)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "wb").close()
    with pytest.raises(image_folder.ImageFolderError, match=message):
        image_folder.convert(str(tmp_path / "src"), str(tmp_path / "out"), "shop", query_pattern=pattern,
                             encoder=Refuses(), show_progress=False)
    assert not (tmp_path / "out").exists()


def test_a_category_with_spaces_stays_one_token(tmp_path):
    for view in range(3):
        touch(str(tmp_path / "src" / "running shoes" / "obj" / f"{view}.jpg"))
    folder = image_folder.convert(str(tmp_path / "src"), str(tmp_path / "out"), "shop", query_pattern="^0$",
                                  encoder=FakeEncoder(), show_progress=False)
    assert open(f"{folder}/shop.item").read().splitlines()[1] == "obj\trunning_shoes"


def test_two_images_one_name_in_one_folder_are_refused(tmp_path):
    touch(str(tmp_path / "cat" / "obj" / "a.jpg"))
    touch(str(tmp_path / "cat" / "obj" / "a.png"))
    with pytest.raises(image_folder.ImageFolderError, match="obj: a.jpg and a.png have the same name without their extension"):
        image_folder.scan(str(tmp_path))


def convert_two_objects(tmp_path):
    for obj in ["o1", "o2"]:
        for view in range(4):
            touch(str(tmp_path / "src" / "cat" / obj / f"{view}.jpg"))
    return image_folder.convert(str(tmp_path / "src"), str(tmp_path / "out"), "myshop", query_pattern="^[01]$",
                                encoder=FakeEncoder(), show_progress=False)


def test_a_converted_folder_runs_under_its_own_name_without_config_files(tmp_path):
    """The converter names the protocol beside the data; the config reads it for that name."""
    from recbole_onevision.config import Config

    convert_two_objects(tmp_path)
    config = Config("VisualKNN", "myshop", config_dict={"data_path": str(tmp_path / "out"), "state": "WARNING"})
    assert config["empty_history_rows"] is True and config["eval_args"]["split"] == {"RS": [9, 2, 2]}
    assert "protocol" not in config.final_config_dict
    other = Config("VisualKNN", "myshop", config_dict={"data_path": str(tmp_path / "elsewhere"), "state": "WARNING"})
    assert not other["empty_history_rows"]


def test_a_change_to_the_protocol_reaches_a_folder_converted_before(tmp_path, monkeypatch):
    """The folder names the protocol instead of copying it; its own keys still override it."""
    from recbole_onevision import registry
    from recbole_onevision.config import Config

    folder = convert_two_objects(tmp_path)
    properties = tmp_path / "properties"
    shutil.copytree(registry.PROPERTIES_DIR, properties)
    protocol = properties / "dataset" / "image-folder.yaml"
    protocol.write_text(protocol.read_text().replace("valid_metric: NDCG@10", "valid_metric: Hit@5"))
    monkeypatch.setattr(registry, "PROPERTIES_DIR", str(properties))
    config = Config("VisualKNN", "myshop", config_dict={"data_path": str(tmp_path / "out"), "state": "WARNING"})
    assert config["valid_metric"] == "Hit@5"
    with open(f"{folder}/myshop.yaml", "a") as f:
        f.write("topk: [1, 5]\n")
    config = Config("VisualKNN", "myshop", config_dict={"data_path": str(tmp_path / "out"), "state": "WARNING"})
    assert config["topk"] == [1, 5] and config["valid_metric"] == "Hit@5"


def test_an_unknown_protocol_or_an_old_copy_is_named(tmp_path, caplog):
    from recbole_onevision.config import Config

    folder = convert_two_objects(tmp_path)
    common = {"data_path": str(tmp_path / "out"), "state": "WARNING"}
    for name in ("image-folders", "../dataset/image-folder", None):
        with open(f"{folder}/myshop.yaml", "w") as f:
            f.write(f"protocol: {name if name else '~'}\n")
        with pytest.raises(ValueError, match=rf"myshop.yaml: protocol {name!r}: expected one of .*image-folder"):
            Config("VisualKNN", "myshop", config_dict=common)
    with open(f"{folder}/myshop.yaml", "w") as f:  # as converters wrote it before
        f.write("# Written by the image-folder converter: this dataset's protocol (a copy of "
                "recbole_onevision/properties/dataset/image-folder.yaml).\nvalid_metric: Recall@5\ntopk: [1, 5]\n")
    config = Config("VisualKNN", "myshop", config_dict=common)
    assert config["valid_metric"] == "Recall@5"
    assert "myshop.yaml is an old converter's copy of a protocol" in caplog.text


def test_view_pattern_keeps_only_matching_views_and_says_what_it_left_out(tmp_path, caplog):
    # ETH-80-like names <object>-<angle>-<azimuth>: queries from above, views from the side
    for obj in ["obj1", "obj2"]:
        for angle_azimuth in ["000-000", "022-090", "066-027", "090-000", "090-090", "090-022"]:
            touch(str(tmp_path / "src" / "cat" / obj / f"{obj}-{angle_azimuth}.jpg"))
    caplog.set_level("INFO", logger=image_folder.__name__)
    folder = image_folder.convert(str(tmp_path / "src"), str(tmp_path / "out"), "t", query_pattern="-0(00|22)-",
                                  view_pattern="-090-(000|090)", encoder=FakeEncoder(), show_progress=False)
    views = [line.split("\t")[0] for line in open(f"{folder}/t.view")][1:]
    assert views == ["obj1/obj1-090-000", "obj1/obj1-090-090", "obj2/obj2-090-000", "obj2/obj2-090-090"]
    # 4 queries + 4 views embedded: the left-out images are not
    assert len(open(f"{folder}/t.query").readlines()) - 1 == 4 and np.load(f"{folder}/t.view.npy").shape == (4, 8)
    assert "left out 4 images" in caplog.text  # 066-027 and 090-022 of each object
    # without the option every non-query image is a view, as before, and nothing is said
    caplog.clear()
    folder = image_folder.convert(str(tmp_path / "src"), str(tmp_path / "all"), "t", query_pattern="-0(00|22)-",
                                  encoder=FakeEncoder(), show_progress=False)
    assert len(open(f"{folder}/t.view").readlines()) - 1 == 8 and "left out" not in caplog.text


@pytest.mark.parametrize("view_pattern, message", [
    ("-090-000", r"--view-pattern '-090-000' matches none of the non-query images of object 'obj2' \(.*cat/obj2\)"),
    ("-000-", r"--view-pattern '-000-' matches none .* object 'obj1'"),  # queries are never views
    ("-090-(000", r"--view-pattern '-090-\(000': invalid regular expression"),
])
def test_bad_view_pattern_names_the_option_and_object(tmp_path, view_pattern, message):
    for f in ["obj1-000-000.jpg", "obj1-090-000.jpg", "obj2-000-000.jpg", "obj2-090-090.jpg"]:
        touch(str(tmp_path / "cat" / f.split("-")[0] / f))
    records = image_folder.scan(str(tmp_path))
    is_query = image_folder.choose_queries(records, "-000-", 0.25, 0)
    with pytest.raises(image_folder.ImageFolderError, match=message):
        image_folder.choose_views(records, is_query, view_pattern)


def test_bad_pattern_is_a_clear_cli_error(tmp_path):
    from recbole_onevision.preprocess import convert

    touch(str(tmp_path / "cat" / "obj" / "obj-000-000.jpg"))
    for option in ["--query-pattern", "--view-pattern"]:
        with pytest.raises(SystemExit, match=f"convert image-folder: error: {option} '\\[': invalid regular"):
            convert.main(["image-folder", "--src", str(tmp_path), "--out", str(tmp_path / "out"), option, "["])


@pytest.fixture
def eth80_sample(tmp_path):
    if not os.path.isdir(ETH80):
        pytest.skip(f"ETH-80 photos not found at {ETH80} (../shared/data is absent on this machine)")
    pytest.importorskip("efficientnet_lite_pytorch", reason='image packages not installed: pip install -e ".[images]"')
    for category, obj in [("apple", "apple1"), ("apple", "apple2"), ("car", "car1"), ("cup", "cup1")]:
        src = os.path.join(ETH80, category, obj)
        dst = tmp_path / "eth" / category / obj
        dst.mkdir(parents=True)
        for name in sorted(os.listdir(src))[:8]:  # elevations 000, 022 (4 azimuths), 035
            shutil.copy(os.path.join(src, name), dst / name)
    return tmp_path


def test_real_photos_convert_and_nearest_view_finds_the_object(eth80_sample):
    out = eth80_sample / "out"
    folder = image_folder.convert(str(eth80_sample / "eth"), str(out), "eth", query_pattern="-022-",
                                  show_progress=False)
    queries, targets, views, view_item, n_items = load(folder, "eth")
    assert (len(queries), len(views), n_items) == (16, 16, 4) and views.shape[1] == 1280
    np.testing.assert_allclose(np.linalg.norm(views, axis=1), 1, rtol=1e-5)
    result = recall_at(nearest_view_scores(queries, views, view_item, n_items), targets, ks=(1,))
    assert result["recall@1"] >= 0.75  # 4 objects: chance is 0.25
    # deterministic: a fresh encode (no cache) gives the same embeddings
    again = image_folder.convert(str(eth80_sample / "eth"), str(eth80_sample / "out2"), "eth",
                                 query_pattern="-022-", show_progress=False)
    np.testing.assert_allclose(np.load(f"{again}/eth.view.npy"), views, atol=1e-6)
    rows = [line.rstrip("\n").split("\t") for line in open(f"{folder}/eth.inter")]
    assert rows[0] == ["user_id:token", "item_id:token", "query_id:token", "timestamp:float"]
    # timestamp = rank among the object's query photos: a time-ordered split holds out viewpoints
    assert [(r[0], r[3]) for r in rows[1:5]] == [
        ("apple1/apple1-022-000", "0"), ("apple1/apple1-022-090", "1"), ("apple1/apple1-022-180", "2"),
        ("apple1/apple1-022-270", "3")]
    assert {r[3] for r in rows[1:]} == {"0", "1", "2", "3"}


def test_converted_photos_load_as_anonymous_sessions(eth80_sample):
    """Queries without users: each is its own one-off user, so no history is shared."""
    from recbole_onevision.config import Config
    from recbole_onevision.registry import create_dataset

    out = eth80_sample / "out"
    image_folder.convert(str(eth80_sample / "eth"), str(out), "eth", query_pattern="-022-", show_progress=False)
    config = Config("Pop", "eth", config_dict={
        "data_path": str(out), "dataset_class": "MultiViewDataset", "state": "WARNING",
        "load_col": {"inter": ["user_id", "item_id", "query_id", "timestamp"], "item": ["item_id", "category"]},
        "checkpoint_dir": str(eth80_sample / "saved")})
    dataset = create_dataset(config)
    assert dataset.user_num - 1 == dataset.inter_num == 16
    assert dataset.query_product[dataset.inter_feat["query_id"]].tolist() == dataset.inter_feat["item_id"].tolist()
