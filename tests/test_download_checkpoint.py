"""tools/download_checkpoint.py, brs_detr.zoo.download and brs_detr.zoo.install against a local HTTP server.

No network: a threaded ``http.server`` on 127.0.0.1 (ephemeral port, shut down in teardown) serves the files with
the behaviours a real download meets: Range requests (206, 416), a server that ignores them, a connection that
drops in the middle of the body, Google Drive's virus-scan confirmation form (hidden ``confirm``/``uuid`` inputs
and a cookie), HTML error pages. Every test gets its own ``$BRS_DETR_HOME`` (trust key, first-use sha256 records)
and ``$TORCH_HOME``.
"""
import errno
import functools
import hashlib
import importlib.util
import io
import json
import os
import os.path as osp
import re
import socket
import subprocess
import sys
import threading
import types
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from torch import nn

import brs_detr  # noqa: F401  (installs the loaders)
from brs_detr.fileio import trust
from brs_detr.zoo import download, known_hashes
from brs_detr.fileio.checkpoint import UntrustedCheckpointError
from brs_detr.zoo.index import (DEFAULT_INDEX, README_TABLE_BEGIN, README_TABLE_END, load_index, markdown_table,
                                      readme_link_prefix)
from conftest import load_tool_module
from mmengine.runner import CheckpointLoader

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO_ROOT, 'tools', 'download_checkpoint.py')
GDRIVE_UUID = 'test-uuid-1234'
GDRIVE_COOKIE = 'download_warning_toy=t'

tool = load_tool_module('download_checkpoint')


def save_mmdet2_checkpoint(state_dict, path) -> None:
    """Save like mmdet 2.x / mmcv 1.x: the meta pickles objects torch's safe loader refuses (a config object of a
    class that no longer exists, numpy scalars) and the optimizer state is stored next to the weights."""
    module = types.ModuleType('legacy_mmcv_utils_config')
    config_dict = type('ConfigDict', (dict, ), {'__module__': module.__name__})
    module.ConfigDict = config_dict
    sys.modules[module.__name__] = module
    try:
        meta = dict(mmdet_version='2.25.3', config=config_dict(lr=0.012), epoch=np.int64(12), seed=np.int64(0),
                    CLASSES=('person', 'bicycle', 'car'))
        torch.save(dict(meta=meta, state_dict=state_dict, optimizer=dict(state={}, param_groups=[])), path)
    finally:
        del sys.modules[module.__name__]


