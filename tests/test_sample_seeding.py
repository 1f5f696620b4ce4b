"""Per-sample seeds of the data augmentation (brs_detr.engine.runner.sample_seeding), unit by unit.

The end-to-end proofs (resumed runs with DataLoader workers equal uninterrupted ones; 0, 1 and 3 workers train
alike) are in test_fault_resume.py.
"""
from __future__ import annotations

import pickle
import random

import numpy as np
import pytest
import torch
from mmengine.dataset import DefaultSampler
from mmengine.hooks import DistSamplerSeedHook
from mmengine.logging import MMLogger
from torch.utils.data import BatchSampler, DataLoader, IterableDataset, Subset

from mmdet.engine.hooks import PipelineSwitchHook

from brs_detr.engine.runner.sample_seeding import (SeededBatchSampler, SeededDataset, can_seed_samples,
                                                   derived_seed, with_sample_seeds)


class NoisyItems(torch.utils.data.Dataset):
    """Items made of random draws from the three global generators, as an augmentation pipeline makes them."""

    metainfo = dict(classes=('a', 'b'))

    def __init__(self, size: int = 6) -> None:
        self.size = size
        self.pipeline = 'original'

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> tuple:
        return index, float(np.random.rand()), float(torch.rand(())), random.random()


class Stream(IterableDataset):

    def __iter__(self):
        yield from range(3)


def test_derived_seed_is_a_stable_32_bit_hash_of_its_parts():
    assert derived_seed(1, 2, 3) == derived_seed(1, 2, 3)
    assert derived_seed(1, 2, None) == derived_seed(1, 2)
    assert len({derived_seed(7, epoch, index) for epoch in range(5) for index in range(200)}) == 1000
    assert all(0 <= derived_seed(seed) < 2**32 for seed in range(100))


def test_seeded_item_depends_on_its_seed_only():
    dataset = SeededDataset(NoisyItems())
    first = dataset[(3, 11)]
    np.random.rand(5), torch.rand(5)  # other draws in between do not matter
    assert dataset[(3, 11)] == first
    assert dataset[(3, 12)] != first
    assert dataset[(4, 11)][1:] == first[1:] and dataset[(4, 11)][0] == 4


def test_plain_index_is_passed_through_unseeded():
    dataset = SeededDataset(NoisyItems())
    assert dataset[2][0] == 2 and dataset[2] != dataset[2]
    assert len(dataset) == 6


def test_attributes_are_read_from_and_written_to_the_wrapped_dataset():
    inner = NoisyItems()
    dataset = SeededDataset(inner)
    assert dataset.metainfo == {'classes': ('a', 'b')}
    dataset.pipeline = 'switched'  # as mmdet's PipelineSwitchHook does with runner.train_dataloader.dataset
    assert inner.pipeline == 'switched' and dataset.pipeline == 'switched'
    with pytest.raises(AttributeError, match='no_such_attribute'):
        dataset.no_such_attribute


def test_getitems_of_the_wrapped_dataset_is_not_used():
    """torch's Subset has ``__getitems__``, which DataLoader prefers; it must not receive (index, seed) keys."""
    dataset = SeededDataset(Subset(NoisyItems(), [0, 2, 4]))
    assert not hasattr(dataset, '__getitems__')
    loader = DataLoader(dataset, batch_sampler=[[(1, 5), (2, 5)]], collate_fn=list)
    (batch, ) = list(loader)
    assert [item[0] for item in batch] == [2, 4]
    assert batch[0][1:] == batch[1][1:]  # same seed, same draws


def test_seeded_dataset_pickles_as_for_spawned_workers():
    dataset = pickle.loads(pickle.dumps(SeededDataset(NoisyItems())))
    assert dataset.metainfo == {'classes': ('a', 'b')} and dataset[(1, 3)] == SeededDataset(NoisyItems())[(1, 3)]


