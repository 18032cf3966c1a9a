"""A RecBole baseline on real data, end to end: SASRec learns more than popularity."""
import json
import os

from recbole_onevision.data import s3rec
from recbole_onevision.quick_start import run
from recbole_onevision.registry import dataset_properties_file

USERS = 10000  # a slice of Beauty: the first users of the file, all their items


def make_slice(src, out):
    lines = open(os.path.join(src, "Beauty.txt")).read().splitlines()[:USERS]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "BeautySlice.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")
    items = {i for line in lines for i in line.split()[1:]}
    attrs = json.load(open(os.path.join(src, "Beauty_item2attributes.json")))
    with open(os.path.join(out, "BeautySlice_item2attributes.json"), "w") as f:
        json.dump({k: v for k, v in attrs.items() if k in items}, f)
    s3rec.convert("BeautySlice", out, out)


def test_sasrec_one_epoch_beats_pop_on_a_beauty_slice(s3rec_dir, tmp_path, quiet_config):
    make_slice(s3rec_dir, str(tmp_path))
    files = [dataset_properties_file("Beauty")]  # the same leave-one-out, full-ranking protocol
    common = quiet_config(tmp_path, data_path=str(tmp_path), MAX_ITEM_LIST_LENGTH=10)
    pop = run("Pop", "BeautySlice", files, common)
    # small batches give one epoch enough updates (about 2,200) to learn transitions;
    # measured here: test R@10 0.0140 vs Pop's 0.0109 (about 3 standard errors apart)
    sasrec = run("SASRec", "BeautySlice", files,
                 {**common, "epochs": 1, "train_batch_size": 32, "learning_rate": 0.001,
                  "hidden_dropout_prob": 0.2, "attn_dropout_prob": 0.2})
    assert sasrec["test_result"]["recall@10"] > pop["test_result"]["recall@10"], (sasrec, pop)
