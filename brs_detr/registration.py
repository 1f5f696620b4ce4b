"""brs_detr inside mmengine and mmdet: its modules in the registries, its checkpoint safety in the loaders.

* :func:`register_all_modules` imports every module that registers something in mmdet's registries (models, the
  data transforms, the hooks, loops and Runner) and installs the checkpoint safety. Idempotent.
* :func:`install_checkpoint_safety` replaces mmengine's checkpoint loaders and local file backend by brs_detr's:
  trusted-only full unpickling of local files (:mod:`brs_detr.fileio.checkpoint`), checksum-verified downloads
  (:mod:`brs_detr.zoo.loaders`) and atomic writes (:mod:`brs_detr.fileio.backend`).
* :func:`defer_registration` is what ``import brs_detr`` does. Importing the models costs seconds (torch, mmcv,
  mmdet), so it happens when it is first needed, with the same result for the user as an eager import:

  - mmdet already imported (``custom_imports=dict(imports=['brs_detr'])`` in mmdet's tools): registered at once;
  - otherwise the first look-up in any mmengine registry (``MODELS.build``, ``Runner``, ``'X' in MODELS``: every
    ``Registry.get`` first calls ``Registry.import_from_location``) registers everything first; that method is
    wrapped once, and restored after a successful registration;
  - the checkpoint loaders are installed right after ``mmengine.runner.checkpoint`` has been imported (no
    checkpoint can be loaded through mmengine before), the atomic backend after ``mmengine.fileio``
    (:func:`brs_detr.lazy_import.when_imported`).
* :func:`_resolve_num_classes_on_load`: a config that mmengine reads from a file gets every head's
  ``num_classes='from_dataset'`` resolved from its datasets (:mod:`brs_detr.datasets.num_classes`), so that
  mmdet's tools and ``Config.fromfile`` + ``MODELS.build`` build the models brs-detr's tools build.
"""
import threading
from types import ModuleType

from .lazy_import import when_imported

_lock = threading.RLock()
_registering = False


def install_checkpoint_safety() -> None:
    """Install brs_detr's checkpoint loaders and atomic local backend into mmengine (idempotent)."""
    _install_loaders()
    _install_backend()


def _install_loaders(_: object = None) -> None:
    from .fileio.checkpoint import install_local_loader
    from .zoo.loaders import install_http_loaders
    install_local_loader()
    install_http_loaders()


def _install_backend(_: object = None) -> None:
    import brs_detr.fileio.backend as backend  # installs the backend when first imported
    if hasattr(backend, 'install_atomic_backend'):  # not yet there when called from inside that first import
        backend.install_atomic_backend()


def register_all_modules(init_default_scope: bool = False) -> None:
    """Register brs_detr's modules in mmdet's registries and install its checkpoint safety (idempotent).

    Args:
        init_default_scope: Also make ``'mmdet'`` mmengine's default scope (as mmdet's ``register_all_modules`` does),
            for code that builds from configs without ``default_scope``.
    """
    global _registering
    with _lock:
        _registering = True
        try:
            import brs_detr.datasets.checked_datasets  # noqa: F401  (CheckedCocoDataset, ...)
            import brs_detr.datasets.transforms  # noqa: F401  (CheckedLoadImageFromFile)
            import brs_detr.engine.hooks  # noqa: F401  (CrashSafeCheckpointHook, NonFiniteLossHook)
            import brs_detr.engine.runner  # noqa: F401  (ReliableRunner, ResumableEpochBasedTrainLoop)
            import brs_detr.models  # noqa: F401  (losses, heads, detectors, backbones)
            install_checkpoint_safety()
        finally:
            _registering = False
    if init_default_scope:
        from mmengine.registry import init_default_scope as set_default_scope
        set_default_scope('mmdet')


def _register_on_first_lookup(registry_module: ModuleType) -> None:
    """Wrap ``Registry.import_from_location`` so that its first call registers brs_detr's modules."""
    registry_class = registry_module.Registry
    original = registry_class.import_from_location
    if getattr(original, 'registers_brs_detr', False):  # already wrapped
        return

    def import_from_location(self) -> None:
        with _lock:
            if not _registering and registry_class.__dict__.get('import_from_location') is import_from_location:
                register_all_modules()
                registry_class.import_from_location = original
        original(self)

    import_from_location.__doc__ = original.__doc__
    import_from_location.registers_brs_detr = True
    registry_class.import_from_location = import_from_location


def _resolve_num_classes_on_load(config_module: ModuleType) -> None:
    """Wrap mmengine's ``Config.__init__`` so that a config read from a file (``filename`` given, as
    ``Config.fromfile`` gives it) goes through :func:`brs_detr.datasets.num_classes.resolve_on_load`.

    ``Config.fromfile`` imports the config's ``custom_imports`` before it creates the Config, so the config whose
    ``custom_imports`` imported brs_detr is resolved too.
    """
    config_class = config_module.Config
    original = config_class.__init__
    if getattr(original, 'resolves_num_classes', False):  # already wrapped
        return

    def __init__(self, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if kwargs.get('filename') is not None:
            from brs_detr.datasets.num_classes import resolve_on_load
            resolve_on_load(self)

    __init__.__doc__ = original.__doc__
    __init__.resolves_num_classes = True
    config_class.__init__ = __init__


def defer_registration() -> None:
    """What ``import brs_detr`` does (see the module docstring)."""
    import sys
    when_imported('mmengine.config.config', _resolve_num_classes_on_load)
    if 'mmdet' in sys.modules:
        register_all_modules()
        return
    when_imported('mmengine.registry.registry', _register_on_first_lookup)
    when_imported('mmengine.runner.checkpoint', _install_loaders)
    when_imported('mmengine.fileio', _install_backend)
