"""An epoch-based training loop whose resumed runs reproduce uninterrupted ones."""
from __future__ import annotations

import logging
import random
from typing import Iterator, Optional, Sized

import numpy as np
import torch
from mmengine.dist import get_rank
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mmdet.registry import LOOPS

from .sample_seeding import (SeededBatchSampler, can_seed_samples, derived_seed, rebuild_dataloader,
                             seed_global_generators, with_sample_seeds)

#: Message-hub key under which the data sampler's seed travels in checkpoints (``message_hub`` is resumed).
SAMPLER_SEED_KEY = 'sampler_seed'


class SkipFirstBatches:
    """A batch sampler yielding the batches of ``batch_sampler`` after its first ``num_skip`` ones.

    Only indices are produced for the skipped batches: no image is loaded.
    """

    def __init__(self, batch_sampler: Sized, num_skip: int) -> None:
        self.batch_sampler = batch_sampler
        self.num_skip = num_skip

    def __iter__(self) -> Iterator:
        batches = iter(self.batch_sampler)
        for _ in range(self.num_skip):
            next(batches, None)
        yield from batches

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.num_skip, 0)


def remaining_batches(dataloader: DataLoader, num_skip: int) -> DataLoader:
    """A one-off DataLoader over the batches of ``dataloader`` after the first ``num_skip`` of this epoch.

    It shares the dataset, sampler (and so the epoch's order), collate function and worker settings; its workers
    end with it.
    """
    return rebuild_dataloader(dataloader, dataloader.dataset, SkipFirstBatches(dataloader.batch_sampler, num_skip),
                              persistent_workers=False)


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's :class:`~mmengine.runner.EpochBasedTrainLoop` whose resumed runs continue exactly where the
    interrupted run stopped, with the same data and random numbers.

    Same arguments as the parent, plus ``seed_each_iter`` and ``seed_each_sample``. What changed, and why:

    * Resuming from a checkpoint saved in the middle of an epoch (``CheckpointHook(by_epoch=False)``) continues
      that epoch after the batches already trained. mmengine restarts the epoch from its first batch, so the resumed
      run trains those batches twice and ends with more iterations than an uninterrupted one. The batches are skipped
      at the batch-sampler level: only their indices are drawn, no image is loaded.
    * ``seed_each_sample=True``: the random data augmentation of sample ``i`` in epoch ``e`` is drawn from
      generators seeded by (the run's seed, ``e``, ``i``), in the main process or in a DataLoader worker alike
      (:mod:`~brs_detr.engine.runner.sample_seeding`). mmengine seeds each worker once, so the augmentations depend
      on the number of workers and restart from the workers' initial seeds after a resume. With it, runs with 0, 2
      or 8 workers, persistent or not, resumed or not, augment every sample alike. Applies to a torch DataLoader over
      a map-style dataset with a batch sampler (what mmengine builds from a config); others keep mmengine's
      seeding.
    * ``seed_each_iter=True``: Python's, NumPy's and torch's global generators are re-seeded at every iteration from
      (the run's seed, the iteration[, the rank when ``randomness.diff_rank_seed``]), after the batch is fetched
      (before, when the samples are not seeded one by one). Random choices in the model then depend only on the
      iteration, not on how the run got there: a run resumed at iteration k draws the same numbers as an
      uninterrupted run (mmengine's resume restores the seed but not the generators' states).
    * The data sampler's seed is stored in the message hub (saved in every checkpoint, restored on resume): with
      ``randomness.seed=None`` mmengine draws a new one at every start, so a resumed run would shuffle differently.
    """

    def __init__(self, runner, dataloader, max_epochs: int, val_begin: int = 1, val_interval: int = 1,
                 dynamic_intervals=None, seed_each_iter: bool = True, seed_each_sample: bool = True) -> None:
        super().__init__(runner, dataloader, max_epochs, val_begin=val_begin, val_interval=val_interval,
                         dynamic_intervals=dynamic_intervals)
        self.seed_each_iter = seed_each_iter
        self._seeded_batches: Optional[SeededBatchSampler] = None
        if seed_each_sample and can_seed_samples(self.dataloader):
            self.dataloader, self._seeded_batches = with_sample_seeds(self.dataloader)
        from mmengine.device import get_device
        self._seed_all_devices = get_device() not in ('cpu', 'cuda')

    # ------------------------------------------------------------------ sampler seed
    def _sampler(self):
        batch_sampler = getattr(self.dataloader, 'batch_sampler', None)
        return getattr(batch_sampler, 'sampler', None) or getattr(self.dataloader, 'sampler', None)

    def _sync_sampler_seed(self) -> None:
        """Restore the sampler seed of a resumed run, or record this run's for its checkpoints."""
        sampler = self._sampler()
        if sampler is None or not hasattr(sampler, 'seed'):
            return
        hub = self.runner.message_hub
        saved = hub.runtime_info.get(SAMPLER_SEED_KEY)
        if self._iter > 0 and saved is not None and saved != sampler.seed:
            sampler.seed = saved
        hub.update_info(SAMPLER_SEED_KEY, sampler.seed)

    def run(self) -> torch.nn.Module:
        self._sync_sampler_seed()
        return super().run()

    # ------------------------------------------------------------------ per-iteration seeds
    def _seed_iteration(self) -> None:
        if not self.seed_each_iter:
            return
        randomness = getattr(self.runner, '_randomness_cfg', {}) or {}
        rank = get_rank() if randomness.get('diff_rank_seed', False) else None
        seed = derived_seed(self.runner.seed, self._iter, rank)
        if self._seed_all_devices:
            random.seed(seed)
            np.random.seed(seed)
            torch.manual_seed(seed)
        else:
            seed_global_generators(seed)

    # ------------------------------------------------------------------ the epoch
    def _batches_done_in_epoch(self) -> int:
        """Batches of the current epoch already trained (non-zero only after a mid-epoch resume)."""
        done = self._iter - self._epoch * len(self.dataloader)
        if done < 0 or done >= len(self.dataloader):
            if done != 0:
                print_log(f'Resumed at iteration {self._iter}, which is not in epoch {self._epoch + 1} of '
                          f'{len(self.dataloader)} iterations (another number of processes or batch size?): the '
                          f'epoch starts from its first batch', logger='current', level=logging.WARNING)
            return 0
        return done

    def run_epoch(self) -> None:
        """Iterate over the rest of the epoch, seeding the samples' augmentations and every iteration."""
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        seeded_samples = self._seeded_batches is not None
        if seeded_samples:
            self._seeded_batches.set_epoch(self._epoch, self.runner.seed)
        start = self._batches_done_in_epoch()
        loader = self.dataloader
        if start > 0:
            print_log(f'Resuming in the middle of epoch {self._epoch + 1}: skipping its first {start} batches '
                      f'(already trained)', logger='current')
            loader = remaining_batches(self.dataloader, start)
        batches = iter(loader)
        idx = start
        while True:
            if not seeded_samples:
                self._seed_iteration()
            data_batch = next(batches, None)
            if data_batch is None:
                break
            if seeded_samples:
                self._seed_iteration()
            self.run_iter(idx, data_batch)
            idx += 1
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1
