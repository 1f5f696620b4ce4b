"""Deferred imports: public names imported on first use, and callbacks run once a module has been imported.

``import brs_detr`` stays light (no torch, mmcv or mmdet: the tools answer ``--help`` at once), yet
``from brs_detr.zoo import install_entry`` keeps working and brs_detr's checkpoint safety is in place before mmengine
loads anything. Two mechanisms, both from the standard library's import system:

* :func:`lazy_exports` gives a package a module ``__getattr__`` (PEP 562) that imports the submodule defining a
  public name on first access;
* :func:`when_imported` runs a callback right after a module has been imported (at once if it already is), through
  a finder at the front of ``sys.meta_path`` that wraps only the loaders of the modules waited for.
"""
import importlib
import importlib.abc
import sys
import threading
from types import ModuleType
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

Callback = Callable[[ModuleType], None]


def lazy_exports(package: str, exports: Mapping[str, Iterable[str]]) -> Tuple[Callable[[str], Any],
                                                                             Callable[[], List[str]]]:
    """A module ``__getattr__`` and ``__dir__`` for ``package`` that import each public name where it is defined.

    Use in a package's ``__init__.py``::

        __getattr__, __dir__ = lazy_exports(__name__, {'.trust': ['trust_file', 'is_trusted'], ...})

    Args:
        package: The package's ``__name__``.
        exports: Submodule (relative to ``package``, e.g. ``'.trust'``) -> the names it defines.

    Returns:
        ``(__getattr__, __dir__)``; a name is imported on its first access and then stored in the package.
    """
    where = {name: module for module, names in exports.items() for name in names}
    shadowed = sorted(set(where) & {module.lstrip('.') for module in exports})
    if shadowed:  # importing the submodule would set the package attribute to the module, not to the name
        raise ValueError(f'{package}: the public names {shadowed} are also submodule names; rename the submodules')

    def __getattr__(name: str) -> Any:
        module = where.get(name)
        if module is None:
            raise AttributeError(f'module {package!r} has no attribute {name!r}')
        value = getattr(importlib.import_module(module, package), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> List[str]:
        return sorted(set(vars(sys.modules[package])) | set(where))

    return __getattr__, __dir__


_callbacks: Dict[str, List[Callback]] = {}
_lock = threading.RLock()


class _CallbackLoader(importlib.abc.Loader):
    """Runs a module's own loader, then the callbacks waiting for the module."""

    def __init__(self, loader: importlib.abc.Loader) -> None:
        self.loader = loader

    def create_module(self, spec: Any) -> Optional[ModuleType]:
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader  # the module keeps its own loader (resources, reloading)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        _run_callbacks(module)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: for a module with callbacks it asks the other finders and wraps the loader found."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]], target: Optional[ModuleType] = None) -> Any:
        if fullname not in _callbacks:
            return None
        for finder in sys.meta_path:
            find_spec = getattr(finder, 'find_spec', None)
            if finder is self or find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
                    spec.loader = _CallbackLoader(spec.loader)
                return spec
        return None


_FINDER = _PostImportFinder()


def _run_callbacks(module: ModuleType) -> None:
    with _lock:
        callbacks = _callbacks.pop(module.__name__, [])
        if not _callbacks and _FINDER in sys.meta_path:
            sys.meta_path.remove(_FINDER)
    for callback in callbacks:
        callback(module)


def when_imported(name: str, callback: Callback) -> None:
    """Call ``callback(module)`` once the module ``name`` has been imported: now, if it already is.

    The callback runs right after the module's own code, inside the import that loaded it; it should touch only that
    module and what that module imports (its package may still be half-initialised). An exception in the callback
    propagates from that import.
    """
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _callbacks.setdefault(name, []).append(callback)
            if _FINDER not in sys.meta_path:
                sys.meta_path.insert(0, _FINDER)
            return
    callback(module)
