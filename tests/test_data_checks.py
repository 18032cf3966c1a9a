"""Atomic files RecBole would accept silently are refused before loading, naming file and line."""
import pytest

from recbole_onevision.config import Config
from recbole_onevision.registry import create_dataset


def write_shop(root, time_type="float", item_rows=(), user_rows=()):
    folder = root / "shop"
    folder.mkdir()
    lines = ["user_id:token\titem_id:token\ttimestamp:" + time_type]
    lines += [f"u{u}\ti{(u * 7 + t) % 12 + 1}\t{t}" for u in range(1, 9) for t in range(5)]
    (folder / "shop.inter").write_text("\n".join(lines) + "\n")
    items = [f"i{i}\tc{i % 3}" for i in range(1, 13)] + list(item_rows)
    (folder / "shop.item").write_text("item_id:token\tcategory:token\n" + "\n".join(items) + "\n")
    users = [f"u{u}\t{20 + u}" for u in range(1, 9)] + list(user_rows)
    (folder / "shop.user").write_text("user_id:token\tage:float\n" + "\n".join(users) + "\n")
    return Config("SASRec", "shop", None, {"data_path": str(root), "state": "WARNING", "load_col": {
        "inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "category"], "user": ["user_id", "age"]}})


def test_clean_files_load(tmp_path):
    assert create_dataset(write_shop(tmp_path)).item_num == 13


@pytest.mark.parametrize("shop, message", [
    ({"item_rows": ["i5\tc9"]}, "shop.item, line 14: item_id 'i5' is listed again \\(first on line 6\\)"),
    ({"user_rows": ["u2\t40"]}, "shop.user, line 10: user_id 'u2' is listed again \\(first on line 3\\)"),
    ({"time_type": "token"}, "shop.inter, line 1: field 'timestamp' is typed 'token'; the time-ordered split "
                             "needs 'timestamp:float'"),
])
def test_files_recbole_would_misread_are_refused(tmp_path, shop, message):
    with pytest.raises(ValueError, match=message):
        create_dataset(write_shop(tmp_path, **shop))


def test_bytes_that_are_not_utf8_are_named_with_file_line_and_column(tmp_path):
    config = write_shop(tmp_path)
    path = tmp_path / "shop" / "shop.item"
    path.write_bytes(path.read_bytes().replace(b"i3\tc0", b"i3\tc\xe9"))
    with pytest.raises(ValueError, match="shop.item, line 4: byte 0xe9 at column 5 is not UTF-8"):
        create_dataset(config)


def _append(name, line):
    def edit(folder):
        with open(folder / name, "a") as f:
            f.write(line + "\n")
    return edit


@pytest.mark.parametrize("edit, message", [
    (_append("shop.item", "i13\tc1\textra"), "shop.item, line 14: 3 fields where the header has 2 \\(item_id, category\\)"),
    (_append("shop.item", "i13"), "shop.item, line 14: 1 field where the header has 2"),
    (_append("shop.inter", "u1\ti3\t9\tx"), "shop.inter, line 42: 4 fields where the header has 3"),
    (_append("shop.inter", "u1\ti3\tsoon"), "shop.inter, line 42, column 3: field 'timestamp' is typed 'float', got 'soon'"),
    (_append("shop.user", "u9\told"), "shop.user, line 10, column 2: field 'age' is typed 'float', got 'old'"),
    (lambda folder: (folder / "shop.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"),
     "shop.inter: no interactions \\(nothing below the header\\)"),
])
def test_rows_recbole_would_shift_or_fail_on_are_named(tmp_path, edit, message):
    """A row of another width than its header (RecBole would drop or fill fields silently), a
    float that is not a number (RecBole names neither file nor line), no interactions."""
    config = write_shop(tmp_path)
    edit(tmp_path / "shop")
    with pytest.raises(ValueError, match=message):
        create_dataset(config)


def test_missing_values_and_blank_lines_still_load(tmp_path):
    config = write_shop(tmp_path, user_rows=["u9\tNA", "", "u10\t"])
    assert create_dataset(config).user_num == 11


@pytest.mark.parametrize("header, message", [
    ("user_id:token\tage:number", "shop.user, line 1, column 2: field 'age' has type 'number'"),
    ("user_id:token\tage", "shop.user, line 1, column 2: field 'age' has type ''; expected 'name:type'"),
])
def test_header_fields_need_a_recbole_type(tmp_path, header, message):
    config = write_shop(tmp_path)
    path = tmp_path / "shop" / "shop.user"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([header] + lines[1:]) + "\n")
    with pytest.raises(ValueError, match=message):
        create_dataset(config)
