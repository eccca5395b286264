"""ser-plugins: speech emotion recognition on self-supervised speech features.

Public API for research code::

    from ser_plugins import create_upstream, create_aggregator, create_classifier
    from ser_plugins import list_plugins, build_model
"""
from ser_plugins.boundary import PluginContractError
from ser_plugins.contracts import Aggregator, Classifier, Corpus, Upstream, UpstreamOutput, Utterance
from ser_plugins.errors import UserError
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


def build_model(recipe, num_classes=None, overrides=None):
    """Build the composed SER model (upstream -> layers -> projection -> aggregator -> classifier).

    Accepts a recipe path, a recipe mapping or a ``Recipe``, and ``-o``-style overrides
    (``["aggregator=stats"]``); see ``ser_plugins.model.build_model``.
    """
    from ser_plugins.model import build_model as _build

    return _build(recipe, num_classes=num_classes, overrides=overrides)
