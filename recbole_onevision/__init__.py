"""recbole-onevision: OneVision (generative multi-view vision search) as RecBole plugins."""

__version__ = "0.1.0"
