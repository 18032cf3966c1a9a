"""Find models, trainers and datasets: this plugin first, then RecBole (the RecBole-GNN way).

Plugin models are the classes exported by :mod:`recbole_onevision.model` plus any class
registered at run time with :func:`register_model` (handy for a researcher's own model).
Their default hyper-parameters live in ``recbole_onevision/properties/model/<Model>.yaml``.
"""
from __future__ import annotations

import importlib
import os

from recbole.utils import ModelType

from recbole_onevision.compat import RECBOLE_MODEL_PACKAGES, SafeCheckpointMixin, import_recbole_model_module

PROPERTIES_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "properties")

# name -> (class, yaml file or None); filled by register_model
_REGISTERED: dict[str, tuple[type, str | None]] = {}


def register_model(model_class: type, properties_file: str | None = None) -> type:
    """Make ``model_class`` reachable by name from ``run.py``/``Config``/``get_model``.

    ``properties_file`` is a YAML of default hyper-parameters (optional).
    """
    if properties_file is not None and not os.path.isfile(properties_file):
        raise FileNotFoundError(f"properties file for {model_class.__name__} not found: {properties_file}")
    _REGISTERED[model_class.__name__] = (model_class, properties_file)
    return model_class


def plugin_model_names() -> list[str]:
    import recbole_onevision.model as plugin_models

    return sorted(set(getattr(plugin_models, "__all__", [])) | set(_REGISTERED))


def recbole_model_names() -> list[str]:
    """RecBole's built-in models: one ``properties/model/<Model>.yaml`` each."""
    import recbole

    directory = os.path.join(os.path.dirname(recbole.__file__), "properties", "model")
    return sorted(f[:-5] for f in os.listdir(directory) if f.endswith(".yaml"))


def get_model(model_name: str) -> type:
    """The model class called ``model_name``: plugin first, then RecBole's built-ins."""
    if model_name in _REGISTERED:
        return _REGISTERED[model_name][0]
    import recbole_onevision.model as plugin_models

    if model_name in getattr(plugin_models, "__all__", []):
        return getattr(plugin_models, model_name)
    module_name = model_name.lower()
    for package in RECBOLE_MODEL_PACKAGES:
        path = f"recbole.model.{package}.{module_name}"
        try:  # find_spec imports the package: exlib_recommender needs xgboost/lightgbm
            found = importlib.util.find_spec(path) is not None
        except ImportError:
            continue
        if found:
            module = import_recbole_model_module(path)
            if hasattr(module, model_name):
                return getattr(module, model_name)
    raise ValueError(
        f"unknown model {model_name!r} (names are case-sensitive). "
        f"Plugin models: {', '.join(plugin_model_names()) or '(none)'}. "
        f"RecBole models: {', '.join(recbole_model_names())}."
    )


def model_properties_file(model_name: str) -> str | None:
    """The plugin's default YAML for ``model_name``, or None (RecBole then uses its own)."""
    if model_name in _REGISTERED:
        return _REGISTERED[model_name][1]
    path = os.path.join(PROPERTIES_DIR, "model", f"{model_name}.yaml")
    return path if os.path.isfile(path) else None


# datasets that share one protocol file: name -> properties/dataset/<family>.yaml
DATASET_FAMILIES = {"Beauty": "amazon-s3rec", "Toys": "amazon-s3rec", "eth80": "image-folder",
                    "eth80-hard": "image-folder",
                    **{f"mvshop-{scale}": "mvshop" for scale in ("mini", "small", "large")}}


def dataset_properties_file(dataset_name: str) -> str | None:
    """The plugin's protocol YAML for ``dataset_name`` (its own, or its family's), or None."""
    for name in (dataset_name, DATASET_FAMILIES.get(dataset_name)):
        path = named_protocol_file(name)
        if path:
            return path
    return None


def data_properties_file(data_path: str, dataset_name: str) -> str | None:
    """``<data_path>/<dataset>/<dataset>.yaml``: the file a converter wrote beside the data
    (e.g. an image folder converted under a new name), naming its protocol; or None."""
    path = os.path.join(data_path, dataset_name, f"{dataset_name}.yaml")
    return path if os.path.isfile(path) else None


def protocol_names() -> list[str]:
    """The plugin's dataset protocols, by the name a converter's ``protocol:`` key gives."""
    return sorted(f[:-5] for f in os.listdir(os.path.join(PROPERTIES_DIR, "dataset")) if f.endswith(".yaml"))


def named_protocol_file(name) -> str | None:
    """``properties/dataset/<name>.yaml`` if ``name`` is one of :func:`protocol_names`, else None."""
    return os.path.join(PROPERTIES_DIR, "dataset", f"{name}.yaml") if name in protocol_names() else None


