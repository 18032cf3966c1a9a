"""Search with a photo: the API ranks exactly as RecBole's evaluator does, batched or not."""
import numpy as np
import pytest
import torch

from recbole_onevision.search import RunError, Searcher, SearchError, load_run
from search_support import files_state, png_bytes, thumbnail_encoder

MODELS = ("OneVision", "MCA", "VisualKNN")


@pytest.fixture(scope="module")
def runs(search_runs):
    return search_runs


def evaluator_top10(run):
    """Per test row: (the row, RecBole's top-10 items with finite scores), from the model as loaded."""
    out = []
    for batch in run.splits[2]:
        interaction = batch[0]
        with torch.no_grad():
            scores = run.model.full_sort_predict(interaction)
        scores[:, 0] = float("-inf")
        values, items = scores.topk(10, dim=1)
        for n in range(len(interaction)):
            out.append((interaction[n:n + 1], [i for i, v in zip(items[n].tolist(), values[n].tolist())
                                               if v != float("-inf")]))
    return out


@pytest.mark.parametrize("model", MODELS)
def test_search_equals_the_evaluators_ranking(runs, model):
    run = load_run(runs[1][model])
    expected = evaluator_top10(run)  # before search swaps in its own photos
    searcher = Searcher(run)
    tokens = {f: run.dataset.field2id_token[f] for f in ("user_id", "item_id", "behaviour")}
    for row, items in expected:
        length = int(row["item_length"][0])
        history = [int(i) for i in row["item_id_list"][0][:length] if i]
        behaviours = row["behaviour_list"][0][:length].tolist()[-len(history):] if history else None
        answer = searcher.search(embedding=run.dataset.query_embedding[int(row["query_id"][0])].numpy(),
                                 user=str(tokens["user_id"][int(row["user_id"][0])]),
                                 history=[str(tokens["item_id"][i]) for i in history] or None,
                                 behaviours=[str(tokens["behaviour"][b]) for b in behaviours] if history else None)
        assert [h.item for h in answer.hits] == [str(tokens["item_id"][i]) for i in items]
        assert answer.personalised and answer.user_known


def test_a_known_user_brings_their_whole_history_and_an_unknown_one_is_flagged(runs):
    searcher = Searcher.from_checkpoint(runs[1]["OneVision"])
    dataset, histories = searcher.dataset, searcher.histories
    user = 3
    rows = (dataset.inter_feat["user_id"] == user).nonzero().view(-1)
    last = rows[dataset.inter_feat["timestamp"][rows].argmax()]
    length = int(dataset.inter_feat["item_length"][last])
    whole = dataset.inter_feat["item_id_list"][last][:length].tolist() + [int(dataset.inter_feat["item_id"][last])]
    row = histories.row(str(dataset.field2id_token["user_id"][user]), None, None)
    assert row.items == [i for i in whole if i][-histories.max_len:] and row.user_known

    photo = dataset.query_embedding[1].numpy()
    stranger = searcher.search(embedding=photo, user="nobody-like-this")
    anonymous = searcher.search(embedding=photo)
    assert not stranger.personalised and not stranger.user_known and "photo-only" in stranger.note
    assert [h.item for h in stranger.hits] == [h.item for h in anonymous.hits]
    known = searcher.search(embedding=photo, user=str(dataset.field2id_token["user_id"][user]))
    assert known.personalised
    hit = known.hits[0]
    assert hit.sid == dataset.item_sid[dataset.field2token_id["item_id"][hit.item]].tolist() and hit.category


@pytest.mark.parametrize("model", ("OneVision", "MCA"))
def test_a_batch_answers_as_each_query_alone(runs, model):
    searcher = Searcher.from_checkpoint(runs[1][model])
    users = searcher.histories.sample_users(6)
    queries = [dict(embedding=searcher.dataset.query_embedding[q].numpy(), user=users[q % 6] if q % 3 else None, k=5 + q)
               for q in range(1, 9)]
    from recbole_onevision.search import Query

    together = searcher.search_batch([Query(**q) for q in queries])
    for query, answer in zip(queries, together):
        alone = searcher.search(**query)
        assert [h.item for h in answer.hits] == [h.item for h in alone.hits] and len(alone.hits) <= query["k"]
        np.testing.assert_allclose([h.score for h in answer.hits], [h.score for h in alone.hits], rtol=1e-4, atol=1e-5)


