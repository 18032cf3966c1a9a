import json
import os

import pytest

from recbole_onevision.config import Config
from recbole_onevision.preprocess import s3rec
from recbole_onevision.preprocess.convert import main as convert_main
from recbole_onevision.registry import create_dataset


def write_source(folder, lines, attributes):
    (folder / "Mini.txt").write_text("".join(line + "\n" for line in lines))
    (folder / "Mini_item2attributes.json").write_text(json.dumps(attributes))


def test_converts_in_order_with_attributes(tmp_path):
    write_source(tmp_path, ["1 10 11 12", "2 12 10"], {"10": [1, 2], "11": [3], "12": [1]})
    stats = s3rec.convert("Mini", str(tmp_path), str(tmp_path / "out"))
    assert (stats.users, stats.items, stats.interactions) == (2, 3, 5)
    inter = (tmp_path / "out" / "Mini" / "Mini.inter").read_text().splitlines()
    assert inter[0] == "user_id:token\titem_id:token\ttimestamp:float"
    assert inter[1:4] == ["1\t10\t0", "1\t11\t1", "1\t12\t2"]
    item = (tmp_path / "out" / "Mini" / "Mini.item").read_text().splitlines()
    assert item[1] == "10\t1 2"


@pytest.mark.parametrize("lines, attributes, message", [
    (["1 10 11", "2 1x 3"], {}, r"Mini.txt, line 2: '1x' is not a numeric id"),
    (["1 10 11", "", "3 4"], {}, r"Mini.txt, line 2: empty line"),
    (["1 10 11", "1 12"], {}, r"Mini.txt, line 2: user 1 appears twice"),
    (["1 10 11", "2"], {}, r"Mini.txt, line 2: user 2 has no items"),
    (["1 10 11"], {"99": [1]}, r"Mini_item2attributes.json: item '99' never occurs"),
    (["1 10 11"], {"10": "a"}, r"Mini_item2attributes.json: item '10': expected a list"),
])
def test_malformed_input_names_file_and_line(tmp_path, lines, attributes, message):
    write_source(tmp_path, lines, attributes)
    with pytest.raises(s3rec.ConversionError, match=message):
        s3rec.convert("Mini", str(tmp_path), str(tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*.inter"))


@pytest.mark.parametrize("name, content, message", [
    ("Mini.txt", b"1 10 11\n2 12 \xff\n", r"Mini.txt, line 2: byte 0xff at column 6 is not UTF-8"),
    ("Mini_item2attributes.json", b'{"10": [1],\n "11": "\xe9"}', r"Mini_item2attributes.json, line 2: byte 0xe9"),
])
def test_bytes_that_are_not_utf8_are_named(tmp_path, name, content, message):
    write_source(tmp_path, ["1 10 11"], {"10": [1]})
    (tmp_path / name).write_bytes(content)
    with pytest.raises(s3rec.ConversionError, match=message):
        s3rec.convert("Mini", str(tmp_path), str(tmp_path / "out"))


def test_cli_reports_missing_files(tmp_path):
    with pytest.raises(SystemExit, match="sequence file not found: .*Beauty.txt"):
        convert_main(["s3rec", "--src", str(tmp_path), "--out", str(tmp_path / "o")])


def test_beauty_reproduces_the_published_protocol(s3rec_dir, tmp_path, quiet_config):
    s3rec.convert("Beauty", s3rec_dir, str(tmp_path))
    config = Config("SASRec", "Beauty", config_dict=quiet_config(tmp_path, data_path=str(tmp_path)))
    dataset = create_dataset(config)
    # RecBole adds a [PAD] id to users and items; nothing may be filtered out.
    assert (dataset.user_num - 1, dataset.item_num - 1, dataset.inter_num) == (22363, 12101, 198502)
    assert config["eval_args"]["split"] == {"LS": "valid_and_test"} and config["eval_args"]["mode"]["test"] == "full"
    train, valid, test = dataset.build()
    assert len(valid) == len(test) == 22363  # leave-one-out: one valid and one test target per user
    # the test target is each user's last item in the file
    first_user = dataset.field2id_token["user_id"].tolist().index("1")
    test_items = test.inter_feat["item_id"][test.inter_feat["user_id"] == first_user]
    assert dataset.field2id_token["item_id"][int(test_items[0])] == "5"  # line 1: "1 1 2 3 4 5"


def test_wrong_statistics_are_refused(s3rec_dir, tmp_path):
    lines = open(os.path.join(s3rec_dir, "Beauty.txt")).read().splitlines()[:-1]
    (tmp_path / "Beauty.txt").write_text("\n".join(lines) + "\n")
    items = {i for line in lines for i in line.split()[1:]}
    attrs = json.load(open(os.path.join(s3rec_dir, "Beauty_item2attributes.json")))
    (tmp_path / "Beauty_item2attributes.json").write_text(json.dumps({k: v for k, v in attrs.items() if k in items}))
    with pytest.raises(s3rec.ConversionError, match="published Beauty has"):
        s3rec.convert("Beauty", str(tmp_path), str(tmp_path / "out"))
