"""mmdet's DetInferencer with brs-detr's safe and strict weight loading, glob inputs and atomic PNG/JSON outputs."""
from __future__ import annotations

import json
import logging
import os.path as osp
import warnings
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import cv2
import mmcv
import mmengine
import numpy as np
import torch
from mmengine.config import Config, ConfigDict
from mmengine.dataset import pseudo_collate
from mmengine.logging import print_log
from mmengine.visualization import Visualizer
from torch import nn

from mmdet.apis import DetInferencer
from mmdet.evaluation import get_classes
from mmdet.registry import DATASETS
from mmdet.structures import DetDataSample

from brs_detr.analysis.score_threshold import ScoreThreshold, resolve_score_threshold
from brs_detr.datasets.num_classes import resolve_num_classes
from brs_detr.engine.runner.model_build import named_build_errors
from brs_detr.fileio.atomic_io import atomic_write_text
from .drawing import visualizer_config, write_png
from .image_inputs import ImageInputError, collect_images, output_names
from .runtime import resolve_device
from .config_loading import check_cfg_options, check_config_components, read_config
from .weights import load_weights_strictly

InputType = Union[str, np.ndarray]

#: Sub-folders of ``out_dir`` for drawn images and predictions (mmdet's layout).
VIS_SUBDIR = 'vis'
PRED_SUBDIR = 'preds'
#: Name of the palette argument that keeps the palette of the config or checkpoint.
PALETTE_FROM_MODEL = 'none'
#: ``pred_score_thr`` handed to mmdet's visualizer once the detections are filtered by their class's threshold.
DRAW_ALL = -1.0


