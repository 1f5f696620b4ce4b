"""The optional packages of deployment (onnx, onnxruntime): imported only where they are used.

``tools/install.sh`` installs them (versions in ``requirements/deploy.txt``); without them the export, the
onnxruntime runner and the ONNX benchmark stop with one line that names the missing module and how to install it.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from brs_detr.apis.cli import ToolInputError

#: The pip requirement of each optional module (kept in step with requirements/deploy.txt).
OPTIONAL_MODULES = {'onnx': 'onnx==1.23.2', 'onnxruntime': 'onnxruntime==1.32.0'}


class MissingDependencyError(ToolInputError):
    """An optional package that deployment needs is not installed."""


def import_optional(name: str) -> ModuleType:
    """Import the optional module ``name`` (``'onnx'`` or ``'onnxruntime'``).

    Raises:
        MissingDependencyError: It is not installed; the message names it and the pip command that installs it.
    """
    try:
        return importlib.import_module(name)
    except ImportError as error:
        requirement = OPTIONAL_MODULES.get(name, name)
        raise MissingDependencyError(
            f'the optional module {name!r} is not installed ({error}); install it with `pip install '
            f'"{requirement}" -c requirements/constraints.txt` (tools/install.sh does)') from error
