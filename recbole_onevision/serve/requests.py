"""Turn a request body into a :class:`Query`, naming what is wrong with a bad one."""
from __future__ import annotations

import json

from starlette.requests import Request

from recbole_onevision.search import Query, SearchError

JSON_FIELDS = ("model", "embedding", "user", "history", "behaviours", "k")
FORM_FIELDS = ("model", "image", "user", "history", "k")


async def read_body(request: Request, limit: int) -> bytes:
    """The body, refused (413) past ``limit`` bytes, whether or not a length was announced."""
    announced = request.headers.get("content-length")
    if announced is not None and announced.isdigit() and int(announced) > limit:
        raise SearchError(f"request body: {int(announced):,} bytes, more than the {limit:,} allowed", 413)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise SearchError(f"request body: more than the {limit:,} bytes allowed", 413)
        chunks.append(chunk)
    return b"".join(chunks)


def query_from_json(body: bytes) -> tuple[Query, str | None]:
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise SearchError(f"request body: not valid JSON ({err})", 400) from None
    if not isinstance(data, dict):
        raise SearchError("request body: expected a JSON object", 422)
    unknown = sorted(set(data) - set(JSON_FIELDS))
    if unknown:
        raise SearchError(f"unknown field {unknown[0]!r}; expected some of {', '.join(JSON_FIELDS)}", 422)
    if "embedding" not in data:
        raise SearchError("embedding: missing (send an image as multipart/form-data instead)", 422)
    embedding = data["embedding"]
    if not isinstance(embedding, list):
        raise SearchError("embedding: expected a list of numbers", 422)
    model = data.get("model")
    if model is not None and not isinstance(model, str):
        raise SearchError(f"model: expected a name (text), got {model!r}", 422)
    return Query(embedding=embedding, user=data.get("user"), history=data.get("history"),
                 behaviours=data.get("behaviours"), k=data.get("k", 10)), model


async def query_from_form(request: Request, body: bytes) -> tuple[Query, str | None]:
    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, receive).form(max_files=1, max_fields=len(FORM_FIELDS))
    except Exception as err:  # noqa: BLE001 (the multipart parser's errors vary by version)
        raise SearchError(f"request body: not a valid multipart form ({err})", 400) from None
    unknown = sorted(set(form.keys()) - set(FORM_FIELDS))
    if unknown:
        raise SearchError(f"unknown field {unknown[0]!r}; expected some of {', '.join(FORM_FIELDS)}", 422)
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise SearchError("image: missing (a file field named 'image'; send an embedding as JSON instead)", 422)
    image = await upload.read()
    if not image:
        raise SearchError("image: the file is empty", 422)
    k = form.get("k", "10")
    try:
        k = int(k)
    except ValueError:
        raise SearchError(f"k: expected an integer from 1 to 100, got {k!r}", 422) from None
    history = form.get("history")
    history = [i.strip() for i in history.split(",") if i.strip()] if history else None
    return Query(image=image, user=form.get("user") or None, history=history, k=k), form.get("model") or None
