"""Plugin models. Each name in ``__all__`` is found by ``run.py --model=<Name>``; its
defaults live in ``recbole_onevision/properties/model/<Name>.yaml``."""
from recbole_onevision.model.onevision import OneVision

__all__: list[str] = ["OneVision"]
