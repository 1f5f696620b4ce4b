"""Checkpoint safety under torch >= 2.6: trusted full unpickling, refusal of untrusted pickles, atomic saves.

Covers brs_detr/fileio/{checkpoint,trust,atomic_io,backend}.py and brs_detr/zoo/loaders.py through mmengine's own entry points (a real Runner,
``CheckpointLoader``, ``load_checkpoint``, ``save_checkpoint``), as a user's training run reaches them.
"""
import io
import os
import os.path as osp
import pickle
import uuid

import pytest
import torch
from torch import nn

import brs_detr  # noqa: F401  (installs the loaders and the atomic backend)
from brs_detr.fileio import atomic_io, backend, trust
from brs_detr.fileio.checkpoint import UntrustedCheckpointError
from mmengine.model import BaseModel
from mmengine.runner import CheckpointLoader, Runner, load_checkpoint, save_checkpoint

NUM_SAMPLES = 8
BATCH_SIZE = 2
ITERS_PER_EPOCH = NUM_SAMPLES // BATCH_SIZE


@pytest.fixture(autouse=True)
def isolated_trust(tmp_path, monkeypatch):
    """Fresh per-user trust key and no trusted directories for every test."""
    monkeypatch.setenv(trust.HOME_ENV, str(tmp_path / 'brs_detr_home'))
    monkeypatch.delenv(trust.TRUSTED_DIRS_ENV, raising=False)
    trust.reset_trust()
    yield
    trust.reset_trust()


class ToyRegressor(BaseModel):
    """A linear regressor; counts the training steps it takes."""

    train_steps = 0

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    def forward(self, inputs, targets=None, mode='tensor'):
        outputs = self.linear(torch.stack(list(inputs)) if isinstance(inputs, (list, tuple)) else inputs)
        if mode == 'loss':
            ToyRegressor.train_steps += 1
            return dict(loss=((outputs.squeeze(-1) - targets)**2).mean())
        return outputs


class ToyDataset(torch.utils.data.Dataset):

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.inputs = torch.randn(NUM_SAMPLES, 2, generator=generator)
        self.targets = self.inputs.sum(dim=1)

    def __len__(self) -> int:
        return NUM_SAMPLES

    def __getitem__(self, index: int) -> dict:
        return dict(inputs=self.inputs[index], targets=self.targets[index])


def build_runner(work_dir: str, max_epochs: int, resume: bool) -> Runner:
    return Runner(
        model=ToyRegressor(),
        work_dir=work_dir,
        experiment_name=f'toy_{uuid.uuid4().hex}',
        train_dataloader=dict(
            dataset=ToyDataset(),
            sampler=dict(type='DefaultSampler', shuffle=False),
            batch_size=BATCH_SIZE,
            num_workers=0,
            collate_fn=dict(type='default_collate')),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01, momentum=0.9)),
        train_cfg=dict(by_epoch=True, max_epochs=max_epochs),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=1), logger=dict(type='LoggerHook')),
        resume=resume,
        default_scope=None)


