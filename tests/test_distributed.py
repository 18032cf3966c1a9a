"""Training past one process (recbole_onevision/distributed.py): run.py's --nproc on gloo CPU
processes, against the same training in one process.

Why the runs can be compared closely: RecBole divides each step's batch between the processes
(``train_batch_size // world_size`` rows each, from a ``DistributedSampler``) and DDP averages
their gradients, so with equal halves a step's gradient is the one process's mean over the same
rows. With shuffling off, rank r takes rows r, r + 2, ..., so the two halves of step k are
exactly the one process's batch k (224 training rows in batches of 64: every half is equal).
With dropout off and per-row means (no order weights; no visual prior term in SFT, whose
catalogue views are drawn at random in each process), both then train the same weights up to
the order of float sums: compared at rtol 1e-4 / atol 1e-5 (measured: 1.3e-6 apart), and the
metrics at 1.5e-4 (RecBole rounds them to 4 places). Pretraining is all random views, so it runs
in two processes and SFT and DPO start from its checkpoint in one. With shuffling on, the two
processes see the rows in another order: docs/results/scale.md compares such runs.
"""
import os

import pytest
import torch

from onevision_support import tinyshop
from recbole_onevision.compat import load_checkpoint
from recbole_onevision.quick_start import run

STAGES = "--stages={'pretrain': {'epochs': 1}, 'sft': {'epochs': 1}, 'dpo': {'epochs': 1}}"
SAME_STEPS = ["--shuffle=False", "--train_batch_size=64"]
ONEVISION = [*SAME_STEPS, STAGES, "--d_model=32", "--ffn_size=64", "--dropout=0.0", "--encoder_dropout=0.0",
             "--loss_weights={'visual_prior': 0.0, 'order': 1.0}"]
SASREC = [*SAME_STEPS, "--epochs=1", "--hidden_size=32", "--inner_size=64", "--hidden_dropout_prob=0.0",
          "--attn_dropout_prob=0.0"]


@pytest.fixture(scope="module")
def shop(tiny_root, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("distributed")
    protocol, common = tinyshop(tiny_root, tmp)
    return tmp, protocol, [a for a in common if not a.startswith("--checkpoint_dir=")]


def train(shop, model, folder, *args):
    tmp, protocol, common = shop
    threads = torch.get_num_threads()
    # one thread, as each of two processes has (they split the cores): two threads on two cores
    # that other work also uses wait on each other (measured: some steps 10x slower)
    torch.set_num_threads(1)
    try:
        return run(model, "tinyshop", protocol, cmd_args=[*common, f"--checkpoint_dir={tmp / folder}", *args])
    finally:
        torch.set_num_threads(threads)


def assert_same_weights(file_a, file_b):
    a, b = load_checkpoint(file_a)["state_dict"], load_checkpoint(file_b)["state_dict"]
    assert a.keys() == b.keys()
    for name, value in a.items():
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            assert value == b[name] if not isinstance(value, torch.Tensor) else torch.equal(value, b[name]), name
            continue
        other = b[name]
        if name.endswith("in_proj_bias"):
            # attention key biases: no output depends on them (softmax ignores a shift shared by
            # all keys), so their gradient is float noise, which Adam scales up to steps of the
            # learning rate's order; measured up to 3e-5 apart, everything else 1.3e-6
            d = len(value) // 3
            torch.testing.assert_close(value[d:2 * d], other[d:2 * d], rtol=0, atol=1e-3, msg=name)
            value, other = torch.cat([value[:d], value[2 * d:]]), torch.cat([other[:d], other[2 * d:]])
        torch.testing.assert_close(value, other, rtol=1e-4, atol=1e-5, msg=name)


def assert_same_metrics(a, b):
    assert a.keys() == b.keys()
    for key in a:  # RecBole rounds metrics to 4 places
        assert a[key] == pytest.approx(b[key], abs=1.5e-4), key


def test_gathered_rows_hold_each_evaluated_row_once(monkeypatch):
    """5 rows over 2 processes: the sampler repeats row 0 on rank 1 to even them; it counts once.
    (The exchange itself is torch's, run for real by the training tests below.)"""
    from recbole.evaluator.collector import DataStruct
    from torch.utils.data.distributed import DistributedSampler

    from recbole_onevision import distributed

    sent = {}

    def exchange(parts, mine):  # rank 1 sends first, then rank 0 receives both
        sent.setdefault("rank 1", mine)
        parts[:] = [mine, sent["rank 1"]]

    monkeypatch.setattr(distributed.dist, "all_gather_object", exchange)
    structs = []
    for rank in (1, 0):
        sampler = DistributedSampler(list(range(5)), num_replicas=2, rank=rank, shuffle=False)
        struct = DataStruct()
        struct.set("rec.topk", torch.tensor(list(sampler)).unsqueeze(1))  # one row per evaluated index
        struct.set("data.label", torch.arange(7))  # not one per index (sampled negatives): kept whole
        struct.set("data.num_items", 5)  # the dataset's, the same everywhere
        structs.append(distributed.gather_rows(struct, sampler))
    gathered = structs[1]
    assert gathered["rec.topk"].squeeze(1).tolist() == [0, 2, 4, 1, 3]
    assert len(gathered["data.label"]) == 14 and gathered["data.num_items"] == 5


def test_two_processes_train_onevision_as_one_does(shop):
    two = train(shop, "OneVision", "two", *ONEVISION, "--nproc=2")
    assert two["processes"] == 2
    # every stage ran; rank 0 alone wrote the results and one checkpoint per stage
    stem = os.path.basename(two["checkpoint"])[:-len("-dpo.pth")]
    assert sorted(os.listdir(shop[0] / "two")) == [stem + end for end in ("-dpo.pth", "-pretrain.pth", "-sft.pth",
                                                                            ".json")]
    # SFT and DPO from the same pretrained weights in one process: the same batches, the same
    # weights, and the same metrics as those computed on the rows gathered from both processes
    pretrained = two["checkpoint"].replace("-dpo.pth", "-pretrain.pth")
    one = train(shop, "OneVision", "one", *ONEVISION, f"--start_checkpoint={pretrained}")
    assert one["processes"] == 1
    for stage in ("sft", "dpo"):
        assert_same_weights(one["checkpoint"].replace("-dpo.pth", f"-{stage}.pth"),
                            two["checkpoint"].replace("-dpo.pth", f"-{stage}.pth"))
    assert_same_metrics(one["best_valid_result"], two["best_valid_result"])
    assert_same_metrics(one["test_result"], two["test_result"])


def test_two_processes_train_sasrec_as_one_does(shop):
    one = train(shop, "SASRec", "sasrec-one", *SASREC)
    two = train(shop, "SASRec", "sasrec-two", *SASREC, "--nproc=2")
    assert len(os.listdir(shop[0] / "sasrec-two")) == 2  # a checkpoint and the results, from rank 0
    assert_same_weights(one["checkpoint"], two["checkpoint"])
    assert_same_metrics(one["test_result"], two["test_result"])


def test_bad_process_settings_are_refused_before_any_process_starts(shop):
    with pytest.raises(ValueError, match="nproc"):
        train(shop, "Pop", "bad", "--nproc=0")
    with pytest.raises(ValueError, match="world_size"):
        train(shop, "Pop", "bad", "--nproc=2", "--world_size=1")
    with pytest.raises(ValueError, match="port"):  # other machines cannot guess a free port
        train(shop, "Pop", "bad", "--nproc=1", "--world_size=2")
    with pytest.raises(ValueError, match="local_rank"):
        train(shop, "Pop", "bad", "--nproc=2", "--local_rank=1")
