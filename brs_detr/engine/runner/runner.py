"""mmengine's Runner with crash-safe work_dir files and checkpoints that must fit the model."""
from __future__ import annotations

import logging
import os
import os.path as osp
import re
from typing import Any, Callable, List, Optional, Union

from mmengine.logging import print_log
from mmengine.model import BaseTTAModel, is_model_wrapper
from mmengine.evaluator import Evaluator
from mmengine.runner import Runner
from torch.utils.data import DataLoader
from mmengine.runner.checkpoint import _load_checkpoint, _load_checkpoint_to_model

from mmdet.registry import RUNNERS

from brs_detr.datasets.coco_check import DataCheckError, format_listed
from brs_detr.datasets.num_classes import dataset_classes
from brs_detr.fileio.atomic_io import atomic_write_text
from brs_detr.fileio.checkpoint import CheckpointReadError, check_checkpoint_readable
from ..work_dir import LAST_CHECKPOINT_MARKER, RESUMABLE_CHECKPOINT, resolve_last_checkpoint
from .checkpoint_fit import state_dict_fit
from .class_weights import checkpoint_class_names, checkpoint_num_classes, class_dependent_weights
from .config_changes import config_changes, describe_config_changes
from .model_build import named_build_errors

#: How strictly a checkpoint loaded with ``load_from`` must fit the model (resuming is always exact):
#: ``'fine-tune'`` (training) lets class-dependent weights differ, ``'weights'`` (testing) nothing.
FIT_POLICIES = ('fine-tune', 'weights')
#: Buffers a checkpoint of the same model may lack without changing its predictions (older BatchNorm checkpoints).
OPTIONAL_BUFFER_SUFFIXES = ('num_batches_tracked', )


class CheckpointFitError(ValueError):
    """A checkpoint does not fit the model: another model, backbone or number of classes."""


def _is_complete(path: str) -> bool:
    try:
        check_checkpoint_readable(path)
    except (OSError, CheckpointReadError):
        return False
    return True


def find_resumable_checkpoint(work_dir: str) -> Optional[str]:
    """The checkpoint ``--resume`` continues from: the one ``last_checkpoint`` names, if it is complete, else the
    newest complete ``epoch_N.pth``/``iter_N.pth`` of ``work_dir`` (with a warning); ``None`` when there is none.

    ``last_checkpoint`` resolves inside ``work_dir`` (:func:`~brs_detr.engine.work_dir.resolve_last_checkpoint`): a
    relative name, or an absolute one of the work_dir's former place (copied or moved) whose file is here.
    """
    marker = osp.join(work_dir, LAST_CHECKPOINT_MARKER)
    named = None
    if osp.isfile(marker):
        with open(marker, encoding='utf-8') as file:
            named = file.read().strip() or None
        if named is not None:
            path, note = resolve_last_checkpoint(work_dir, named)
            if osp.isfile(path) and _is_complete(path):
                if note is not None:
                    print_log(note, logger='current')
                return path
    candidates: List[str] = []
    if osp.isdir(work_dir):
        candidates = [osp.join(work_dir, name) for name in os.listdir(work_dir) if RESUMABLE_CHECKPOINT.match(name)]
    candidates = sorted((path for path in candidates if _is_complete(path)), key=osp.getmtime)
    if not candidates:
        return None
    if named is not None or osp.isfile(marker):
        print_log(f'{marker} names {named or "nothing"}, which is missing or incomplete; resuming from the newest '
                  f'complete checkpoint {candidates[-1]} instead', logger='current', level=logging.WARNING)
    return candidates[-1]


def revised_key(key: str, revise_keys: list) -> str:
    """A checkpoint key after mmengine's ``revise_keys`` (``(pattern, replacement)`` pairs, e.g. no ``module.``)."""
    for pattern, replacement in revise_keys:
        key = re.sub(pattern, replacement, key)
    return key


def _listed(keys: List[str], limit: int = 5) -> str:
    return ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')


def _head_classes(model, heads: List[str]) -> List[int]:
    """``num_classes`` of each named head of ``model``."""
    modules = dict(model.named_modules())
    return [modules[head].num_classes for head in heads]