class MarkerOnUnpickle:
    """Unpickling this object calls ``os.mkdir(marker)``: stands in for arbitrary code execution."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker, ))


def test_runner_resumes_from_its_own_checkpoint(tmp_path):
    work_dir = str(tmp_path / 'work_dir')
    build_runner(work_dir, max_epochs=1, resume=False).train()
    checkpoint_path = osp.join(work_dir, 'epoch_1.pth')
    assert osp.isfile(checkpoint_path)
    # The Runner's checkpoint really is one that torch's default loader refuses (else this test proves nothing).
    with pytest.raises(pickle.UnpicklingError, match='Weights only load failed'):
        torch.load(checkpoint_path)
    # It was written through the atomic backend, which recorded it as trusted.
    assert trust.is_trusted(checkpoint_path)
    assert not [name for name in os.listdir(work_dir) if atomic_io.TEMP_INFIX in name]

    ToyRegressor.train_steps = 0
    resumed = build_runner(work_dir, max_epochs=2, resume=True)
    resumed.train()
    assert ToyRegressor.train_steps == ITERS_PER_EPOCH  # only epoch 2 ran: epoch and iter were restored
    assert resumed.epoch == 2
    assert resumed.iter == 2 * ITERS_PER_EPOCH
    assert osp.isfile(osp.join(work_dir, 'epoch_2.pth'))


def test_runner_checkpoint_without_manifest_needs_explicit_trust(tmp_path, monkeypatch):
    work_dir = str(tmp_path / 'work_dir')
    build_runner(work_dir, max_epochs=1, resume=False).train()
    os.remove(trust.manifest_path(work_dir))  # e.g. a checkpoint written before brs_detr was installed
    checkpoint_path = osp.join(work_dir, 'epoch_1.pth')
    with pytest.raises(UntrustedCheckpointError, match='BRS_DETR_TRUSTED_DIRS'):
        CheckpointLoader.load_checkpoint(checkpoint_path, map_location='cpu')
    monkeypatch.setenv(trust.TRUSTED_DIRS_ENV, os.pathsep.join([str(tmp_path / 'elsewhere'), work_dir]))
    checkpoint = CheckpointLoader.load_checkpoint(checkpoint_path, map_location='cpu')
    assert checkpoint['meta']['epoch'] == 1


def test_malicious_pickle_is_refused_and_plain_state_dict_loads(tmp_path):
    untrusted_dir = tmp_path / 'downloads'
    untrusted_dir.mkdir()
    marker = str(tmp_path / 'code_was_executed')
    model = nn.Linear(2, 1)
    malicious = str(untrusted_dir / 'malicious.pth')
    torch.save(dict(state_dict=model.state_dict(), meta=MarkerOnUnpickle(marker)), malicious)

    with pytest.raises(UntrustedCheckpointError) as error:
        load_checkpoint(nn.Linear(2, 1), malicious, map_location='cpu')
    message = str(error.value)
    assert malicious in message
    assert 'posix.mkdir' in message or 'mkdir' in message  # says what torch rejected
    assert 'tools/convert_checkpoint.py' in message and 'BRS_DETR_TRUSTED_DIRS' in message
    assert not osp.exists(marker)

    # A manifest shipped next to the file (here: signed with another user's key) does not make it trusted.
    trust.record_trusted_file(malicious, source='attacker')
    os.remove(osp.join(os.environ[trust.HOME_ENV], 'trust_key'))
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(malicious, map_location='cpu')
    assert not osp.exists(marker)

    # The same weights as a plain state dict load with weights_only=True, no trust needed.
    plain = str(untrusted_dir / 'plain.pth')
    torch.save(dict(state_dict=model.state_dict()), plain)
    loaded = nn.Linear(2, 1)
    load_checkpoint(loaded, plain, map_location='cpu', strict=True)
    assert torch.equal(loaded.weight, model.weight)
    assert not osp.exists(marker)

    # Sanity check that the file is really malicious: full unpickling runs its code.
    torch.load(malicious, weights_only=False)
    assert osp.isdir(marker)


def test_trust_file_with_sha256_pins_the_content(tmp_path):
    path = str(tmp_path / 'numpy_meta.pth')
    torch.save(dict(state_dict=dict(w=torch.ones(2)), meta=dict(lr=__import__('numpy').float64(0.1))), path)
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(path)
    trust.trust_file(path, sha256='0' * 64)  # wrong hash: still refused
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(path)
    trust.trust_file(path, sha256=trust.sha256_file(path))
    assert float(CheckpointLoader.load_checkpoint(path)['meta']['lr']) == pytest.approx(0.1)


def _record_files(folder: str, tag: str, count: int) -> None:
    for index in range(count):
        path = osp.join(folder, f'{tag}_{index}.pth')
        with open(path, 'wb') as file:
            file.write(os.urandom(64))
        trust.record_trusted_file(path)


def test_concurrent_records_keep_every_manifest_entry(tmp_path):
    """4 processes record 30 files each into one directory's manifest (as ranks, or concurrent downloads, do): the
    manifest is read, changed and rewritten under a lock, so no process drops another's entries (without the lock
    about half of them were lost)."""
    import multiprocessing
    folder = str(tmp_path / 'checkpoints')
    os.makedirs(folder)
    trust._trust_key(create=True)  # one key for all processes (created once, as the first real record would)
    context = multiprocessing.get_context('fork')
    workers = [context.Process(target=_record_files, args=(folder, tag, 30)) for tag in 'abcd']
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0] * 4
    recorded = trust.read_manifest(folder)
    assert sorted(recorded) == sorted(f'{tag}_{index}.pth' for tag in 'abcd' for index in range(30))
    assert all(trust.is_trusted(osp.join(folder, name)) for name in recorded)


def test_corrupt_checkpoint_error_names_the_file(tmp_path):
    path = str(tmp_path / 'truncated.pth')
    buffer = io.BytesIO()
    torch.save(dict(w=torch.ones(100)), buffer)
    with open(path, 'wb') as file:
        file.write(buffer.getvalue()[:200])
    with pytest.raises(RuntimeError, match='truncated.pth'):
        CheckpointLoader.load_checkpoint(path)


def test_torchvision_scheme_maps_to_verified_http_without_torchvision(tmp_path, monkeypatch):
    import brs_detr.zoo.loaders as loaders_module
    requested = []

    def fake_http(url, map_location=None, **kwargs):
        requested.append(url)
        return {}

    monkeypatch.setattr(loaders_module, 'load_from_http_safe', fake_http)
    CheckpointLoader.load_checkpoint('torchvision://resnet50')
    assert requested == ['https://download.pytorch.org/models/resnet50-0676ba61.pth']
    with pytest.raises(KeyError, match='resnet50'):
        CheckpointLoader.load_checkpoint('torchvision://no_such_net')


def _save_old_checkpoint(path: str) -> bytes:
    old = dict(state_dict=dict(w=torch.zeros(4)))
    save_checkpoint(old, path)
    with open(path, 'rb') as file:
        return file.read()


def test_atomic_save_keeps_old_file_when_write_fails(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / 'work_dir'
    path = str(ckpt_dir / 'epoch_1.pth')
    old_bytes = _save_old_checkpoint(path)
    new = dict(state_dict=dict(w=torch.ones(1024)))

    def write_half_then_fail(file, data):
        file.write(memoryview(data)[:len(data) // 2])
        file.flush()
        raise OSError(28, 'No space left on device')

    monkeypatch.setattr(atomic_io, '_write_all', write_half_then_fail)
    with pytest.raises(OSError, match='No space left'):
        save_checkpoint(new, path)  # mmengine's save path -> get_file_backend(path).put
    with open(path, 'rb') as file:
        assert file.read() == old_bytes
    assert sorted(os.listdir(ckpt_dir)) == [trust.MANIFEST_NAME, 'epoch_1.pth']  # no temp file left
    assert torch.equal(torch.load(path)['state_dict']['w'], torch.zeros(4))


def test_atomic_save_keeps_old_file_when_torch_save_fails(tmp_path, monkeypatch):
    ckpt_dir = tmp_path / 'work_dir'
    path = str(ckpt_dir / 'epoch_1.pth')
    old_bytes = _save_old_checkpoint(path)
    real_save = torch.save

    def save_partially_then_fail(obj, file, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        file.write(buffer.getvalue()[:100])
        raise RuntimeError('killed during torch.save')

    monkeypatch.setattr(torch, 'save', save_partially_then_fail)
    with pytest.raises(RuntimeError, match='killed during torch.save'):
        save_checkpoint(dict(w=torch.ones(8)), path)
    with pytest.raises(RuntimeError, match='killed during torch.save'):
        atomic_io.atomic_torch_save(dict(w=torch.ones(8)), path)
    with open(path, 'rb') as file:
        assert file.read() == old_bytes
    assert sorted(os.listdir(ckpt_dir)) == [trust.MANIFEST_NAME, 'epoch_1.pth']  # no temp file left


def test_install_is_idempotent():
    from mmengine.fileio import get_file_backend
    brs_detr.install_checkpoint_safety()
    brs_detr.register_all_modules()
    assert CheckpointLoader._get_checkpoint_loader('/some/file.pth').__name__ == 'load_from_local_safe'
    assert CheckpointLoader._get_checkpoint_loader('https://host/x.pth').__name__ == 'load_from_http_safe'
    assert isinstance(get_file_backend('/some/file.pth'), backend.AtomicLocalBackend)
