"""The HTTP service: answers as the API does, batched or not; every bad request gets a 4xx
naming the problem, and a flood of them leaves the server up with its memory flat."""
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

pytest.importorskip("fastapi", reason='the service needs its packages: pip install -e ".[serve]"')
from fastapi.testclient import TestClient  # noqa: E402

from recbole_onevision.search import Searcher  # noqa: E402
from recbole_onevision.serve.app import create_app  # noqa: E402
from recbole_onevision.serve.batching import Batching  # noqa: E402
from search_support import files_state, png_bytes  # noqa: E402


@pytest.fixture(scope="module")
def searchers(search_runs):
    return {name: Searcher.from_checkpoint(path) for name, path in search_runs[1].items()}


@pytest.fixture(scope="module")
def client(searchers):
    with TestClient(create_app(searchers, Batching(1, 0))) as c:
        yield c


def photo(searcher, q: int) -> list[float]:
    return searcher.dataset.query_embedding[q].tolist()


def test_the_service_answers_as_the_api(client, searchers):
    for name, searcher in searchers.items():
        user = searcher.histories.sample_users(3)[2]
        for q, who in [(2, user), (5, None)]:
            reply = client.post(f"/search?model={name}", json={"embedding": photo(searcher, q), "user": who, "k": 7})
            assert reply.status_code == 200, reply.text
            body = reply.json()
            answer = searcher.search(embedding=photo(searcher, q), user=who, k=7)
            assert [h["item"] for h in body["hits"]] == [h.item for h in answer.hits]
            assert [h["sid"] for h in body["hits"]] == [h.sid for h in answer.hits]
            assert body["personalised"] == (who is not None) and body["model"] == name
    upload = client.post("/search?model=VisualKNN", files={"image": ("p.png", png_bytes(3))}, data={"k": "4"})
    assert upload.status_code == 200, upload.text
    assert [h["item"] for h in upload.json()["hits"]] == [h.item for h in searchers["VisualKNN"].search(image=png_bytes(3), k=4).hits]
    assert client.get("/health").json() == {"status": "ok", "models": list(searchers)}
    assert {m["name"] for m in client.get("/models").json()} == set(searchers)
    assert "/search" in client.get("/openapi.json").json()["paths"]
    item = upload.json()["hits"][0]["item"]
    assert client.get(f"/items/{item}").json()["item"] == item


def test_micro_batched_answers_equal_unbatched_ones(searchers, client):
    searcher = searchers["OneVision"]
    users = searcher.histories.sample_users(8)
    bodies = [{"embedding": photo(searcher, q), "user": users[q % 8] if q % 2 else None, "k": 10} for q in range(1, 17)]
    alone = [client.post("/search?model=OneVision", json=b).json() for b in bodies]
    assert {a["batch"] for a in alone} == {1}
    with TestClient(create_app(searchers, Batching(8, 200))) as batched, ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda b: batched.post("/search?model=OneVision", json=b).json(), bodies))
    assert max(t["batch"] for t in together) > 1  # requests did share model calls
    for one, shared in zip(alone, together):
        assert [h["item"] for h in one["hits"]] == [h["item"] for h in shared["hits"]]
        np.testing.assert_allclose([h["score"] for h in one["hits"]], [h["score"] for h in shared["hits"]],
                                   rtol=1e-4, atol=1e-5)


def _json(body):
    return {"content": json.dumps(body).encode(), "headers": {"content-type": "application/json"}}


