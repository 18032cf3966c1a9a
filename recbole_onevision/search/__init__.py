"""Search a trained run with a photo: :class:`Searcher` (``python -m recbole_onevision.search``)."""
from recbole_onevision.search.api import Answer, Hit, Query, Searcher
from recbole_onevision.search.errors import SearchError
from recbole_onevision.search.run import RunError, load_run

__all__ = ["Answer", "Hit", "Query", "Searcher", "SearchError", "RunError", "load_run"]
