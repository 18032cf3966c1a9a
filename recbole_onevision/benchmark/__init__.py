"""The one-command benchmark, ``python -m recbole_onevision.benchmark`` (:mod:`.__main__`):
:mod:`.grid` runs and finds the cells, :mod:`.stats` summarises seeds and tests differences,
:mod:`.report` writes the markdown and :mod:`.plot` the quality-vs-latency plot."""
