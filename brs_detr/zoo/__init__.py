"""The model zoo: the index of published checkpoints, their download, verification, conversion and loading.

* :mod:`~brs_detr.zoo.index`: ``checkpoints/model_zoo.json`` (schema, validation, look-ups, the zoo tables);
* :mod:`~brs_detr.zoo.download`: resumable, checksum-verified, atomic downloads (http, https, Google Drive);
* :mod:`~brs_detr.zoo.known_hashes`: the sha256 recorded on a file's first download (trust on first use);
* :mod:`~brs_detr.zoo.install`: :func:`install_entry`, what ``tools/download_checkpoint.py NAME`` does;
* :mod:`~brs_detr.zoo.checkpoint_reader`: reading any published checkpoint without running code from it;
* :mod:`~brs_detr.zoo.convert` (with :mod:`~brs_detr.zoo.rank_based_cnn`): an original (mmdet 2.x) state dict ->
  this project's layout for a config, and the strict-load proof;
* :mod:`~brs_detr.zoo.loaders`: mmengine's ``http(s)://`` and ``torchvision://`` checkpoint loaders, verified
  against the index.

Names are imported on first access (``python tools/download_checkpoint.py --list`` needs neither torch nor mmdet).
"""
from brs_detr.lazy_import import lazy_exports

_EXPORTS = {
    '.checkpoint_reader': ['CheckpointReadError', 'read_checkpoint', 'split_checkpoint'],
    '.convert': ['ConversionError', 'build_model', 'check_strict_load', 'convert_and_check', 'convert_checkpoint_file',
                 'convert_state_dict_for_config'],
    '.download': ['ChecksumError', 'DownloadError', 'download_file'],
    '.index': ['ModelZooError', 'load_index'],
    '.install': ['DEFAULT_DEST', 'InstallOptions', 'InstallResult', 'ZooInstallError', 'install_entry'],
    '.loaders': ['TORCHVISION_URLS', 'fetch_verified', 'install_http_loaders', 'load_from_http_safe',
                 'load_from_torchvision_safe'],
}
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
__all__ = [name for names in _EXPORTS.values() for name in names]