def read_rgb(image: InputType) -> np.ndarray:
    """An input as an RGB uint8 image (H, W, 3): a file is decoded, an array is taken as BGR (as the model takes it).

    Raises:
        ImageInputError: The file cannot be decoded.
    """
    if isinstance(image, np.ndarray):
        bgr = image
    else:
        bgr = mmcv.imfrombytes(mmengine.fileio.get(image))
        if bgr is None:
            raise ImageInputError(f'cannot read image {image}: OpenCV cannot decode it')
    if bgr.ndim == 2:
        bgr = cv2.cvtColor(bgr, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(bgr[..., ::-1])


class _FileNamingPipeline:
    """The test pipeline, turning a failure to decode an input file into an :class:`ImageInputError` naming it.

    Other failures of the pipeline propagate unchanged (they are bugs of the pipeline, not of the input).
    """

    def __init__(self, pipeline: Callable[[Any], dict]) -> None:
        self.pipeline = pipeline

    def __call__(self, inputs: Any) -> dict:
        try:
            return self.pipeline(inputs)
        except Exception as error:
            path = inputs.get('img_path') if isinstance(inputs, dict) else inputs
            if isinstance(path, str) and not _decodable(path):
                raise ImageInputError(f'cannot read image {path}: {type(error).__name__}: {error}') from error
            raise


def _decodable(path: str) -> bool:
    """Whether ``path`` is a file OpenCV can decode."""
    try:
        return osp.isfile(path) and mmcv.imread(path) is not None
    except Exception:
        return False


class BRSDetInferencer(DetInferencer):
    """mmdet's :class:`~mmdet.apis.DetInferencer` as a command-line demo needs it.

    What changed, and why:

    * Weights are loaded with brs-detr's safe loader (``torch.load(weights_only=True)``; full unpickling only for
      trusted files, such as the checkpoints the user's own Runner saved, see :mod:`brs_detr.fileio.checkpoint`) and
      **strictly**: weights of another model raise :class:`~brs_detr.apis.weights.WeightsMismatchError` listing the
      keys instead of drawing the detections of a half-random network.
    * Class names: the checkpoint's ``dataset_meta``, else the config's test dataset ``metainfo`` (mmdet jumps to the
      80 COCO classes, which mislabels every model of a custom data set), else COCO's with a warning.
    * Inputs: files, folders and glob patterns (``**`` recurses), expanded and checked before the model is built
      (:func:`~brs_detr.apis.image_inputs.collect_images`); an undecodable image raises
      :class:`~brs_detr.apis.image_inputs.ImageInputError` naming it.
    * Outputs: ``out_dir/vis/<name>.png`` (lossless PNG, whatever the input format) and ``out_dir/preds/<name>.json``
      (mmdet's keys ``labels``, ``scores``, ``bboxes``, ``masks``), both written atomically; ``<name>`` is the input's
      stem, made distinct when two inputs share one (:func:`~brs_detr.apis.image_inputs.output_names`).
    * A model component that refuses its arguments is named by its config keys in one line.
    * The visualizer gets no vis backends: drawing needs no display and writes nothing but the PNG files.
    * ``device=None`` picks CUDA when available, else the CPU; a CUDA device that does not exist fails clearly.
    * The score threshold of the drawing (``pred_score_thr``) defaults to the thresholds chosen for the checkpoint on
      its validation set (``<weights>.score_thr.json`` of ``tools/analysis_tools/choose_score_threshold.py``, one
      per class), else 0.3; a number given explicitly wins (:meth:`score_threshold`).

    Args:
        model: Config file (or Config/dict); ``None`` reads the config stored in ``weights``.
        weights: Checkpoint file or URL; ``None`` keeps the random initialization (with a warning).
        device: See :func:`~brs_detr.apis.runtime.resolve_device`.
        scope: Registry scope (mmdet).
        palette: ``'none'`` (the config's, else the checkpoint's palette), ``'coco'``, ``'voc'``, ``'citys'``,
            ``'random'`` or a list of RGB tuples.
        show_progress: Show a progress bar.
        cfg_options: Config keys to override (``--cfg-options``; each key must exist in the config, or be written
            ``+key`` to add it, see :func:`~brs_detr.apis.launch.check_cfg_options`).
    """

    def __init__(self,
                 model: Union[str, ConfigDict, dict, None] = None,
                 weights: Optional[str] = None,
                 device: Optional[str] = None,
                 scope: Optional[str] = 'mmdet',
                 palette: Union[str, Sequence[tuple]] = PALETTE_FROM_MODEL,
                 show_progress: bool = True,
                 cfg_options: Optional[dict] = None) -> None:
        self._weights_source = weights
        self._config_source = model if isinstance(model, str) else getattr(model, 'filename', None)
        self._output_names: Dict[str, str] = {}
        self._num_array_inputs = 0
        if cfg_options and model is None:
            raise ValueError('cfg_options need a config (model)')
        if isinstance(model, str):  # a syntax error, a missing _base_, a bad option: one line naming it
            model = read_config(model, cfg_options)  # num_classes resolved after the options
        elif model is not None:
            model = model if isinstance(model, Config) else Config(dict(model))
            if cfg_options:
                model.merge_from_dict(check_cfg_options(model, cfg_options))
            resolve_num_classes(model)  # every head gets the datasets' class count (one place for the classes)
        if isinstance(model, Config):
            check_config_components(model)  # an unknown type: named before the model is built
        super().__init__(model=model, weights=weights, device=resolve_device(device), scope=scope, palette=palette,
                         show_progress=show_progress)

    # ------------------------------------------------------------------ score threshold
    def score_threshold(self, explicit: Union[None, float, ScoreThreshold] = None) -> ScoreThreshold:
        """The threshold of the drawing: ``explicit`` if given, else the checkpoint's chosen thresholds
        (``<weights>.score_thr.json``), else 0.3 (:func:`~brs_detr.analysis.score_threshold.resolve_score_threshold`).
        """
        if isinstance(explicit, ScoreThreshold):
            return explicit
        return resolve_score_threshold(explicit, self._weights_source, self.model.dataset_meta['classes'],
                                       warn=lambda message: print_log(message, logger='current',
                                                                      level=logging.WARNING))

    def __call__(self, inputs, *args, pred_score_thr: Union[None, float, ScoreThreshold] = None, **kwargs) -> dict:
        """mmdet's call; ``pred_score_thr=None`` draws with :meth:`score_threshold`'s threshold."""
        return super().__call__(inputs, *args, pred_score_thr=self.score_threshold(pred_score_thr), **kwargs)

    # ------------------------------------------------------------------ model
    def _init_model(self, cfg: ConfigDict, weights: Optional[str], device: str = 'cpu') -> nn.Module:
        """mmengine's, except that a model component refusing its arguments is named by its config keys
        (:class:`~brs_detr.engine.runner.model_build.ModelBuildError`)."""
        with named_build_errors(cfg.get('model') if cfg else None):
            return super()._init_model(cfg, weights, device)

    def _load_weights_to_model(self, model: nn.Module, checkpoint: Optional[dict], cfg: Optional[ConfigDict]) -> None:
        """Load the weights strictly, then set ``model.dataset_meta`` (classes, palette)."""
        if checkpoint is not None:
            load_weights_strictly(model, checkpoint, self._weights_source or 'the checkpoint', self._config_source)
        else:
            warnings.warn('no weights given: the detections come from a randomly initialized model')
        model.dataset_meta = self._dataset_meta(model, checkpoint, cfg)

    @staticmethod
    def _config_metainfo(cfg: Optional[ConfigDict]) -> dict:
        """``metainfo`` of the config's test dataset (built lazily: no annotation file is read); ``{}`` if none."""
        dataset_cfg = (cfg or {}).get('test_dataloader', {}).get('dataset')
        if not dataset_cfg:
            return {}
        dataset_cfg = dataset_cfg.copy()
        dataset_cfg['lazy_init'] = True
        try:
            return dict(DATASETS.build(dataset_cfg).metainfo)
        except Exception as error:  # a dataset class that cannot be built lazily: keep the other sources
            warnings.warn(f'could not read the class names of the config\'s test dataset ({error})')
            return {}

    def _dataset_meta(self, model: nn.Module, checkpoint: Optional[dict], cfg: Optional[ConfigDict]) -> dict:
        checkpoint_meta = checkpoint.get('meta', {}) if isinstance(checkpoint, dict) else {}
        config_meta = self._config_metainfo(cfg)
        if 'dataset_meta' in checkpoint_meta:
            meta = {key.lower(): value for key, value in checkpoint_meta['dataset_meta'].items()}
        elif 'CLASSES' in checkpoint_meta:  # mmdet 2.x checkpoints
            meta = {'classes': checkpoint_meta['CLASSES']}
        elif config_meta.get('classes'):
            meta = {'classes': config_meta['classes']}
        else:
            warnings.warn('the class names are neither in the checkpoint nor in the config: using the COCO classes')
            meta = {'classes': get_classes('coco')}
        meta['classes'] = self._enough_class_names(model, list(meta['classes']))
        # palette priority as in mmdet: argument, then config, then checkpoint, then random
        if self.palette != PALETTE_FROM_MODEL:
            meta['palette'] = self.palette
        elif config_meta.get('palette') is not None:
            meta['palette'] = config_meta['palette']
        elif 'palette' not in meta:
            meta['palette'] = 'random'
        return meta

    @staticmethod
    def _enough_class_names(model: nn.Module, classes: List[str]) -> List[str]:
        """Append ``class N`` names when the model predicts more classes than there are names (else labels crash
        the visualizer with an IndexError)."""
        num_classes = max((module.num_classes for module in model.modules()
                           if isinstance(getattr(module, 'num_classes', None), int)), default=len(classes))
        if num_classes > len(classes):
            warnings.warn(f'the model predicts {num_classes} classes but {len(classes)} class names are known: the '
                          f'others are drawn as "class N"')
            classes = classes + [f'class {label}' for label in range(len(classes), num_classes)]
        return classes

    def _init_collate(self, cfg: ConfigDict) -> Callable:
        """``pseudo_collate`` unless the config's test dataloader names a ``collate_fn`` (mmengine would look it up in a
        registry scope mmdet does not have and warn about it)."""
        if cfg.get('test_dataloader', {}).get('collate_fn') is None:
            return pseudo_collate
        return super()._init_collate(cfg)

    def _init_pipeline(self, cfg: ConfigDict) -> Callable[[Any], dict]:
        return _FileNamingPipeline(super()._init_pipeline(cfg))

    def _init_visualizer(self, cfg: ConfigDict) -> Optional[Visualizer]:
        """mmdet's visualizer of the config (``DetLocalVisualizer`` if it names none), without vis backends."""
        cfg.visualizer = visualizer_config(cfg)
        return super()._init_visualizer(cfg)

    # ------------------------------------------------------------------ inputs and names
    def _inputs_to_list(self, inputs: Union[InputType, Sequence[InputType]]) -> list:
        """Expand file, folder and glob inputs (:func:`collect_images`) and give every image its output name."""
        items = [inputs] if isinstance(inputs, (str, np.ndarray)) else list(inputs)
        if all(isinstance(item, str) for item in items):
            result = collect_images(items)
        else:
            result = [image for item in items
                      for image in (collect_images([item]) if isinstance(item, str) else [item])]
        self._output_names.update(output_names([item for item in result if isinstance(item, str)]))
        return result

    def _output_name(self, single_input: InputType) -> str:
        if isinstance(single_input, str):
            return self._output_names.get(single_input) or osp.splitext(osp.basename(single_input))[0]
        name = f'{self._num_array_inputs:08d}'
        self._num_array_inputs += 1
        return name

    # ------------------------------------------------------------------ outputs
    def visualize(self,
                  inputs: List[InputType],
                  preds: List[DetDataSample],
                  return_vis: bool = False,
                  show: bool = False,
                  wait_time: float = 0,
                  draw_pred: bool = True,
                  pred_score_thr: Union[None, float, ScoreThreshold] = None,
                  no_save_vis: bool = False,
                  img_out_dir: str = '',
                  **kwargs) -> Optional[List[np.ndarray]]:
        """Draw the predictions with scores above ``pred_score_thr`` (one value, or the per-class thresholds of a
        :class:`~brs_detr.analysis.score_threshold.ScoreThreshold`; ``None``: :meth:`score_threshold`) and save
        ``img_out_dir/vis/<name>.png``.

        Returns:
            The drawn RGB images when anything was drawn, else ``None`` (as mmdet).
        """
        names = [self._output_name(single_input) for single_input in inputs]
        for pred, name in zip(preds, names):
            pred.set_metainfo(dict(output_name=name))  # read by pred2dict
        if no_save_vis:
            img_out_dir = ''
        if not show and not img_out_dir and not return_vis:
            return None
        if self.visualizer is None:
            raise ValueError('drawing needs a "visualizer" in the config')
        threshold = self.score_threshold(pred_score_thr)
        drawn_images = []
        for single_input, pred, name in zip(inputs, preds, names):
            self.visualizer.add_datasample(
                name,
                read_rgb(single_input),
                # above their class's threshold; the visualizer applies numpy functions to the boxes
                self._above_threshold(pred, threshold).cpu().numpy(),
                show=show,
                wait_time=wait_time,
                draw_gt=False,
                draw_pred=draw_pred,
                pred_score_thr=DRAW_ALL,
                out_file=None)
            drawn = self.visualizer.get_image()
            if img_out_dir:
                write_png(drawn, osp.join(img_out_dir, VIS_SUBDIR, f'{name}.png'))
            drawn_images.append(drawn)
            self.num_visualized_imgs += 1
        return drawn_images

    def _above_threshold(self, pred: DetDataSample, threshold: ScoreThreshold) -> DetDataSample:
        """A copy of ``pred`` with the instances above their class's threshold only (``pred`` is saved whole)."""
        if 'pred_instances' not in pred:
            return pred
        instances = pred.pred_instances
        keep = threshold.keep(instances.scores.detach().cpu().numpy(), instances.labels.detach().cpu().numpy(),
                              self.model.dataset_meta['classes'])
        shown = pred.clone()
        shown.pred_instances = instances[torch.from_numpy(keep).to(instances.scores.device)]
        return shown

    def pred2dict(self, data_sample: DetDataSample, pred_out_dir: str = '') -> Dict:
        """mmdet's prediction dict; saved atomically to ``pred_out_dir/preds/<name>.json`` when a folder is given."""
        result = super().pred2dict(data_sample, pred_out_dir='')
        if pred_out_dir:
            if 'panoptic_seg' in result:
                raise NotImplementedError('saving panoptic segmentation predictions is not supported by this demo')
            name = data_sample.metainfo.get('output_name')
            if name is None:
                name = f'{self.num_predicted_imgs:08d}'
                self.num_predicted_imgs += 1
            atomic_write_text(json.dumps(result), osp.join(pred_out_dir, PRED_SUBDIR, f'{name}.json'))
        return result
