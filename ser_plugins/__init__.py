"""ser-plugins: speech emotion recognition on self-supervised speech features.

Public API for research code::

    from ser_plugins import create_upstream, create_aggregator, create_classifier
    from ser_plugins import list_plugins, build_model
"""

from ser_plugins import moved
from ser_plugins.errors import UserError
from ser_plugins.plugins.registry import (
    PluginError,
    Preset,
    create_aggregator,
    create_classifier,
    create_corpus,
    create_upstream,
    list_plugins,
)

moved.install()  # the module names from before the layout by stage keep working (ser_plugins/moved.py)

__version__ = "0.1.0"

__all__ = [
    "Aggregator",
    "Classifier",
    "Corpus",
    "Preset",
    "PluginContractError",
    "PluginError",
    "Upstream",
    "UpstreamOutput",
    "UserError",
    "Utterance",
    "build_model",
    "create_aggregator",
    "create_classifier",
    "create_corpus",
    "create_upstream",
    "list_plugins",
]

#: names imported on first use, with their module: they need torch
_LAZY = {
    "Aggregator": "plugins.contracts",
    "Classifier": "plugins.contracts",
    "Corpus": "plugins.contracts",
    "Upstream": "plugins.contracts",
    "UpstreamOutput": "plugins.contracts",
    "Utterance": "plugins.contracts",
    "PluginContractError": "plugins.boundary",
}


def __getattr__(name: str):
    """The plugin contracts, imported on first use: ``ser_plugins`` itself never imports torch
    (the ONNX engine, ``ser predict --engine onnx``, runs without it)."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"ser_plugins.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'ser_plugins' has no attribute {name!r}")


def build_model(recipe, num_classes=None, overrides=None):
    """Build the composed SER model (upstream -> layers -> projection -> aggregator -> classifier).

    Accepts a recipe path, a recipe mapping or a ``Recipe``, and ``-o``-style overrides
    (``["aggregator=stats"]``); see ``ser_plugins.model.build_model``.
    """
    from ser_plugins.model import build_model as _build

    return _build(recipe, num_classes=num_classes, overrides=overrides)
