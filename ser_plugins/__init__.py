"""ser-plugins: speech emotion recognition on self-supervised speech features.

Public API for research code::

    from ser_plugins import create_upstream, create_aggregator, create_classifier
    from ser_plugins import list_plugins, build_model
"""
from ser_plugins.corpus import Corpus, Utterance
from ser_plugins.registry import (
    Preset,
    PluginError,
    create_aggregator,
    create_classifier,
    create_corpus,
    create_upstream,
    list_plugins,
)

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "Classifier",
    "Corpus",
    "Preset",
    "PluginError",
    "Upstream",
    "UpstreamOutput",
    "Utterance",
    "build_model",
    "create_aggregator",
    "create_classifier",
    "create_corpus",
    "create_upstream",
    "list_plugins",
]


_CONTRACTS = ("Aggregator", "Classifier", "Upstream", "UpstreamOutput")


def __getattr__(name: str):
    """The plugin contracts, imported on first use: ``ser_plugins`` itself never imports torch
    (the ONNX engine, ``ser predict --engine onnx``, runs without it)."""
    if name in _CONTRACTS:
        from ser_plugins import contracts

        return getattr(contracts, name)
    raise AttributeError(f"module 'ser_plugins' has no attribute {name!r}")


def build_model(recipe_or_dict, num_classes=None):
    """Build the composed SER model (upstream -> layers -> projection -> aggregator -> classifier).

    Accepts a recipe path, a recipe dict, or a ``Recipe``; see ``ser_plugins.model.build_model``.
    """
    from ser_plugins.model import build_model as _build

    return _build(recipe_or_dict, num_classes=num_classes)
