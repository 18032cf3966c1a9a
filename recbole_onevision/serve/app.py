"""The HTTP service: ``POST /search`` (a photo or an embedding in, products out), item and
image lookup, health, a web page, and OpenAPI docs at ``/docs``.

Several runs can be served side by side (``?model=<name>``; the first is the default). Every
bad request gets a 4xx with ``{"error": "<what is wrong>"}``; the service reads the runs'
files and never writes them.
"""
from __future__ import annotations

import os
from contextlib import asynccontextmanager
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from recbole_onevision.search import Searcher, SearchError
from recbole_onevision.serve.batching import Batching, MicroBatcher
from recbole_onevision.serve.requests import query_from_form, query_from_json, read_body

PAGE = os.path.join(os.path.dirname(__file__), "page.html")
MAX_BODY_BYTES = 10 * 2 ** 20  # an upload larger than this is refused (413)


def create_app(searchers: dict[str, Searcher], batching: Batching = Batching(),
               max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    """``searchers``: name -> loaded run, in the order the page lists them."""
    if not searchers:
        raise ValueError("create_app: no runs to serve")
    batchers = {name: MicroBatcher(s, batching) for name, s in searchers.items()}
    default = next(iter(searchers))

    @asynccontextmanager
    async def lifespan(_app):
        yield
        for batcher in batchers.values():
            await batcher.close()

    app = FastAPI(title="recbole-onevision search", lifespan=lifespan,
                  description="Photo in, products out: OneVision and the cascade it replaces, served side by side.")

    def searcher(name: str | None) -> str:
        name = name or default
        if name not in searchers:
            raise SearchError(f"model {name!r} is not served; served: {', '.join(searchers)}", 404)
        return name

    @app.exception_handler(SearchError)
    async def search_error(_request, err: SearchError):
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.exception_handler(HTTPException)
    async def http_error(_request, err: HTTPException):
        return JSONResponse({"error": str(err.detail)}, status_code=err.status_code)

    @app.exception_handler(RequestValidationError)
    async def validation_error(_request, err: RequestValidationError):
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in err.errors())
        return JSONResponse({"error": problems}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page():
        with open(PAGE, encoding="utf-8") as f:
            return f.read()

    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(searchers)}

    @app.get("/models")
    async def models():
        return [describe(name, s) for name, s in searchers.items()]

    @app.post("/search", openapi_extra=SEARCH_BODY)
    async def search(request: Request, model: str | None = None):
        """A photo (multipart field ``image``) or an embedding (JSON ``embedding``), with an
        optional ``user``, ``history`` (item ids, oldest first) and ``k`` (1-100, default 10)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        body = await read_body(request, max_body_bytes)
        if kind == "application/json":
            query, asked = query_from_json(body)
        elif kind == "multipart/form-data":
            query, asked = await query_from_form(request, body)
        else:
            raise SearchError(f"content type {kind or '(none)'!r}: expected multipart/form-data (an image) or "
                              "application/json (an embedding)", 415)
        name = searcher(asked or model)
        searchers[name].check(query)  # refused before it joins a batch
        served = await batchers[name].submit(query)
        if served.error is not None:
            raise served.error
        answer = served.answer
        return {"model": name, "personalised": answer.personalised, "user_known": answer.user_known,
                "note": answer.note, "batch": served.batch, "model_ms": round(served.model_ms, 3),
                "queued_ms": round(served.queued_ms, 3),
                "hits": [hit_json(name, h) for h in answer.hits]}

    @app.get("/items/{item_id}")
    async def item(item_id: str, model: str | None = None):
        name = searcher(model)
        return hit_json(name, searchers[name].item(item_id))

    @app.get("/images/{image_id:path}")  # image-folder ids are <object>/<name>
    async def image(image_id: str, model: str | None = None):
        """A catalogue view's or query photo's image file, by its id in the dataset (only those
        the converter recorded: no other path is ever read)."""
        name = searcher(model)
        path = searchers[name].catalogue.images.get(image_id)
        if path is None or not os.path.isfile(path):
            raise SearchError(f"image {image_id!r}: the dataset records no such image", 404)
        return FileResponse(path)

    @app.get("/examples")
    async def examples(model: str | None = None, n: int = 12):
        """Query photos of the dataset to try (held-out viewpoints first), with their product."""
        name = searcher(model)
        if not 1 <= n <= 100:
            raise SearchError(f"n: expected 1 to 100, got {n}", 422)
        return searchers[name].examples(n)

    return app


def describe(name: str, s: Searcher) -> dict:
    config = s.run.config
    return {"name": name, "model": config["model"], "dataset": config["dataset"],
            "items": len(s.catalogue.tokens) - 1, "accepts_images": s.accepts_images,
            "embedding_width": s.width, "encoder": s.catalogue.encoder, "checkpoint": os.path.basename(s.run.checkpoint),
            "users": s.histories.sample_users(20)}


def hit_json(name: str, hit) -> dict:
    return {"rank": hit.rank, "item": hit.item, "score": hit.score, "sid": hit.sid, "category": hit.category,
            "images": [f"/images/{quote(image)}?model={quote(name)}" for image in hit.images]}


SEARCH_BODY = {"requestBody": {"required": True, "content": {
    "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": {
        "image": {"type": "string", "format": "binary"}, "user": {"type": "string"},
        "history": {"type": "string", "description": "comma-separated item ids, oldest first"},
        "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "model": {"type": "string"}}}},
    "application/json": {"schema": {"type": "object", "required": ["embedding"], "properties": {
        "embedding": {"type": "array", "items": {"type": "number"}}, "user": {"type": "string"},
        "history": {"type": "array", "items": {"type": "string"}},
        "behaviours": {"type": "array", "items": {"type": "string"}},
        "k": {"type": "integer", "minimum": 1, "maximum": 100, "default": 10},
        "model": {"type": "string"}}}}}}}