def test_batch_sampler_attaches_seeds_of_epoch_and_index():
    sampler = SeededBatchSampler(BatchSampler(range(5), batch_size=2, drop_last=False))
    sampler.set_epoch(0, seed=42)
    epoch0 = list(sampler)
    assert [[index for index, _ in batch] for batch in epoch0] == [[0, 1], [2, 3], [4]]
    assert epoch0[1][0] == (2, derived_seed(42, 0, 2))
    sampler.set_epoch(1, seed=42)
    assert all(a[1] != b[1] for batch0, batch1 in zip(epoch0, sampler) for a, b in zip(batch0, batch1))
    assert len(sampler) == 3 and sampler.batch_size == 2


def test_dist_sampler_seed_hook_still_reaches_the_sampler():
    """mmengine's DistSamplerSeedHook calls ``dataloader.batch_sampler.sampler.set_epoch`` every epoch."""
    inner = DefaultSampler(NoisyItems(), shuffle=True, seed=0)
    loader = DataLoader(NoisyItems(), batch_sampler=BatchSampler(inner, batch_size=2, drop_last=False))
    seeded, batch_sampler = with_sample_seeds(loader)
    assert seeded.batch_sampler is batch_sampler and batch_sampler.sampler is inner

    class Loop:
        dataloader = seeded

    class FakeRunner:
        train_loop, epoch = Loop(), 3

    DistSamplerSeedHook().before_train_epoch(FakeRunner())
    assert inner.epoch == 3


def test_rebuilt_loader_keeps_the_settings_and_yields_seeded_items():
    loader = DataLoader(NoisyItems(), batch_size=2, num_workers=2, persistent_workers=True, prefetch_factor=3,
                        collate_fn=list, multiprocessing_context='fork')
    seeded, batch_sampler = with_sample_seeds(loader)
    assert (seeded.num_workers, seeded.persistent_workers, seeded.prefetch_factor) == (2, True, 3)
    assert seeded.collate_fn is loader.collate_fn and isinstance(seeded.dataset, SeededDataset)
    batch_sampler.set_epoch(0, seed=5)
    in_workers = [item for batch in seeded for item in batch]
    in_process = [SeededDataset(NoisyItems())[(index, derived_seed(5, 0, index))] for index in range(6)]
    assert in_workers == in_process


def test_what_cannot_be_seeded_is_named():
    assert not can_seed_samples(DataLoader(Stream(), batch_size=None))
    assert not can_seed_samples([1, 2])
    with pytest.raises(TypeError, match='DataLoader over Stream: a DataLoader over a map-style dataset'):
        with_sample_seeds(DataLoader(Stream(), batch_size=2))
    with pytest.raises(TypeError, match='list over NoneType'):
        with_sample_seeds([1, 2])


class PipelinedItems(torch.utils.data.Dataset):
    """Items made by ``self.pipeline`` (a callable, as mmengine datasets hold a ``Compose``)."""

    def __init__(self) -> None:
        self.pipeline = first_pipeline

    def __len__(self) -> int:
        return 4

    def __getitem__(self, index: int) -> str:
        return self.pipeline(index)


def first_pipeline(index: int) -> str:
    return f'first {index}'


def switched_pipeline(index: int) -> str:
    return f'switched {index}'


def test_pipeline_switch_hook_reaches_persistent_workers():
    """mmdet's PipelineSwitchHook sets ``runner.train_dataloader.dataset.pipeline`` and restarts persistent workers:
    through the seeded loader, the wrapped dataset gets the new pipeline and the workers use it."""
    loader = DataLoader(PipelinedItems(), batch_size=2, num_workers=2, persistent_workers=True, collate_fn=list,
                        multiprocessing_context='fork')
    seeded, batch_sampler = with_sample_seeds(loader)
    runner = type('FakeRunner', (), dict(train_dataloader=seeded, epoch=0, logger=MMLogger.get_current_instance()))
    hook = PipelineSwitchHook(switch_epoch=1, switch_pipeline=[switched_pipeline])
    seen = []
    for epoch in range(3):
        runner.epoch = epoch
        hook.before_train_epoch(runner)
        batch_sampler.set_epoch(epoch, seed=0)
        seen.append(sorted(item for batch in seeded for item in batch))
    assert seen[0] == [f'first {i}' for i in range(4)]
    assert seen[1] == seen[2] == [f'switched {i}' for i in range(4)]
    assert seeded.dataset.dataset.pipeline.transforms == [switched_pipeline]
