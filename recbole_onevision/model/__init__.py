"""Plugin models. Each name in ``__all__`` is found by ``run.py --model=<Name>``; its
defaults live in ``recbole_onevision/properties/model/<Name>.yaml``."""
from recbole_onevision.model.mca import MCA
from recbole_onevision.model.onevision import OneVision
from recbole_onevision.model.visual_knn import VisualKNN

__all__: list[str] = ["MCA", "OneVision", "VisualKNN"]