GOOD = {"embedding": [0.1] * 64}
BAD_REQUESTS = [  # (name, request keywords, status, words the error names)
    ("not JSON", {"content": b"{", "headers": {"content-type": "application/json"}}, 400, "not valid JSON"),
    ("JSON array", _json([1, 2]), 422, "expected a JSON object"),
    ("no embedding", _json({"k": 3}), 422, "embedding: missing"),
    ("embedding text", _json({"embedding": "abc"}), 422, "embedding: expected a list of numbers"),
    ("embedding too short", _json({"embedding": [0.1] * 3}), 422, "expected 64 numbers, got 3"),
    ("embedding too long", _json({"embedding": [0.1] * 65}), 422, "expected 64 numbers, got 65"),
    ("embedding nested", _json({"embedding": [[0.1] * 64]}), 422, "expected 64 numbers"),
    ("NaN", {"content": ("{\"embedding\": [NaN" + ", 0.1" * 63 + "]}").encode(),
             "headers": {"content-type": "application/json"}}, 422, "finite numbers"),
    ("infinity", {"content": ("{\"embedding\": [Infinity" + ", 0.1" * 63 + "]}").encode(),
                  "headers": {"content-type": "application/json"}}, 422, "finite numbers"),
    ("text in embedding", _json({"embedding": ["x"] * 64}), 422, "finite numbers"),
    ("booleans in embedding", _json({"embedding": [True] * 64}), 422, "finite numbers"),
    ("zero embedding", _json({"embedding": [0] * 64}), 422, "all zeros"),
    ("k zero", _json({**GOOD, "k": 0}), 422, "k: expected an integer from 1 to 100, got 0"),
    ("k too large", _json({**GOOD, "k": 101}), 422, "got 101"),
    ("k text", _json({**GOOD, "k": "ten"}), 422, "got 'ten'"),
    ("k float", _json({**GOOD, "k": 2.5}), 422, "got 2.5"),
    ("user number", _json({**GOOD, "user": 5}), 422, "user: expected an id (text)"),
    ("unknown history item", _json({**GOOD, "history": ["i1", "no-such-item"]}), 404, "'no-such-item' is not in the catalogue"),
    ("history not a list", _json({**GOOD, "history": "i1"}), 422, "history: expected a list of item ids"),
    ("behaviours without history", _json({**GOOD, "behaviours": ["click"]}), 422, "behaviours: given without a history"),
    ("behaviours wrong length", _json({**GOOD, "history": ["i1"], "behaviours": ["click", "order"]}), 422,
     "one per history item"),
    ("unknown behaviour", _json({**GOOD, "history": ["i1"], "behaviours": ["stare"]}), 422, "'stare' is not one of"),
    ("unknown field", _json({**GOOD, "colour": "red"}), 422, "unknown field 'colour'"),
    ("unknown model", _json({**GOOD, "model": "GPT"}), 404, "model 'GPT' is not served"),
    ("model not text", _json({**GOOD, "model": 3}), 422, "model: expected a name"),
    ("no content type", {"content": b"hello"}, 415, "expected multipart/form-data"),
    ("plain text", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "'text/plain'"),
    ("image not an image", {"files": {"image": ("x.jpg", b"\xff\xd8 not a jpeg")}}, 422, "not a readable image"),
    ("image empty", {"files": {"image": ("x.jpg", b"")}}, 422, "image: the file is empty"),
    ("image missing", {"files": {"photo": ("x.jpg", b"123")}}, 422, "unknown field 'photo'"),
    ("form without image", {"data": {"k": "3"}, "files": {"other": ("a", b"b")}}, 422, "unknown field 'other'"),
    ("form k text", {"files": {"image": ("x.png", png_bytes(1))}, "data": {"k": "many"}}, 422, "got 'many'"),
    ("form unknown user is fine but unknown history item is not",
     {"files": {"image": ("x.png", png_bytes(1))}, "data": {"history": "i1,nope"}}, 404, "'nope' is not in the catalogue"),
    ("oversized body", {"content": b"0" * (2 ** 20 + 1), "headers": {"content-type": "application/json"}}, 413,
     "more than the 1,048,576 allowed"),
]


@pytest.fixture(scope="module")
def strict_client(searchers):
    with TestClient(create_app({"VisualKNN": searchers["VisualKNN"]}, Batching(4, 1), max_body_bytes=2 ** 20)) as c:
        yield c


@pytest.mark.parametrize("name,request_args,status,words", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_problem(strict_client, name, request_args, status, words):
    reply = strict_client.post("/search", **request_args)
    assert reply.status_code == status, reply.text
    assert words in reply.json()["error"]


def test_bad_lookups_get_a_404(strict_client):
    assert "'nope' is not in the catalogue" in strict_client.get("/items/nope").json()["error"]
    assert strict_client.get("/images/../../etc/passwd").status_code == 404
    assert "no such image" in strict_client.get("/images/no-such-view").json()["error"]
    assert strict_client.get("/examples?n=0").status_code == 422
    assert strict_client.get("/health?model=x").status_code == 200


def test_a_flood_of_bad_requests_leaves_the_server_up_and_its_memory_flat(strict_client, search_runs):
    root, checkpoints = search_runs
    before_files = files_state(str(root / "tinyshop"), *checkpoints.values())
    cycle = [r for _, r, _, _ in BAD_REQUESTS if len(r.get("content", b"")) < 2 ** 20]

    def flood(n):
        for i in range(n):
            assert strict_client.post("/search", **cycle[i % len(cycle)]).status_code >= 400

    flood(200)  # warm-up: caches, allocator pools
    rss = resident_mb()
    flood(1000)
    assert resident_mb() - rss < 25, "memory grew while answering bad requests"
    assert strict_client.post("/search", json=GOOD).status_code == 200
    assert files_state(str(root / "tinyshop"), *checkpoints.values()) == before_files  # never writes the run


def resident_mb() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
