"""One place for the classes: every head's ``num_classes`` follows the dataset's ``metainfo``.

mmdet configs repeat the class count in every head (the DETR query head, the auxiliary ATSS and RoI heads, every
cascade stage, the mask head); a user who changes the dataset's classes and forgets one head trains a model that
predicts labels the data never has, or never predicts some, without any error (Co-DETR #101, detrex #217, "loss 0 /
AP 0"). Here a head writes ``num_classes='from_dataset'`` (:data:`FROM_DATASET`) and :func:`resolve_num_classes`,
run by every config-loading path of brs-detr (``tools/train.py``, ``tools/test.py``, the demo and
:class:`~brs_detr.apis.BRSDetInferencer`, checkpoint conversion, the benchmarks: :func:`load_config`), replaces it
with the number of classes of the config's datasets:

* ``metainfo=dict(classes=(...))`` of the dataset of ``train_dataloader`` / ``val_dataloader`` /
  ``test_dataloader`` (inside wrappers such as ``RepeatDataset``), else
* the dataset class's own ``METAINFO['classes']`` (``CocoDataset``: the 80 COCO classes, so the COCO configs build
  the models they always built; ``LVISV1Dataset``: 1203; ``CityscapesDataset``: 8).

All datasets of a config must list the same classes. A head that states a number instead is checked against the
dataset: a mismatch is a :class:`NumClassesError` naming the config key
(``model.roi_head.bbox_head[1].num_classes=80 ... but the dataset has 3 classes``), raised before any data is read.
:func:`check_model_num_classes` does the same for a built model (a head that leaves ``num_classes`` at its class's
default is only visible there). Class-agnostic heads (the RPN) and backbones are left out, as in mmdet's
``NumClassCheckHook``.

Code that loads a config with mmengine itself (mmdet's tools, ``Config.fromfile`` + ``MODELS.build``) gets the same:
once brs_detr is imported (``custom_imports=dict(imports=['brs_detr'])`` does it inside ``Config.fromfile``), every
config read from a file is resolved as it is created (:func:`resolve_on_load`, installed by
:mod:`brs_detr.registration`). brs-detr's own tools read the file with the markers kept (:func:`read_config`), merge
``--cfg-options`` (which may change the classes) and resolve then. With the classes in ``metainfo`` this imports
neither torch nor mmdet; only a dataset without ``metainfo`` needs its class from mmdet's registry.
"""
from __future__ import annotations

import contextlib
import os.path as osp
import threading
from typing import Any, Iterator, List, NamedTuple, Optional, Sequence, Tuple

from mmengine.config import Config

from .coco_check import DataCheckError

#: Value of ``num_classes`` that :func:`resolve_num_classes` replaces by the dataset's number of classes.
FROM_DATASET = 'from_dataset'
#: The config key every head's class count is written under.
NUM_CLASSES_KEY = 'num_classes'
#: Dataloaders whose datasets define the classes, in the order they are consulted.
SPLITS = ('train', 'val', 'test')
#: Top-level model parts that never predict the dataset's classes (a timm backbone has a ``num_classes`` of its own).
CLASS_FREE_PARTS = ('backbone', 'neck', 'data_preprocessor')


#: Largest value of a colour channel in a palette.
MAX_COLOUR_VALUE = 255


class NumClassesError(DataCheckError):
    """A head's ``num_classes`` disagrees with the dataset's classes, or the classes cannot be told."""


