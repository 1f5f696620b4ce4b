"""The model zoo: install published checkpoints and convert them for this project's configs.

* :func:`convert_state_dict_for_config` / :func:`convert_and_check`: an original (mmdet 2.x) state dict ->
  this project's layout for a given config (and the strict-load proof);
* :func:`convert_checkpoint_file`: the same for files, read without running code from them;
* :func:`install_entry`: download, verify (sha256, trust on first use), convert and check a
  ``checkpoints/model_zoo.json`` entry (what ``tools/download_checkpoint.py NAME`` does).

The index itself (reading, tables) is :mod:`brs_detr.zoo.index`; downloads are
:mod:`brs_detr.zoo.download`; first-use hashes :mod:`brs_detr.zoo.known_hashes`.
"""
from .checkpoint_reader import CheckpointReadError, read_checkpoint, split_checkpoint
from .convert import (ConversionError, build_model, check_strict_load, convert_and_check, convert_checkpoint_file,
                      convert_state_dict_for_config)
from .download import ChecksumError, DownloadError, download_file
from .index import ModelZooError, load_index
from .install import DEFAULT_DEST, InstallOptions, InstallResult, ZooInstallError, install_entry

__all__ = [
    'CheckpointReadError', 'read_checkpoint', 'split_checkpoint', 'ConversionError', 'build_model',
    'check_strict_load', 'convert_and_check', 'convert_checkpoint_file', 'convert_state_dict_for_config',
    'DEFAULT_DEST', 'InstallOptions', 'InstallResult', 'ZooInstallError', 'install_entry', 'ChecksumError',
    'DownloadError', 'download_file', 'ModelZooError', 'load_index'
]