class Handler(SimpleHTTPRequestHandler):
    """Static files plus the special routes (see the module docstring)."""

    requests = []  # (path, Range header) of every request
    drops = set()  # files whose first transfer was already cut off

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send(self, data: bytes, status: int = 200, content_type: str = 'application/octet-stream',
              headers=None, body_bytes=None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data[:body_bytes] if body_bytes is not None else data)

    def _file(self, name: str) -> bytes:
        with open(osp.join(self.directory, name), 'rb') as file:
            return file.read()

    def _ranged(self, data: bytes, honour_range: bool = True, body_bytes=None) -> None:
        requested = self.headers.get('Range')
        if honour_range and requested and requested.startswith('bytes=') and requested.endswith('-'):
            start = int(requested[len('bytes='):-1])
            if start >= len(data):
                self._send(b'', status=416, headers={'Content-Range': f'bytes */{len(data)}'})
                return
            self._send(data[start:], status=206,
                       headers={'Content-Range': f'bytes {start}-{len(data) - 1}/{len(data)}'}, body_bytes=body_bytes)
        else:
            self._send(data, body_bytes=body_bytes)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        Handler.requests.append((parts.path, self.headers.get('Range')))
        route, _, name = parts.path.lstrip('/').partition('/')
        if route == 'file':
            self._ranged(self._file(name))
        elif route == 'drop-once':
            data = self._file(name)
            if name not in Handler.drops:  # full Content-Length, then the connection closes after 40 % of it
                Handler.drops.add(name)
                self._ranged(data, body_bytes=len(data) * 2 // 5)
            else:
                self._ranged(data)
        elif route == 'ignore-range':
            self._ranged(self._file(name), honour_range=False)
        elif route == 'gdrive' and name == 'download':  # ?id=NAME serves NAME.pth after the confirmation
            file_id = query.get('id', ['toy'])[0]
            page = ('<!DOCTYPE html><html><body><p>Google Drive can\'t scan this file for viruses.</p>'
                    f'<form id="download-form" action="/gdrive/usercontent?id={file_id}&amp;export=download" '
                    'method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    '<input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{GDRIVE_UUID}"></form></body></html>')
            self._send(page.encode(), content_type='text/html; charset=utf-8',
                       headers={'Set-Cookie': f'{GDRIVE_COOKIE}; Path=/'})
        elif route == 'gdrive' and name == 'usercontent':
            confirmed = (query.get('uuid') == [GDRIVE_UUID] and query.get('confirm') == ['t'] and 'id' in query
                         and GDRIVE_COOKIE in (self.headers.get('Cookie') or ''))
            if not confirmed:
                self._send(b'<html>bad confirmation</html>', status=403, content_type='text/html')
            else:
                self._ranged(self._file(query['id'][0] + '.pth'))
        elif route == 'quota':  # Drive's error page
            page = ('<html><body><div class="uc-error-caption">Sorry, you can\'t view or download this file at this '
                    'time.</div><p class="uc-error-subcaption">Too many users have viewed or downloaded this file '
                    'recently.</p></body></html>')
            self._send(page.encode(), content_type='text/html; charset=utf-8')
        elif route == 'html-as-binary':  # an HTML body that claims to be a file
            self._send(b'<!DOCTYPE html>\n<html><head><title>Sign in</title></head><body>login</body></html>')
        else:
            super().do_GET()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """(base URL, served directory). toy.pth is an mmdet 2.x-style checkpoint; other.pth differs from it."""
    served = tmp_path_factory.mktemp('served')
    save_mmdet2_checkpoint(nn.Linear(64, 32).state_dict(), served / 'toy.pth')
    save_mmdet2_checkpoint(nn.Linear(64, 31).state_dict(), served / 'other.pth')
    digest = sha256_of(served / 'toy.pth')
    (served / f'toy-{digest[:8]}.pth').write_bytes((served / 'toy.pth').read_bytes())
    # unpickling needs numpy only (what mmengine's Runner saves): loadable in full once trusted
    torch.save(dict(state_dict=nn.Linear(2, 1).state_dict(), meta=dict(epoch=np.int64(12))), served / 'runner.pth')
    runner_digest = sha256_of(served / 'runner.pth')
    (served / f'runner-{runner_digest[:8]}.pth').write_bytes((served / 'runner.pth').read_bytes())
    (served / 'not_a_checkpoint.pth').write_bytes(b'This is not a checkpoint, just a text file.\n' * 20)
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}', served
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.HOME_ENV, str(tmp_path / 'brs_detr_home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delenv(trust.TRUSTED_DIRS_ENV, raising=False)
    trust.reset_trust()
    Handler.requests.clear()
    yield
    trust.reset_trust()


def sha256_of(path) -> str:
    with open(path, 'rb') as file:
        return hashlib.sha256(file.read()).hexdigest()


def write_index(path, entries) -> str:
    base = dict(kind='detector', config='configs/toy/brs-paa_r18-tiny_2xb2-12e_toy-coco.py', format='mmdet2',
                sha256=None, gdrive_id=None)
    path.write_text(json.dumps(dict(version=2, models=[dict(base, **entry) for entry in entries])))
    return str(path)


def toy_entry(tmp_path, url: str, **fields):
    """(index, dest): an index with the one entry ``toy`` (file ``toy.pth``) at ``url``, and a fresh destination."""
    index = write_index(tmp_path / 'index.json', [dict(dict(name='toy', url=url, file_name='toy.pth'), **fields)])
    return index, tmp_path / 'ckpt'


def run(args, index, dest, *extra):
    """The tool in-process, download only (these tests are about the transfer)."""
    return tool.main([*args, '--index', index, '--dest', str(dest), '--quiet', '--no-convert', '--retry-wait', '0',
                      *extra])


def original(dest, file_name='toy.pth'):
    return dest / 'original' / file_name


# ----------------------------------------------------------------------------- transfer


def test_interrupted_download_is_resumed_with_range_and_gives_the_same_sha256(server, tmp_path, capsys):
    base_url, served = server
    index = write_index(tmp_path / 'index.json', [dict(name='toy', url=f'{base_url}/drop-once/toy.pth',
                                                       file_name='toy.pth')])
    size = osp.getsize(served / 'toy.pth')
    assert tool.main(['toy', '--index', index, '--dest', str(tmp_path / 'ckpt'), '--no-convert', '--retry-wait',
                      '0']) == 0
    err = capsys.readouterr().err
    assert 'interrupted' in err and 'resuming' in err
    assert Handler.requests == [('/drop-once/toy.pth', None), ('/drop-once/toy.pth', f'bytes={size * 2 // 5}-')]
    assert sha256_of(original(tmp_path / 'ckpt')) == sha256_of(served / 'toy.pth')
    assert not osp.exists(str(original(tmp_path / 'ckpt')) + '.partial')


def with_partial_file(tmp_path, url: str, content: bytes):
    """(index, dest) for entry ``toy`` at ``url``, with ``content`` left in its partial file by an earlier run."""
    index, dest = toy_entry(tmp_path, url)
    (dest / 'original').mkdir(parents=True)
    (dest / 'original' / 'toy.pth.partial').write_bytes(content)
    return index, dest


def test_left_over_partial_file_is_resumed_by_the_next_run(server, tmp_path):
    base_url, served = server
    data = (served / 'toy.pth').read_bytes()
    index, dest = with_partial_file(tmp_path, f'{base_url}/file/toy.pth', data[:1000])
    assert run(['toy'], index, dest) == 0
    assert Handler.requests == [('/file/toy.pth', 'bytes=1000-')]
    assert original(dest).read_bytes() == data


def test_server_ignoring_range_restarts_cleanly(server, tmp_path, capsys):
    base_url, served = server
    index, dest = with_partial_file(tmp_path, f'{base_url}/ignore-range/toy.pth',
                                    b'garbage that must not stay in front' * 10)
    assert run(['toy'], index, dest) == 0
    assert 'ignored the range request' in capsys.readouterr().err
    assert original(dest).read_bytes() == (served / 'toy.pth').read_bytes()


def test_partial_file_larger_than_the_file_restarts_cleanly(server, tmp_path, capsys):
    base_url, served = server
    data = (served / 'toy.pth').read_bytes()
    index, dest = with_partial_file(tmp_path, f'{base_url}/file/toy.pth', data + b'extra bytes')
    assert run(['toy'], index, dest) == 0
    assert 'larger than the file' in capsys.readouterr().err
    assert Handler.requests == [('/file/toy.pth', f'bytes={len(data) + 11}-'), ('/file/toy.pth', None)]
    assert original(dest).read_bytes() == data


def test_google_drive_confirmation_page_is_followed(server, tmp_path, capsys):
    base_url, served = server
    index = write_index(tmp_path / 'index.json', [dict(name='authors', url='https://drive.google.com/file/d/x/view',
                                                       gdrive_id='x', file_name='authors.pth')])
    dest = tmp_path / 'ckpt'
    assert run(['authors', '--url', f'{base_url}/gdrive/download'], index, dest) == 0
    assert [path for path, _ in Handler.requests] == ['/gdrive/download', '/gdrive/usercontent']
    digest = sha256_of(served / 'toy.pth')
    assert sha256_of(original(dest, 'authors.pth')) == digest
    out = capsys.readouterr().out
    assert f'sha256 {digest}' in out and 'first use' in out
    assert known_hashes.recorded('authors')['sha256'] == digest
    # trusted on first use is not trusted for code execution: the raw file stays untrusted
    assert not trust.is_trusted(original(dest, 'authors.pth'))
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(str(original(dest, 'authors.pth')))


@pytest.mark.parametrize('route, message', [('quota', 'Too many users have viewed or downloaded this file'),
                                            ('html-as-binary', 'HTML page instead of the file')])
def test_html_body_is_rejected(server, tmp_path, capsys, route, message):
    base_url, _ = server
    index, dest = toy_entry(tmp_path, f'{base_url}/{route}/x')
    assert run(['toy'], index, dest) == 1
    err = capsys.readouterr().err
    assert message in err and 'To install it by hand' in err and str(original(dest)) in err
    assert os.listdir(dest / 'original') == []  # nothing of the page was written
    assert known_hashes.recorded('toy') is None


def test_body_that_is_no_checkpoint_is_moved_aside(server, tmp_path, capsys):
    base_url, _ = server
    index, dest = toy_entry(tmp_path, f'{base_url}/file/not_a_checkpoint.pth')
    assert run(['toy'], index, dest) == 1
    assert 'is not a checkpoint (neither PyTorch nor safetensors' in capsys.readouterr().err
    assert [name.endswith('.rejected') for name in os.listdir(dest / 'original')] == [True]
    assert known_hashes.recorded('toy') is None


def test_checksum_mismatch_keeps_the_file_aside_and_never_loads_it(server, tmp_path, capsys, monkeypatch):
    base_url, served = server
    digest = sha256_of(served / 'toy.pth')
    wrong = ('0' if digest[0] != '0' else '1') + digest[1:]
    index, dest = toy_entry(tmp_path, f'{base_url}/file/toy.pth', sha256=wrong)

    def never(*args, **kwargs):
        raise AssertionError('a file that failed its checksum was loaded')

    monkeypatch.setattr('brs_detr.zoo.convert.read_checkpoint', never)
    monkeypatch.setattr(torch, 'load', never)
    assert tool.main(['toy', '--index', index, '--dest', str(dest), '--quiet']) == 1
    err = capsys.readouterr().err
    assert f'expected sha256 {wrong}, got {digest}' in err
    rejected = dest / 'original' / f'toy.pth.sha256-{digest[:12]}.rejected'
    assert str(rejected) in err and sha256_of(rejected) == digest
    assert sorted(os.listdir(dest / 'original')) == [rejected.name]
    assert not (dest / 'toy.pth').exists()


def test_first_use_record_catches_a_changed_file(server, tmp_path, capsys):
    base_url, served = server
    index, dest = toy_entry(tmp_path, f'{base_url}/file/toy.pth')
    assert run(['toy'], index, dest) == 0
    first = known_hashes.recorded('toy')
    assert first['sha256'] == sha256_of(served / 'toy.pth') and first['size'] == osp.getsize(served / 'toy.pth')
    assert known_hashes.store_path().startswith(os.environ[trust.HOME_ENV])
    # a later run checks the file on disk against the record ...
    assert run(['toy'], index, dest) == 0
    assert 'recorded on its first download' in capsys.readouterr().out
    # ... and notices when it changed
    original(dest).write_bytes((served / 'other.pth').read_bytes())
    assert run(['toy'], index, dest) == 1
    assert 'expected' in capsys.readouterr().err and not original(dest).exists()
    # the server now serves another file under the same name: the re-download is refused too
    index, _ = toy_entry(tmp_path, f'{base_url}/file/other.pth')
    assert run(['toy'], index, dest) == 1
    assert f'expected sha256 {first["sha256"]}' in capsys.readouterr().err
    # --force accepts the new file as the new first-use record
    assert run(['toy', '--force'], index, dest) == 0
    assert known_hashes.recorded('toy')['sha256'] == sha256_of(served / 'other.pth')


def test_concurrent_installs_of_one_entry_download_it_once(server, tmp_path):
    from brs_detr.zoo import InstallOptions, install_entry
    base_url, served = server
    index, dest = toy_entry(tmp_path, f'{base_url}/file/toy.pth')
    entry = load_index(index)['toy']
    results = []

    def install():
        options = InstallOptions(dest=str(dest), convert=False, progress=False, out=lambda line: None)
        results.append(install_entry(entry, options).sha256)

    threads = [threading.Thread(target=install) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert results == [sha256_of(served / 'toy.pth')] * 3
    assert Handler.requests == [('/file/toy.pth', None)]


def test_no_network_error_says_which_url_and_how_to_place_the_file(tmp_path, capsys):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(('127.0.0.1', 0))
        port = sock.getsockname()[1]
    url = f'http://127.0.0.1:{port}/toy.pth'
    index = write_index(tmp_path / 'index.json', [dict(name='toy', url=url, file_name='toy_mmdet2.pth')])
    dest = tmp_path / 'ckpt'
    assert run(['toy'], index, dest) == 1
    err = capsys.readouterr().err
    assert f'cannot reach {url}' in err
    assert f'save it as\n    {dest / "original" / "toy_mmdet2.pth"}' in err
    assert 'python tools/download_checkpoint.py toy` again' in err


class _FullDisk(io.FileIO):
    """A partial file on a disk that fills up after ``budget`` bytes."""

    budget = 0

    def write(self, data):
        if self.tell() + len(data) > _FullDisk.budget:
            allowed = max(_FullDisk.budget - self.tell(), 0)
            super().write(bytes(data[:allowed]))
            raise OSError(errno.ENOSPC, 'No space left on device')
        return super().write(data)


def test_disk_full_keeps_the_partial_file_and_the_next_run_resumes(server, tmp_path, capsys, monkeypatch):
    base_url, served = server
    data = (served / 'toy.pth').read_bytes()
    index, dest = toy_entry(tmp_path, f'{base_url}/file/toy.pth')
    _FullDisk.budget = 700
    open_partial = download._open_partial
    monkeypatch.setattr(download, '_open_partial', lambda path, mode: _FullDisk(path, mode))
    assert run(['toy'], index, dest) == 1
    err = capsys.readouterr().err
    partial = str(original(dest)) + '.partial'
    assert 'no space left on the device' in err and f'are kept in {partial}' in err and 'resume' in err
    with open(partial, 'rb') as file:
        assert file.read() == data[:700]
    monkeypatch.setattr(download, '_open_partial', open_partial)  # space was freed
    assert run(['toy'], index, dest) == 0
    assert Handler.requests[-1] == ('/file/toy.pth', 'bytes=700-')
    assert original(dest).read_bytes() == data


def test_hash_prefix_in_the_file_name_is_verified_and_trusted(server, tmp_path, capsys):
    base_url, served = server
    digest = sha256_of(served / 'toy.pth')
    file_name = f'toy-{digest[:8]}.pth'
    index = write_index(tmp_path / 'index.json', [dict(name='toy', url=f'{base_url}/file/{file_name}',
                                                       file_name=file_name, kind='pretrained', config=None)])
    assert run(['toy'], index, tmp_path / 'unused') == 0
    assert 'verified (sha256 prefix in the file name)' in capsys.readouterr().out
    cached = osp.join(os.environ['TORCH_HOME'], 'hub', 'checkpoints', file_name)  # where init_cfg URLs look
    assert trust.is_trusted(cached)


def test_unknown_name_lists_known_names(tmp_path, capsys):
    index = write_index(tmp_path / 'index.json', [dict(name='alpha', url='http://127.0.0.1:9/a.pth', file_name='a.pth'),
                                                  dict(name='beta', url='http://127.0.0.1:9/b.pth', file_name='b.pth')])
    assert run(['gamma'], index, tmp_path / 'out') == 1
    error = capsys.readouterr().err
    assert 'unknown checkpoint name "gamma"' in error and 'alpha, beta' in error
    assert not osp.exists(tmp_path / 'out')


def test_unreleased_and_manual_entries_explain_what_to_do(tmp_path, capsys):
    index = write_index(tmp_path / 'index.json', [
        dict(name='paper-only', url=None, file_name='p.pth', box_ap=42.3),
        dict(name='folder', url=None, manual_url='https://drive.google.com/drive/folders/abc', file_name='f.pth')])
    assert run(['paper-only'], index, tmp_path / 'ckpt') == 1
    assert 'not released' in capsys.readouterr().err
    assert run(['folder'], index, tmp_path / 'ckpt') == 1
    err = capsys.readouterr().err
    assert 'https://drive.google.com/drive/folders/abc' in err and str(tmp_path / 'ckpt' / 'original' / 'f.pth') in err


def test_progress_display_tty_and_plain(monkeypatch):
    clock = iter(range(0, 10000, 11))  # 11 s per reading: more than both refresh periods
    monkeypatch.setattr(download.time, 'monotonic', lambda: float(next(clock)))

    class Tty(io.StringIO):
        def isatty(self):
            return True

    tty = Tty()
    meter = download.ProgressMeter('x.pth', total=4 * 1024 * 1024, done=0, stream=tty)
    meter.update(1024 * 1024)
    meter.finish()
    assert meter.mode == 'tty'
    text = tty.getvalue()
    assert text.startswith('\rx.pth: [######......') and '1.0 MiB / 4.0 MiB ( 25.0%)' in text and 'KiB/s ETA ' in text
    plain = io.StringIO()
    meter = download.ProgressMeter('x.pth', total=4 * 1024 * 1024, done=0, stream=plain)
    for _ in range(3):
        meter.update(1024 * 1024)
    meter.finish()
    lines = plain.getvalue().splitlines()
    assert meter.mode == 'plain' and '\r' not in plain.getvalue()
    assert lines[0] == 'x.pth: downloading (4.0 MiB)' and 'ETA' in lines[1] and lines[-1].startswith('x.pth: done')


# ----------------------------------------------------------------------------- the index


def test_list_table_shows_what_is_downloaded(tmp_path, capsys):
    index = load_index()
    dest = tmp_path / 'ckpt'
    dest.mkdir()
    (dest / 'brs-detr_r50_12e_coco.pth').write_bytes(b'x')  # a converted checkpoint
    assert tool.main(['--list', '--dest', str(dest)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ['name', 'config', 'published', 'AP', 'size', 'availability', 'downloaded']
    rows = {line.split()[0]: line for line in lines[2:]}
    assert set(rows) == set(index)
    assert rows['brs-detr_r50_12e_coco'].split()[-2:] == ['download', 'yes']
    assert 'configs/brs_detr/brs-detr_r50_4xb4-12e_coco.py' in rows['brs-detr_r50_12e_coco']
    assert 'box 50.1' in rows['brs-detr_r50_12e_coco']
    assert rows['brs-detr_swin-t_12e_coco'].split()[-2:] == ['download', 'no']
    assert rows['brs-detr_swin-l_12e_coco'].split()[-3:] == ['not', 'released', '-']
    assert 'manual download' in rows['co-deformable-detr_swin-t_12e_coco_co-detr-paper']
    assert 'box 40.0, mask 36.4' in rows['rs-mask-rcnn_r50_fpn_12e_coco_rs-paper']


@pytest.mark.parametrize('readme', ['README.md', 'checkpoints/README.md'])
def test_readme_table_is_generated_from_the_index(readme):
    """Both READMEs show the zoo table generated from the index, with config links relative to their folder."""
    with open(osp.join(REPO_ROOT, readme), encoding='utf-8') as file:
        text = file.read()
    block = text[text.index(README_TABLE_BEGIN) + len(README_TABLE_BEGIN):text.index(README_TABLE_END)]
    prefix = readme_link_prefix(osp.join(REPO_ROOT, readme), REPO_ROOT)
    assert prefix == ('' if readme == 'README.md' else '../')
    assert block.strip() == markdown_table(load_index(), prefix).strip(), (
        f'{readme} is out of date: run python tools/download_checkpoint.py --update-readme')
    for link in re.findall(r'\]\(([^)]+\.py)\)', block):  # every config link resolves from the README's folder
        assert osp.isfile(osp.join(REPO_ROOT, osp.dirname(readme), link)), link


def test_update_readme_rewrites_only_the_table(tmp_path):
    readme = tmp_path / 'README.md'
    readme.write_text(f'intro\n{README_TABLE_BEGIN}\nold table\n{README_TABLE_END}\nrest\n')
    assert tool.main(['--update-readme', str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith('intro\n') and text.endswith(f'{README_TABLE_END}\nrest\n') and 'old table' not in text
    assert markdown_table(load_index(), readme_link_prefix(str(readme), REPO_ROOT)) in text


def test_http_loader_trusts_only_verified_downloads(server, tmp_path):
    base_url, served = server
    digest = sha256_of(served / 'runner.pth')
    # File name carries the sha256 prefix (torch.hub convention): verified, cached, trusted.
    checkpoint = CheckpointLoader.load_checkpoint(f'{base_url}/runner-{digest[:8]}.pth', map_location='cpu')
    assert int(checkpoint['meta']['epoch']) == 12
    cached = osp.join(os.environ['TORCH_HOME'], 'hub', 'checkpoints', f'runner-{digest[:8]}.pth')
    assert trust.is_trusted(cached)
    # Nothing to verify against: downloaded, but full unpickling is refused.
    with pytest.raises(UntrustedCheckpointError, match='runner.pth'):
        CheckpointLoader.load_checkpoint(f'{base_url}/runner.pth', map_location='cpu')


@functools.lru_cache(maxsize=None)
def start_weights(config_file: str) -> tuple:
    """The weights a config starts from: its ``Pretrained`` init_cfg checkpoints and ``load_from``, as URLs
    (``torchvision://NAME`` resolved as brs_detr's loader does) or local paths."""
    from brs_detr.zoo.loaders import TORCHVISION_URLS
    from mmengine.config import Config
    cfg = Config.fromfile(config_file)
    inits = [cfg.model.get('init_cfg'), (cfg.model.get('backbone') or {}).get('init_cfg')]
    refs = [init['checkpoint'] for init in inits if isinstance(init, dict) and init.get('type') == 'Pretrained']
    refs += [cfg.load_from] if cfg.get('load_from') else []
    return tuple(TORCHVISION_URLS[ref.split('://', 1)[1]] if ref.startswith('torchvision://') else ref
                 for ref in refs)


def test_every_config_in_the_index_exists():
    """Catches dangling paths such as configs/brs_detr/brs_detr_r50_... for brs-detr_r50_...."""
    index = load_index(DEFAULT_INDEX)
    assert len(index) >= 40
    for entry in index.values():
        if entry['kind'] == 'detector':
            assert osp.isfile(osp.join(REPO_ROOT, entry['config'])), f'{entry["name"]}: no config {entry["config"]}'


def test_every_entry_starts_from_what_its_config_loads():
    """``starts_from`` names the pretrained entry of the config's init_cfg / load_from weights, and every weights
    file a zoo config starts from is itself a zoo entry."""
    index = load_index(DEFAULT_INDEX)
    pretrained = {entry['url']: name for name, entry in index.items() if entry['kind'] == 'pretrained'}
    local = {f'checkpoints/{entry["file_name"]}': name for name, entry in index.items()
             if entry['kind'] == 'pretrained' and entry['location'] == 'dest'}
    for name, entry in index.items():
        if entry['kind'] != 'detector':
            continue
        refs = start_weights(osp.join(REPO_ROOT, entry['config']))
        names = [pretrained.get(ref, local.get(ref)) for ref in refs]
        assert None not in names, f'{entry["config"]} starts from {refs}, not all of them are zoo entries'
        assert entry['starts_from'] in names, f'{name}: starts_from {entry["starts_from"]}, config loads {refs}'


def test_every_config_in_the_index_builds_its_model():
    """The configs of entries with an original layout are built (and loaded) by test_convert_checkpoint.py's
    test_original_layout_converts_and_loads_strictly; this builds all the others."""
    from brs_detr.zoo import build_model
    from state_dict_layouts import layout_names, load_layout
    with_layout = {load_layout(name)['project_config'] for name in layout_names()}
    configs = sorted({entry['config'] for entry in load_index(DEFAULT_INDEX).values() if entry['kind'] == 'detector'})
    assert len(configs) > len(set(configs) - with_layout) > 0
    for config in sorted(set(configs) - with_layout):
        if 'timm' in config and importlib.util.find_spec('timm') is None:
            continue  # optional dependency (tools/install.sh installs it)
        try:
            with torch.device('meta'):  # names and shapes only: fast
                model = build_model(osp.join(REPO_ROOT, config))
        except (RuntimeError, NotImplementedError):  # Swin computes drop-path rates with .item()
            model = build_model(osp.join(REPO_ROOT, config))
        assert len(model.state_dict()) > 0, config


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_download_convert_and_test_a_tiny_model_as_a_user_does(server, tmp_path, toy_coco_root, tool_env):
    """download_checkpoint.py NAME (Drive confirmation page, mmdet 2.x pickled meta, optimizer state) leaves
    checkpoints/NAME.pth, and tools/test.py CONFIG checkpoints/NAME.pth evaluates it with every key loaded."""
    from brs_detr.zoo import build_model
    base_url, served = server
    config = 'configs/toy/brs-paa_r18-tiny_2xb2-12e_toy-coco.py'
    torch.manual_seed(0)
    state = build_model(osp.join(REPO_ROOT, config)).state_dict()  # the released CNN layout is this project's
    save_mmdet2_checkpoint(state, served / 'brs_paa_toy.pth')
    index = write_index(tmp_path / 'index.json', [dict(name='brs-paa_toy', url=f'{base_url}/gdrive/download?id='
                                                       'brs_paa_toy', file_name='brs-paa_toy_mmdet2.pth',
                                                       config=config)])
    dest = tmp_path / 'checkpoints'
    # tool_env was copied before this test's isolated $BRS_DETR_HOME / $TORCH_HOME were set
    env = dict(tool_env, OMP_NUM_THREADS='1', TORCH_HOME=os.environ['TORCH_HOME'])
    env[trust.HOME_ENV] = os.environ[trust.HOME_ENV]
    done = subprocess.run([sys.executable, TOOL, 'brs-paa_toy', '--index', index, '--dest', str(dest)],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr
    converted = dest / 'brs-paa_toy.pth'
    assert f'use: python tools/test.py {config} {osp.relpath(converted)}' in done.stdout
    assert 'loads strictly into' in done.stdout
    checkpoint = torch.load(converted, weights_only=True)  # plain: no trust needed
    assert checkpoint['meta']['dataset_meta'] == dict(classes=('person', 'bicycle', 'car'))
    assert checkpoint['meta']['source_sha256'] == sha256_of(served / 'brs_paa_toy.pth')
    assert all(torch.equal(checkpoint['state_dict'][key], value) for key, value in state.items())
    again = subprocess.run([sys.executable, TOOL, 'brs-paa_toy', '--index', index, '--dest', str(dest)],
                           capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0 and 'is up to date' in again.stdout
    assert known_hashes.recorded('brs-paa_toy')['converted_sha256'] == sha256_of(converted)  # in this test's home
    tested = subprocess.run([sys.executable, osp.join(REPO_ROOT, 'tools', 'test.py'), osp.join(REPO_ROOT, config),
                             str(converted), '--work-dir', str(tmp_path / 'work')], capture_output=True, text=True,
                            timeout=600, env=env, cwd=toy_coco_root.parents[1])
    output = tested.stdout + tested.stderr
    assert tested.returncode == 0, output[-3000:]
    assert 'coco/bbox_mAP' in output
    assert 'missing keys' not in output and 'unexpected key' not in output