def dataset_leaves(dataset_cfg: dict, key: str) -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` of every dataset in a (possibly wrapped) dataset config that wraps none,
    e.g. ``('train_dataloader.dataset.dataset', {...})`` for a ``RepeatDataset``."""
    if isinstance(dataset_cfg.get('datasets'), (list, tuple)):
        for index, child in enumerate(dataset_cfg['datasets']):
            yield from dataset_leaves(child, f'{key}.datasets[{index}]')
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from dataset_leaves(dataset_cfg['dataset'], f'{key}.dataset')
    else:
        yield key, dataset_cfg


def split_datasets(cfg: Config, splits: Sequence[str]) -> Iterator[Tuple[str, dict]]:
    """``(config key, dataset config)`` of every unwrapped dataset of the ``<split>_dataloader`` of these splits
    (:func:`dataset_leaves`)."""
    for split in splits:
        loader = cfg.get(f'{split}_dataloader')
        if isinstance(loader, dict) and isinstance(loader.get('dataset'), dict):
            yield from dataset_leaves(loader['dataset'], f'{split}_dataloader.dataset')


def dataset_class(dataset_cfg: dict):
    """The dataset class a dataset config builds (its ``type`` looked up in mmdet's registry), or ``None``."""
    from mmdet.registry import DATASETS

    dataset_type = dataset_cfg.get('type')
    if isinstance(dataset_type, type):
        return dataset_type
    return DATASETS.get(dataset_type) if isinstance(dataset_type, str) else None


class DatasetClasses(NamedTuple):
    """The classes a config's datasets train and evaluate.

    Attributes:
        classes: The class names, in label order.
        source: Where they come from, as a config key (``train_dataloader.dataset.metainfo.classes``) or a dataset
            class (``CocoDataset.METAINFO['classes'] (train_dataloader.dataset has no metainfo)``).
    """
    classes: Tuple[str, ...]
    source: str


def _leaf_classes(dataset_cfg: dict, key: str) -> Optional[DatasetClasses]:
    """The classes of one (unwrapped) dataset config; ``None`` when its class cannot be resolved."""
    metainfo = dataset_cfg.get('metainfo')
    classes = metainfo.get('classes') if isinstance(metainfo, dict) else None
    if classes is not None:
        source = f'{key}.metainfo.classes'
    else:
        found = dataset_class(dataset_cfg)
        classes = getattr(found, 'METAINFO', {}).get('classes') if found is not None else None
        if classes is None:
            return None
        source = f'{found.__name__}.METAINFO[\'classes\'] ({key} has no metainfo)'
    if isinstance(classes, str):
        raise NumClassesError(f'{source} is the string {classes!r}, not a list of names: for one class write '
                              f'classes=({classes!r}, ) (a one-element tuple needs the comma)')
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) for c in classes):
        raise NumClassesError(f'{source} must be a non-empty list of class names, got {classes!r}')
    if len(set(classes)) != len(classes):
        doubles = sorted({name for name in classes if list(classes).count(name) > 1})
        raise NumClassesError(f'{source} lists {", ".join(doubles)} more than once')
    return DatasetClasses(tuple(classes), source)


def check_palettes(cfg: Config, splits: Sequence[str]) -> None:
    """The ``metainfo.palette`` of the datasets of these splits must draw their classes (the tools that draw call
    this before the model is built: ``test.py --show/--show-dir``, the demo, ``browse_dataset.py``).

    Raises:
        NumClassesError: Naming the palette's config key, its colours and the class count.
    """
    for key, leaf in split_datasets(cfg, splits):
        metainfo = leaf.get('metainfo')
        found = _leaf_classes(leaf, key)
        if isinstance(metainfo, dict) and found is not None:
            _check_palette(metainfo.get('palette'), len(found.classes), key)


def _is_colour(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_COLOUR_VALUE for v in value))


def _check_palette(palette: Any, num_classes: int, key: str) -> None:
    """A dataset's ``metainfo.palette`` as mmdet's ``get_palette`` reads it: a name (``'random'``, ``'coco'``, a
    colour name), one (R, G, B) colour for every class, or a list of at least one colour per class. mmdet's visualizer
    asserts the count only when it draws the first image (``tools/test.py --show-dir``, the demo), after the model was
    loaded, and reads a tuple of colours as one colour."""
    if palette is None or isinstance(palette, str) or _is_colour(palette):
        return
    if isinstance(palette, tuple) and palette and all(_is_colour(colour) for colour in palette):
        raise NumClassesError(f'{key}.metainfo.palette is a tuple of colours, which mmdet reads as one colour: write '
                              f'a list, palette=[{", ".join(map(str, palette[:2]))}, ...]')
    if not isinstance(palette, list) or not all(_is_colour(colour) for colour in palette):
        raise NumClassesError(f'{key}.metainfo.palette must be a list of (R, G, B) colours of integers 0-'
                              f'{MAX_COLOUR_VALUE}, got {palette!r}'[:400])
    if len(palette) < num_classes:
        raise NumClassesError(f'{key}.metainfo.palette has {len(palette)} colours for {num_classes} classes: mmdet '
                              f'draws each class in its own colour; give one (R, G, B) per class, or remove palette '
                              f'(the visualizer then picks colours)')


def dataset_classes(cfg: Config) -> Optional[DatasetClasses]:
    """The classes of the config's datasets (all of them must agree); ``None`` when it has no dataset.

    Raises:
        NumClassesError: Two datasets list different classes, or ``classes`` is a string.
    """
    found: List[DatasetClasses] = []
    for key, leaf in split_datasets(cfg, SPLITS):
        classes = _leaf_classes(leaf, key)
        if classes is not None:
            found.append(classes)
    if not found:
        return None
    first = found[0]
    for other in found[1:]:
        if other.classes != first.classes:
            raise NumClassesError(
                f'the datasets of the config list different classes: {first.source} = {_names(first.classes)} but '
                f'{other.source} = {_names(other.classes)}; give every dataloader\'s dataset the same '
                f'metainfo=dict(classes=...)')
    return first


def _names(classes: Sequence[str], limit: int = 6) -> str:
    shown = ', '.join(classes[:limit]) + (f', ... ({len(classes)} classes)' if len(classes) > limit else '')
    return f'({shown})'


def _num_classes_entries(node: Any, path: str) -> Iterator[Tuple[str, dict]]:
    """``(config key of the num_classes value, the dict holding it)`` for every ``num_classes`` under ``node``."""
    if isinstance(node, dict):
        if NUM_CLASSES_KEY in node:
            yield f'{path}.{NUM_CLASSES_KEY}', node
        for key, value in node.items():
            yield from _num_classes_entries(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _num_classes_entries(value, f'{path}[{index}]')


def heads_of_other_labels() -> tuple:
    """Head classes whose ``num_classes`` is not the dataset's: the class-agnostic RPN, the semantic head of HTC
    (stuff classes); left out as mmdet's ``NumClassCheckHook`` leaves them out."""
    from mmdet.models.dense_heads import RPNHead
    from mmdet.models.roi_heads.mask_heads import FusedSemanticHead

    return RPNHead, FusedSemanticHead


def _is_class_agnostic(head_cfg: dict) -> bool:
    """Whether a head config builds a head of :func:`heads_of_other_labels`."""
    from mmdet.registry import MODELS

    head_type = head_cfg.get('type')
    if isinstance(head_type, str):
        head_type = MODELS.get(head_type)
    return isinstance(head_type, type) and issubclass(head_type, heads_of_other_labels())


def resolve_num_classes(cfg: Config, require_dataset: bool = True) -> Optional[int]:
    """Replace every ``num_classes='from_dataset'`` of ``cfg`` by the datasets' class count; check the others.

    Args:
        cfg: The loaded config (``--cfg-options`` already merged), changed in place.
        require_dataset: Whether a ``'from_dataset'`` in a config without dataset is an error (else it stays).

    Returns:
        The number of classes of the config's datasets, or ``None`` when it has no dataset (then nothing is
        checked).

    Raises:
        NumClassesError: A ``num_classes='from_dataset'`` without a dataset; a head of ``cfg.model`` whose
            ``num_classes`` is another number than the dataset's (all of them are named, with their config keys);
            a ``num_classes`` that is neither an int nor ``'from_dataset'``; datasets that disagree.
    """
    found = dataset_classes(cfg)
    if found is None:
        unresolved = [key.lstrip('.') for key, node in _num_classes_entries(cfg._cfg_dict, '')
                      if node[NUM_CLASSES_KEY] == FROM_DATASET]
        if unresolved and require_dataset:
            raise NumClassesError(f'{unresolved[0]}={FROM_DATASET!r} but the config {_config_name(cfg)} has no '
                                  f'dataset (train/val/test_dataloader.dataset) to take the classes from')
        return None
    num_classes = len(found.classes)
    for _, node in _num_classes_entries(cfg._cfg_dict, ''):
        if node[NUM_CLASSES_KEY] == FROM_DATASET:
            node[NUM_CLASSES_KEY] = num_classes
    model = cfg.get('model')
    if isinstance(model, dict):
        check_config_num_classes(model, found)
    return num_classes


def check_config_num_classes(model_cfg: dict, found: DatasetClasses) -> None:
    """Every ``num_classes`` of the model config (class-agnostic heads and backbones left out) must be the
    datasets' number of classes.

    Raises:
        NumClassesError: Naming every disagreeing config key and its head type, in one line.
    """
    num_classes = len(found.classes)
    wrong, malformed = [], []
    for part, part_cfg in model_cfg.items():
        if part in CLASS_FREE_PARTS:
            continue
        for key, node in _num_classes_entries(part_cfg, f'model.{part}'):
            value = node[NUM_CLASSES_KEY]
            if isinstance(value, bool) or not isinstance(value, int):
                malformed.append(f'{key}={value!r}')
            elif value != num_classes and not _is_class_agnostic(node):
                head = node.get('type')
                head = getattr(head, '__name__', head)
                wrong.append(f'{key}={value}' + (f' ({head})' if head else ''))
    if malformed:
        raise NumClassesError(f'{", ".join(malformed)}: num_classes must be a number or {FROM_DATASET!r} (the '
                              f'number of classes of the dataset, {num_classes} here)')
    if wrong:
        raise NumClassesError(
            f'{", ".join(wrong)} but the dataset has {num_classes} classes ({found.source} = '
            f'{_names(found.classes)}); set {"it" if len(wrong) == 1 else "them"} to {FROM_DATASET!r} to follow the '
            f'dataset')


def check_model_num_classes(model, num_classes: int) -> None:
    """Every module of a built model that has an int ``num_classes`` predicts ``num_classes`` classes (RPN and
    semantic heads, and backbones, necks and data preprocessors, left out).

    Raises:
        NumClassesError: Naming the modules, their types and the config keys they come from.
    """
    wrong: List[Tuple[str, str]] = []
    for name, module in model.named_modules():
        value = getattr(module, NUM_CLASSES_KEY, None)
        if (not name or name.split('.')[0] in CLASS_FREE_PARTS or isinstance(module, heads_of_other_labels())
                or isinstance(value, bool) or not isinstance(value, int) or value == num_classes):
            continue
        if not any(name.startswith(f'{head}.') for head, _ in wrong):  # not a part of a head already named
            wrong.append((name, f'{name} ({type(module).__name__}) predicts {value} classes'))
    if wrong:
        raise NumClassesError(f'{"; ".join(text for _, text in wrong)} but the dataset has {num_classes} classes: '
                              f'set num_classes of {"that head" if len(wrong) == 1 else "those heads"} in the config '
                              f'(model.{_config_key(wrong[0][0])}) to {FROM_DATASET!r}')


def _config_key(module_name: str) -> str:
    """``roi_head.bbox_head.1`` -> ``roi_head.bbox_head[1]`` (how the config writes a list item)."""
    parts = module_name.split('.')
    return ''.join(f'[{part}]' if part.isdigit() else f'.{part}' for part in parts).lstrip('.')


def _config_name(cfg: Config) -> str:
    return osp.basename(cfg.filename) if cfg.filename else '(in memory)'


_loading = threading.local()


@contextlib.contextmanager
def markers_kept() -> Iterator[None]:
    """Within this block, configs read from files keep their ``'from_dataset'`` (:func:`resolve_on_load` waits)."""
    previous = getattr(_loading, 'keep_markers', False)
    _loading.keep_markers = True
    try:
        yield
    finally:
        _loading.keep_markers = previous


def read_config(path: str) -> Config:
    """``Config.fromfile(path)`` with the ``'from_dataset'`` markers kept: for code that changes the config
    (``--cfg-options``) before :func:`resolve_num_classes`."""
    with markers_kept():
        return Config.fromfile(path)


def load_config(path: str) -> Config:
    """``Config.fromfile(path)`` with :func:`resolve_num_classes` applied: how brs-detr loads every config."""
    cfg = read_config(path)
    resolve_num_classes(cfg)
    return cfg


def has_markers(cfg: Config) -> bool:
    """Whether any ``num_classes`` of ``cfg`` is ``'from_dataset'``."""
    return any(node[NUM_CLASSES_KEY] == FROM_DATASET for _, node in _num_classes_entries(cfg._cfg_dict, ''))


def resolve_on_load(cfg: Config) -> None:
    """What a config read from a file goes through once brs_detr is imported (unless in :func:`markers_kept`):
    :func:`resolve_num_classes`, a config without dataset keeping its markers."""
    if not getattr(_loading, 'keep_markers', False) and has_markers(cfg):
        resolve_num_classes(cfg, require_dataset=False)


__all__ = [
    'FROM_DATASET', 'NumClassesError', 'DatasetClasses', 'dataset_classes', 'resolve_num_classes',
    'check_config_num_classes', 'check_model_num_classes', 'heads_of_other_labels', 'load_config', 'read_config',
    'markers_kept', 'resolve_on_load', 'dataset_leaves', 'dataset_class'
]
