"""brs-detr: bucketed ranking-based losses and BRS-DETR on mmdet 3.x.

Importing the package registers its modules in mmdet's registries (``custom_imports=dict(imports=['brs_detr'])``).
"""
from .version import __version__
from . import models  # noqa: F401  (registers the modules)
from . import fileio  # noqa: F401
from . import datasets, engine  # noqa: F401  (data checks, crash-safe hooks, resumable loop, Runner)

__all__ = ['__version__', 'models']
