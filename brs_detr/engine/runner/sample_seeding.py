"""Random data augmentation that depends only on (the run's seed, the epoch, the sample), wherever it runs.

mmengine seeds each DataLoader worker once, from (seed, rank, worker id), and the worker's generators then advance
with every sample it loads. Which random flip or crop a sample gets therefore depends on the number of workers, on
which worker loaded it and on what that worker loaded before; a run resumed in the middle of an epoch starts its
workers from their initial seeds again and draws other augmentations than the run it continues.

Here the batch sampler, which runs in the main process, attaches a seed to every index it yields, and the dataset
seeds Python's, NumPy's and torch's global generators with it right before the sample's pipeline runs, in whichever
process that is. The augmentation of sample ``i`` in epoch ``e`` is then a function of (seed, e, i) alone: the same
with 0, 2 or 8 workers, with or without persistent workers, and after a resume.
"""
from __future__ import annotations

import hashlib
import random
from typing import Any, Iterator, List, Sequence, Sized, Tuple, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset

#: Size of the derived seeds (NumPy accepts at most 32 bits).
SEED_BYTES = 4

#: What the seeded batch sampler yields per sample: (dataset index, seed of its augmentation).
SeededIndex = Tuple[int, int]


def derived_seed(*parts: Union[int, str, None]) -> int:
    """A 32-bit seed from ``parts`` (a hash: neighbouring parts give unrelated seeds; ``None`` parts are left out)."""
    text = '/'.join(str(part) for part in parts if part is not None)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=SEED_BYTES).digest(), 'little')


def seed_global_generators(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CPU, and CUDA once initialised).

    ``torch.manual_seed`` also polls every other accelerator type, which costs about 0.25 ms a call on CPU; here
    the CPU generator is seeded directly and CUDA's only when it is in use.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_initialized():
        torch.cuda.manual_seed_all(seed)


def wrapped_attribute(wrapper: Any, wrapped_name: str, name: str) -> Any:
    """``name`` of the object a wrapper keeps in its attribute ``wrapped_name``; for the wrappers' ``__getattr__``.

    Special (dunder) names stay the wrapper's own: a dataset's ``__getitems__`` would get (index, seed) keys, and
    unpickling (spawned DataLoader workers) asks for ``__setstate__`` before the wrapped object exists.
    """
    if name == wrapped_name or (name.startswith('__') and name.endswith('__')):
        raise AttributeError(name)
    return getattr(getattr(wrapper, wrapped_name), name)


class SeededDataset(Dataset):
    """A map-style dataset whose items, asked for as ``(index, seed)``, are made with the global generators seeded
    by ``seed``; a plain index is passed through unseeded.

    Every other attribute (``metainfo``, ``pipeline``, ...) is read from and written to the wrapped dataset, so hooks
    that inspect or switch the training dataset (``runner.train_dataloader.dataset``) keep working.
    """

    def __init__(self, dataset: Dataset) -> None:
        object.__setattr__(self, 'dataset', dataset)

    def __getitem__(self, key: Union[int, SeededIndex]) -> Any:
        if isinstance(key, tuple):
            index, seed = key
            seed_global_generators(seed)
            return self.dataset[index]
        return self.dataset[key]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:  # only reached for names the wrapper lacks
        return wrapped_attribute(self, 'dataset', name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.dataset, name, value)

    def __repr__(self) -> str:
        return f'{type(self).__name__}({self.dataset!r})'


class SeededBatchSampler:
    """Yields the batches of ``batch_sampler`` with a seed per index: ``[(index, seed), ...]``.

    The seed of index ``i`` is :func:`derived_seed` of (the run's seed, the epoch, ``i``), both set with
    :meth:`set_epoch` before the epoch is iterated. ``sampler`` (the per-index sampler whose ``set_epoch`` mmengine's
    ``DistSamplerSeedHook`` calls), ``batch_size`` and the other attributes are the wrapped batch sampler's.
    """

    def __init__(self, batch_sampler: Sized) -> None:
        self.batch_sampler = batch_sampler
        self.seed = None
        self.epoch = 0

    def set_epoch(self, epoch: int, seed: int) -> None:
        """The batches yielded from now on carry seeds from (``seed``, ``epoch``, index)."""
        self.epoch, self.seed = epoch, seed

    def __iter__(self) -> Iterator[List[SeededIndex]]:
        for batch in self.batch_sampler:
            yield self.seeded(batch)

    def seeded(self, batch: Sequence[int]) -> List[SeededIndex]:
        return [(index, derived_seed(self.seed, self.epoch, index)) for index in batch]

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name: str) -> Any:
        return wrapped_attribute(self, 'batch_sampler', name)


def rebuild_dataloader(dataloader: DataLoader, dataset: Dataset, batch_sampler: Sized,
                       persistent_workers: bool) -> DataLoader:
    """A DataLoader with ``dataloader``'s settings (workers, collate, pinning, worker seeding) over ``dataset`` and
    ``batch_sampler``."""
    kwargs = dict(
        batch_sampler=batch_sampler,
        num_workers=dataloader.num_workers,
        collate_fn=dataloader.collate_fn,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        multiprocessing_context=dataloader.multiprocessing_context,
        generator=dataloader.generator,
        pin_memory_device=dataloader.pin_memory_device,
        in_order=dataloader.in_order)
    if dataloader.num_workers > 0:
        kwargs.update(prefetch_factor=dataloader.prefetch_factor, persistent_workers=persistent_workers)
    return DataLoader(dataset, **kwargs)


def can_seed_samples(dataloader: Any) -> bool:
    """Whether :func:`with_sample_seeds` applies: a torch DataLoader over a map-style dataset with a batch sampler."""
    return (isinstance(dataloader, DataLoader) and not isinstance(dataloader.dataset, IterableDataset)
            and dataloader.batch_sampler is not None)


def with_sample_seeds(dataloader: DataLoader) -> Tuple[DataLoader, SeededBatchSampler]:
    """``dataloader`` rebuilt over :class:`SeededDataset` and :class:`SeededBatchSampler` (same settings otherwise);
    returns it with its batch sampler, whose :meth:`~SeededBatchSampler.set_epoch` must be called before each epoch.
    """
    if not can_seed_samples(dataloader):
        dataset = getattr(dataloader, 'dataset', None)
        raise TypeError(f'cannot seed the samples of {type(dataloader).__name__} over {type(dataset).__name__}: '
                        'a DataLoader over a map-style dataset with a batch sampler is needed')
    batch_sampler = SeededBatchSampler(dataloader.batch_sampler)
    rebuilt = rebuild_dataloader(dataloader, SeededDataset(dataloader.dataset), batch_sampler,
                                 dataloader.persistent_workers)
    return rebuilt, batch_sampler
