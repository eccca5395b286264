"""Module names from before the layout by stage, still importable: each is the moved module itself.

``import ser_plugins.runner`` gives ``ser_plugins.training.runner`` (the same module object, so a
monkeypatch of either name patches both). The table is the whole shim: no file stays behind at
the old place. New code imports the new names (docs/architecture.md lists the layout).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType
from typing import Dict, Optional, Sequence

#: old module name -> where it lives now
MOVED: Dict[str, str] = {
    "ser_plugins.registry": "ser_plugins.plugins.registry",
    "ser_plugins.contracts": "ser_plugins.plugins.contracts",
    "ser_plugins.boundary": "ser_plugins.plugins.boundary",
    "ser_plugins.probe": "ser_plugins.plugins.probe",
    "ser_plugins.fingerprint": "ser_plugins.plugins.fingerprint",
    "ser_plugins.io": "ser_plugins.runtime.atomic",
    "ser_plugins.locking": "ser_plugins.runtime.locking",
    "ser_plugins.training.seeding": "ser_plugins.runtime.seeding",
    "ser_plugins.training.checkpoint": "ser_plugins.runtime.checkpoint",
    "ser_plugins.runner": "ser_plugins.training.runner",
    "ser_plugins.predict": "ser_plugins.deploy.predict",
    "ser_plugins.inference_graph": "ser_plugins.deploy.inference_graph",
    "ser_plugins.export": "ser_plugins.deploy.export",
    "ser_plugins.onnx_engine": "ser_plugins.deploy.onnx_engine",
    "ser_plugins.timeline": "ser_plugins.deploy.timeline",
    "ser_plugins.grid_commands": "ser_plugins.cli.grid",
    "ser_plugins.deploy_commands": "ser_plugins.cli.deploy",
    "ser_plugins.grid_launch": "ser_plugins.launch.grid_launch",
    "ser_plugins.grid": "ser_plugins.launch.grid",
}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports an old module name as the module at its new place."""

    def find_spec(
        self, fullname: str, path: Optional[Sequence[str]] = None, target: Optional[ModuleType] = None
    ) -> Optional[importlib.machinery.ModuleSpec]:
        """A spec for a moved name; None for every other name (the normal finders go on)."""
        if fullname not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        """The module at the new place (imported now if it was not yet)."""
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module: ModuleType) -> None:
        """Nothing to run: the new module ran when it was imported."""


def install() -> None:
    """Put the finder on ``sys.meta_path`` once (``ser_plugins/__init__.py`` calls it)."""
    if not any(isinstance(f, MovedModuleFinder) for f in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder())
