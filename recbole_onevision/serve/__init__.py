"""The search service: ``python -m recbole_onevision.serve`` (FastAPI + uvicorn)."""