def test_photos_are_embedded_by_the_encoder_the_dataset_records(runs):
    searcher = Searcher.from_checkpoint(runs[1]["VisualKNN"])
    from PIL import Image
    from io import BytesIO

    photo = png_bytes(7)
    by_image = searcher.search(image=photo, k=5)
    by_embedding = searcher.search(embedding=thumbnail_encoder([Image.open(BytesIO(photo))])[0], k=5)
    assert [h.item for h in by_image.hits] == [h.item for h in by_embedding.hits]
    with pytest.raises(SearchError, match="was embedded with 'search_support:thumbnail_encoder'"):
        Searcher(searcher.run, encoder="efficientnet-lite0")
    with pytest.raises(SearchError, match="image: not a readable image"):
        searcher.search(image=b"GIF89a but not really", k=5)
    with pytest.raises(SearchError, match="exactly one of an image and an embedding"):
        searcher.search(k=5)
    view = next(iter(searcher.catalogue.images))
    owner = next(i for i, views in enumerate(searcher.catalogue.item_images) if view in views)
    assert searcher.item(str(searcher.catalogue.tokens[owner])).images == [view]


def test_search_reads_the_run_and_writes_nothing(runs):
    root, checkpoints = runs
    before = files_state(str(root / "tinyshop"), *checkpoints.values())
    searcher = Searcher.from_checkpoint(checkpoints["MCA"])
    searcher.search(image=png_bytes(1), user=searcher.histories.sample_users(1)[0])
    assert files_state(str(root / "tinyshop"), *checkpoints.values()) == before


def test_checkpoints_without_settings_or_with_foreign_objects_are_refused(runs, tmp_path):
    state = torch.load(runs[1]["VisualKNN"], weights_only=True)
    del state["config"]["overrides"]
    old = tmp_path / "old.pth"
    torch.save(state, old)
    with pytest.raises(RunError, match="records no run settings"):
        load_run(str(old))

    class Payload:  # unpickling it would run code
        def __reduce__(self):
            return (exec, ("open('PWNED', 'w').write('x')",))

    planted = tmp_path / "planted.pth"
    torch.save({"config": {}, "payload": Payload()}, planted)
    with pytest.raises(ValueError, match="refusing to unpickle"):
        load_run(str(planted))
    assert not (tmp_path / "PWNED").exists()
    with pytest.raises(RunError, match="no such file"):
        load_run(str(tmp_path / "missing.pth"))


def test_command_line_prints_the_table_and_names_bad_input(runs, capsys):
    from recbole_onevision.search.__main__ import main

    checkpoint = runs[1]["OneVision"]
    query = open(runs[0] / "tinyshop" / "tinyshop.query").readlines()[1].split("\t")[0]
    # the command a run's summary ends with, its placeholder filled in
    from recbole_onevision.quick_start import result_summary
    summary = result_summary({"model": "OneVision", "dataset": "tinyshop", "best_valid_result": {}, "test_result": {},
                              "train_seconds": 1.0, "results_file": "r.json", "checkpoint": checkpoint,
                              "evaluated_only": False, "run_args": ["--model=OneVision"]})
    command = summary.splitlines()[-1].split("python -m recbole_onevision.search ")[1].split(" (or")[0]
    args = [a for a in command.replace("<a query photo id>", query).split(" ")]
    main([*args, "--k", "3"])
    out = capsys.readouterr().out
    assert "photo-only search" in out and "| rank | item | score | SID |" in out
    assert len([line for line in out.splitlines() if line.startswith("| ") and line[2].isdigit()]) == 3
    for args, message in [(["--query", "no-such-photo"],
                           r"query photo 'no-such-photo' is not in the dataset \(its query photo ids look like '"),
                          (["--query", query, "--k", "0"], "k: expected an integer from 1 to 100"),
                          (["--image", __file__], "not a readable image")]:
        with pytest.raises(SystemExit, match=f"search: error: .*{message}"):
            main(["--checkpoint", checkpoint, *args])
