"""Plugin models. Each name in ``__all__`` is found by ``run.py --model=<Name>``; its
defaults live in ``recbole_onevision/properties/model/<Name>.yaml``."""

__all__: list[str] = []