# first lines of the whole protocols that older converters copied beside the data
OLD_COPY_HEADERS = ("(a copy of recbole_onevision/properties/dataset/",
                    "# written by recbole_onevision.preprocess.sample_users\n")


def is_protocol_copy(path: str) -> bool:
    """Whether ``path`` is a whole protocol copied by an older converter, which a change to the
    plugin's protocol does not reach."""
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    return any(header in first for header in OLD_COPY_HEADERS)


def get_trainer(model_type, model_name: str) -> type:
    """``recbole_onevision.trainer.<Model>Trainer`` if it exists, else RecBole's choice.

    Every trainer comes back with safe, atomic checkpoints (see :mod:`compat`) and evaluates
    with the multi-view metrics' collector (see :mod:`recbole_onevision.metrics`).
    """
    import recbole_onevision.trainer as plugin_trainers
    from recbole.utils import get_trainer as recbole_get_trainer

    trainer = getattr(plugin_trainers, f"{model_name}Trainer", None)
    if trainer is None:
        trainer = recbole_get_trainer(model_type, model_name)
    return with_plugin_mixins(trainer)


def with_plugin_mixins(trainer_class: type) -> type:
    """``trainer_class`` with the multi-view evaluation, several-process and safe-checkpoint
    mixins, in one subclass (idempotent; classes that are not RecBole ``Trainer``s come back
    unchanged)."""
    from recbole.trainer import Trainer

    from recbole_onevision.distributed import DistributedTrainerMixin
    from recbole_onevision.metrics import MultiViewEvaluationMixin

    if not issubclass(trainer_class, Trainer) or issubclass(trainer_class, MultiViewEvaluationMixin):
        return trainer_class
    # in this order: the distributed mixin syncs after the safe checkpoint is written, and names
    # the checkpoints after SafeCheckpointMixin has
    mixins = (MultiViewEvaluationMixin, DistributedTrainerMixin) + (
        () if issubclass(trainer_class, SafeCheckpointMixin) else (SafeCheckpointMixin,))
    return type(trainer_class.__name__, mixins + (trainer_class,), {
        "__module__": __name__, "__doc__": trainer_class.__doc__})


def create_dataset(config):
    """``recbole_onevision.data.dataset.<Model>Dataset`` (or ``dataset_class`` in the config)
    if the plugin has it, else the class RecBole's ``create_dataset`` picks, built from the
    dataset's files: never a pickled dataset (RecBole would unpickle whatever sits at its path)."""
    import recbole.data.dataset as recbole_datasets

    import recbole_onevision.data.dataset as plugin_datasets
    from recbole_onevision.data.checks import check_atomic_files

    explicit = config["dataset_class"]  # Config returns None for unset keys
    dataset_class = getattr(plugin_datasets, explicit or f"{config['model']}Dataset", None)
    if dataset_class is None and explicit:
        raise ValueError(f"dataset_class {explicit!r} is not a class of recbole_onevision.data.dataset")
    if dataset_class is None:
        dataset_class = getattr(recbole_datasets, f"{config['model']}Dataset", None) or getattr(
            recbole_datasets, RECBOLE_DATASET_CLASSES.get(config["MODEL_TYPE"], "Dataset"))
    refuse_pickle(os.path.join(config["checkpoint_dir"], f"{config['dataset']}-{dataset_class.__name__}.pth"))
    check_atomic_files(config)
    return dataset_class(config)


def data_preparation(config, dataset):
    """RecBole's ``data_preparation``, after making sure it finds no pickled dataloaders to load."""
    from recbole.data import data_preparation as recbole_data_preparation

    refuse_pickle(os.path.join(config["checkpoint_dir"], f"{config['dataset']}-for-{config['model']}-dataloader.pth"))
    return recbole_data_preparation(config, dataset)


def refuse_pickle(path: str) -> None:
    """RecBole loads a saved dataset or dataloaders from ``path`` with pickle, which runs any code
    the file holds; the plugin never writes such files, so one there came from elsewhere."""
    if os.path.exists(path):
        raise ValueError(f"{path}: a pickled RecBole dataset/dataloader file, which RecBole would unpickle "
                         "(running any code in it); this plugin never loads pickles it did not write. Remove "
                         "the file, or use another checkpoint_dir")


# the dataset class RecBole's create_dataset picks for a model type without its own
RECBOLE_DATASET_CLASSES = {ModelType.SEQUENTIAL: "SequentialDataset", ModelType.KNOWLEDGE: "KnowledgeBasedDataset"}