@RUNNERS.register_module()
class ReliableRunner(Runner):
    """mmengine's :class:`~mmengine.runner.Runner`, with what changes listed here (``tools/train.py`` and
    ``tools/test.py`` use it unless the config names a ``runner_type``).

    * The config dump in the work_dir is written atomically (mmengine truncates and rewrites it in place).
    * ``resume=True`` without ``load_from`` resumes from :func:`find_resumable_checkpoint`: when ``last_checkpoint``
      is missing, empty or names a file that is gone or truncated, the newest complete checkpoint is used instead
      of failing (mmengine then tries to load an empty path); its name resolves inside the work_dir, so a copied
      or moved work_dir resumes from its own files (mmengine: from the absolute path of the original).
    * A model, dataloader or evaluator component that refuses its arguments (``model.backbone.depth=19``,
      ``RandomFlip(prob=1.5)``) raises :class:`ComponentBuildError`
      naming its config keys (mmengine: the component's own exception, through the registry's frames).
    * A test run (:attr:`dump_config_in_log_dir`) dumps its config into its timestamped log folder, not over the
      config dump of the training run whose work_dir it shares (mmdet's default work_dir is the same for both).
    * A checkpoint's state dict is compared with the model's before anything is loaded:

      - resuming needs an exact fit (mmengine loads with ``strict=False``: a checkpoint of another model resumes
        with a warning and partly random weights);
      - ``load_from`` with ``checkpoint_fit='fine-tune'`` (training) loads every weight that fits; the class
        layers of the heads may have another number of classes (fine-tuning a COCO model on a data set with 3
        classes): they keep the model's own initialisation (e.g. the classifiers' prior bias) and are listed in the
        log, key by key, with both shapes (:mod:`brs_detr.engine.runner.class_weights`). Anything else that does
        not fit (a missing, unexpected or reshaped weight that is not a class layer) is refused: no silent partial
        load;
      - ``checkpoint_fit='weights'`` (testing) refuses any missing or reshaped weight.

      Resuming from a checkpoint saved with other settings (another experiment in the same work_dir, or a schedule
      changed on purpose) logs the changed config keys as a warning (:mod:`~brs_detr.engine.runner.config_changes`).

      A missing BatchNorm ``num_batches_tracked`` counter is tolerated (it does not change predictions). The error
      (:class:`CheckpointFitError`) names the file, counts what fits and lists the first mismatching keys with
      their shapes.
    """

    #: How strictly a ``load_from`` checkpoint must fit (one of :data:`FIT_POLICIES`); set by the tools.
    checkpoint_fit: str = 'fine-tune'
    #: Dump the config into the run's ``<work_dir>/<timestamp>/`` folder instead of the work_dir (set for test runs,
    #: before the Runner is built: the parent dumps the config while it is built).
    dump_config_in_log_dir: bool = False
    #: ``last_checkpoint`` may hold a name relative to the work_dir (read by :func:`find_resumable_checkpoint`).
    resolves_relative_last_checkpoint = True
    _resuming = False

    def build_model(self, model):
        """mmengine's, except that a component refusing its arguments raises
        :class:`~brs_detr.engine.runner.model_build.ModelBuildError` naming its config keys."""
        with named_build_errors(model):
            return super().build_model(model)

    def build_dataloader(self, dataloader: Union[DataLoader, dict], seed: Optional[int] = None,
                         diff_rank_seed: bool = False) -> DataLoader:
        """mmengine's (a static method there; the loops call it on the Runner), except that a dataset, transform or
        sampler refusing its arguments raises :class:`~brs_detr.engine.runner.model_build.ComponentBuildError`
        naming its config keys (``train_dataloader.dataset.pipeline.3 (RandomFlip)``)."""
        with named_build_errors(dataloader, self._config_key(dataloader, 'dataloader')):
            return Runner.build_dataloader(dataloader, seed=seed, diff_rank_seed=diff_rank_seed)

    def build_evaluator(self, evaluator: Union[dict, list, Evaluator]) -> Evaluator:
        """mmengine's, except that a metric refusing its arguments raises
        :class:`~brs_detr.engine.runner.model_build.ComponentBuildError` naming its config keys."""
        key = self._config_key(evaluator, 'evaluator')
        with named_build_errors(evaluator if isinstance(evaluator, dict) else dict(metrics=evaluator), key):
            return super().build_evaluator(evaluator)

    def _config_key(self, built: Any, kind: str) -> str:
        """The config key (``val_dataloader``, ``test_evaluator``) whose value ``built`` is, else ``kind``."""
        for split in ('train', 'val', 'test'):
            if self.cfg.get(f'{split}_{kind}') is built or (isinstance(built, (dict, list))
                                                            and self.cfg.get(f'{split}_{kind}') == built):
                return f'{split}_{kind}'
        return kind

    def dump_config(self) -> None:
        """Write the config into the work_dir (or the log folder, see :attr:`dump_config_in_log_dir`) atomically
        (only on the main process, as the parent does)."""
        from mmengine.dist import is_main_process
        if not is_main_process():
            return
        filename = osp.basename(self.cfg.filename) if self.cfg.filename is not None else f'{self.timestamp}.py'
        folder = self.log_dir if getattr(self, 'dump_config_in_log_dir', False) else self.work_dir
        atomic_write_text(self.cfg.dump(), osp.join(folder, filename))  # dump() returns the text

    def load_or_resume(self) -> None:
        if not self._has_loaded and self._resume and self._load_from is None:
            found = find_resumable_checkpoint(self.work_dir)
            if found is not None:
                self.logger.info(f'Auto resumed from the latest checkpoint {found}.')
                self._load_from = found
            else:
                self.logger.warning(f'resume=True but {self.work_dir} has no checkpoint: training starts from '
                                    'scratch')
                self._resume = False
        super().load_or_resume()

    def resume(self, filename: str, resume_optimizer: bool = True, resume_param_scheduler: bool = True,
               map_location: Union[str, Callable] = 'default') -> None:
        self._resuming = True
        try:
            super().resume(filename, resume_optimizer, resume_param_scheduler, map_location)
        finally:
            self._resuming = False

    def _check_fit(self, filename: str, checkpoint: dict, model, revise_keys: list) -> List[str]:
        """Refuse a checkpoint that does not fit by :attr:`checkpoint_fit`; the keys not to load (class layers).

        Returns:
            The model's keys of the class-dependent weights that keep the model's initialisation.
        """
        state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
        if not isinstance(state, dict):
            raise CheckpointFitError(f'{filename} holds no state dict (expected a dict with "state_dict")')
        state = {revised_key(key, revise_keys): value for key, value in state.items()}
        if self.checkpoint_fit not in FIT_POLICIES:
            raise ValueError(f'checkpoint_fit must be one of {FIT_POLICIES}, got {self.checkpoint_fit!r}')
        model_state = model.state_dict()
        fit = state_dict_fit(model_state, state)
        if fit.exact:
            return []
        config = self.cfg.filename or 'the config'
        if self._resuming:
            raise CheckpointFitError(f'cannot resume from {filename}: it is not a checkpoint of the model of '
                                     f'{config} ({fit.describe()}). Resume with the config it was trained with.')
        missing_weights = [key for key in fit.missing if not key.endswith(OPTIONAL_BUFFER_SUFFIXES)]
        if self.checkpoint_fit == 'weights':
            if missing_weights or fit.reshaped:
                raise CheckpointFitError(f'the weights {filename} do not fit the model of {config} '
                                         f'({fit.describe()}): they were trained with another config (model, '
                                         'backbone or number of classes)')
            return []
        return self._class_weights_to_skip(filename, checkpoint, model, model_state, state, fit, missing_weights)

    def _class_weights_to_skip(self, filename: str, checkpoint: dict, model, model_state: dict, state: dict,
                               fit, missing_weights: List[str]) -> List[str]:
        """``load_from`` while fine-tuning: class layers may differ (logged), nothing else may."""
        config = self.cfg.filename or 'the config'
        reshaped = [key for key in state if key in model_state and tuple(state[key].shape) != tuple(
            model_state[key].shape)]
        split = class_dependent_weights(model, {k: tuple(v.shape) for k, v in model_state.items()},
                                        {k: tuple(v.shape) for k, v in state.items() if hasattr(v, 'shape')},
                                        reshaped, checkpoint_num_classes(checkpoint))
        if fit.num_loaded == 0:
            raise CheckpointFitError(f'nothing in {filename} fits the model of {config} ({fit.describe()}): it is '
                                     'a checkpoint of another model')
        if missing_weights or fit.unexpected or split.other:
            problems = [f'{len(keys)} {what}: {_listed(keys)}' for keys, what in (
                (missing_weights, 'missing from the checkpoint'), (split.other, 'with another shape that is not a '
                                                                    'class layer of a head'),
                (fit.unexpected, 'in the checkpoint but not in the model')) if keys]
            raise CheckpointFitError(
                f'load_from {filename} does not fit the model of {config} beyond its class-dependent weights '
                f'({"; ".join(problems)}): it is a checkpoint of another model. To initialise only a part of the '
                'model from it (e.g. the backbone), give that part init_cfg=dict(type="Pretrained", '
                'checkpoint=..., prefix=...) instead of load_from.')
        if split.class_weights:
            theirs = (f'{split.checkpoint_classes} classes' if split.checkpoint_classes is not None else
                      'another number of classes') + (' (its meta)' if split.classes_source == 'meta' else
                                                     ' (as its weights imply)')
            ours = sorted(set(_head_classes(model, [weight.head for weight in split.class_weights])))
            self.logger.warning(
                f'load_from {filename}: the checkpoint has {theirs}, the model {"/".join(map(str, ours))}: '
                f'{len(split.class_weights)} class-dependent weights are not loaded and keep the model\'s '
                f'initialisation: {"; ".join(weight.describe() for weight in split.class_weights)}. Every other '
                'weight was loaded.')
        return [weight.key for weight in split.class_weights]

    def _check_class_names(self, filename: str, checkpoint: dict) -> None:
        """The checkpoint's class names (its meta) against the config's datasets', when both have as many classes.

        The same names in another order would evaluate (or resume training of) every class under another's name:
        refused, except when fine-tuning with ``load_from`` (the class layers start swapped and are trained again:
        a warning). Other names of the same count are what fine-tuning to another data set is; for testing they are
        named in a warning (the results are reported under the config's names).
        """
        theirs = checkpoint_class_names(checkpoint)
        try:
            found = dataset_classes(self.cfg)
        except DataCheckError:  # the tools report the config's own inconsistency before this
            found = None
        if theirs is None or found is None or len(theirs) != len(found.classes) or theirs == found.classes:
            return
        ours = found.classes
        if sorted(theirs) == sorted(ours):
            moved = [f'{name!r} is label {theirs.index(name)} there, {ours.index(name)} here' for name in ours
                     if theirs.index(name) != ours.index(name)]
            message = (f'{filename} was trained with the classes in another order than {found.source} lists them '
                       f'({format_listed(moved, 4)})')
            if self.checkpoint_fit == 'fine-tune' and not self._resuming:
                self.logger.warning(f'load_from {message}: its class layers start swapped and fine-tuning has to '
                                    f'learn them again; list the classes in the checkpoint\'s order '
                                    f'({list(theirs)}) to start from what it learnt')
                return
            raise CheckpointFitError(f'{message}: every class would be {"trained" if self._resuming else "evaluated"} '
                                     f'under another\'s name. List the classes in the checkpoint\'s order: '
                                     f'{list(theirs)} (and the categories of the annotation files in that order)')
        if self.checkpoint_fit == 'weights':
            self.logger.warning(f'{filename} was trained on the classes {format_listed(list(theirs), 6)}; '
                                f'{found.source} names {format_listed(list(ours), 6)}: the results are reported '
                                f'under the config\'s names, label by label')

    def load_checkpoint(self, filename: str, map_location: Union[str, Callable] = 'cpu', strict: bool = False,
                        revise_keys: list = [(r'^module.', '')]):  # noqa: B006  (the parent's signature)
        """The parent's steps (read, ``after_load_checkpoint`` hooks, load into the model), with the fit check
        before the weights are loaded."""
        checkpoint = _load_checkpoint(filename, map_location=map_location)
        self.call_hook('after_load_checkpoint', checkpoint=checkpoint)
        model = self.model.module if is_model_wrapper(self.model) else self.model
        # mmengine loads the weights of a test-time-augmentation model into its detector (tools/test.py --tta)
        detector = model.module if isinstance(model, BaseTTAModel) else model
        keep_initialised = set(self._check_fit(filename, checkpoint, detector, revise_keys))
        self._check_class_names(filename, checkpoint)
        saved_cfg = (checkpoint.get('meta') or {}).get('cfg') if isinstance(checkpoint, dict) else None
        if self._resuming and isinstance(saved_cfg, str):
            changes = config_changes(saved_cfg, self.cfg)
            if changes:
                self.logger.warning(describe_config_changes(filename, changes))
        if keep_initialised:  # loaded with the model's own values: everything else must load exactly
            model_state = detector.state_dict()
            state = checkpoint.get('state_dict', checkpoint)
            for key in list(state):
                revised = revised_key(key, revise_keys)
                if revised in keep_initialised:
                    state[key] = model_state[revised]
        checkpoint = _load_checkpoint_to_model(model, checkpoint, strict, revise_keys=revise_keys)
        self._has_loaded = True
        self.logger.info(f'Load checkpoint from {filename}')
        return checkpoint


class ReliableTestRunner(ReliableRunner):
    """:class:`ReliableRunner` as ``tools/test.py`` builds it: the config dump goes into the run's
    ``<work_dir>/<timestamp>/`` folder, so testing in a training run's work_dir leaves that run's dump alone."""

    dump_config_in_log_dir = True
