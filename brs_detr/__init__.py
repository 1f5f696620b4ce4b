"""brs-detr: bucketed ranking-based losses and BRS-DETR on mmdet 3.x.

``import brs_detr`` is light (no torch, mmcv or mmdet) and makes brs_detr's modules available in mmdet's registries
(``custom_imports=dict(imports=['brs_detr'])``, or ``import brs_detr`` before ``MODELS.build``): they are
registered at once when mmdet is already imported, else on the first registry look-up; brs_detr's safe checkpoint
loaders are installed before mmengine can load a checkpoint (see :mod:`brs_detr.registration`).
:func:`register_all_modules` registers everything now. The subpackages (``brs_detr.models``, ``brs_detr.zoo``, ...)
are imported on first access.
"""
import importlib
from typing import Any

from .registration import defer_registration, install_checkpoint_safety, register_all_modules
from .version import __version__

#: Subpackages, imported on first access as attributes of ``brs_detr``.
SUBPACKAGES = ('analysis', 'apis', 'benchmarks', 'datasets', 'deployment', 'engine', 'fileio', 'models', 'zoo')

__all__ = ['__version__', 'register_all_modules', 'install_checkpoint_safety']


def __getattr__(name: str) -> Any:
    if name in SUBPACKAGES:
        return importlib.import_module(f'{__name__}.{name}')
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


defer_registration()
