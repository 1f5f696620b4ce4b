"""tools/download_checkpoint.py and the checksum-verified http loader, against a local HTTP server.

No network: files are served from a temporary directory by ``http.server`` on 127.0.0.1 (ephemeral port,
a thread, shut down in teardown); the tool is pointed at it with a temporary index or ``--url-override``.
"""
import hashlib
import importlib.util
import json
import os
import os.path as osp
import subprocess
import sys
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pytest
import torch
from torch import nn

import brs_detr  # noqa: F401  (installs the loaders)
from brs_detr.utils import trust
from brs_detr.utils.checkpoint import UntrustedCheckpointError
from mmengine.runner import CheckpointLoader, load_checkpoint

REPO_ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOOL = osp.join(REPO_ROOT, 'tools', 'download_checkpoint.py')
GDRIVE_UUID = 'test-uuid-1234'


def _load_tool():
    spec = importlib.util.spec_from_file_location('download_checkpoint_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tool = _load_tool()


class Handler(SimpleHTTPRequestHandler):
    """Static files plus a fake Google Drive confirmation page and a Range-capable route."""

    range_requests = []

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def _send_bytes(self, data: bytes, status: int = 200, content_type: str = 'application/octet-stream',
                    extra_headers=None) -> None:
        self.send_response(status)
        self.send_header('Content-Type', content_type)
        self.send_header('Content-Length', str(len(data)))
        for key, value in (extra_headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        if parts.path == '/gdrive/download':
            # Drive's "can't scan for viruses" page: a form whose hidden inputs must be sent back.
            page = ('<html><body><p>Google Drive can\'t scan this file for viruses.</p>'
                    '<form id="download-form" action="/gdrive/usercontent?id=toy&amp;export=download" method="get">'
                    '<input type="submit" value="Download anyway"/>'
                    '<input type="hidden" name="confirm" value="t">'
                    f'<input type="hidden" name="uuid" value="{GDRIVE_UUID}"></form></body></html>')
            self._send_bytes(page.encode(), content_type='text/html; charset=utf-8')
        elif parts.path == '/gdrive/usercontent':
            if query.get('uuid') != [GDRIVE_UUID] or query.get('confirm') != ['t'] or query.get('id') != ['toy']:
                self._send_bytes(b'<html>bad confirmation</html>', status=403, content_type='text/html')
                return
            with open(osp.join(self.directory, 'toy.pth'), 'rb') as file:
                self._send_bytes(file.read())
        elif parts.path.startswith('/ranged/'):
            with open(osp.join(self.directory, parts.path[len('/ranged/'):]), 'rb') as file:
                data = file.read()
            requested = self.headers.get('Range')
            Handler.range_requests.append(requested)
            if requested and requested.startswith('bytes=') and requested.endswith('-'):
                start = int(requested[len('bytes='):-1])
                self._send_bytes(data[start:], status=206,
                                 extra_headers={'Content-Range': f'bytes {start}-{len(data) - 1}/{len(data)}'})
            else:
                self._send_bytes(data)
        else:
            super().do_GET()


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    """(base URL, served directory, sha256 of toy.pth). toy.pth pickles numpy scalars: it needs trust to load."""
    served = tmp_path_factory.mktemp('served')
    torch.save(dict(state_dict=nn.Linear(2, 1).state_dict(), meta=dict(lr=np.float64(0.01), epoch=np.int64(12))),
               served / 'toy.pth')
    digest = hashlib.sha256((served / 'toy.pth').read_bytes()).hexdigest()
    (served / f'toy-{digest[:8]}.pth').write_bytes((served / 'toy.pth').read_bytes())
    httpd = ThreadingHTTPServer(('127.0.0.1', 0), partial(Handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f'http://127.0.0.1:{httpd.server_address[1]}', served, digest
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=10)


@pytest.fixture(autouse=True)
def isolated_state(tmp_path, monkeypatch):
    monkeypatch.setenv(trust.HOME_ENV, str(tmp_path / 'brs_detr_home'))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    monkeypatch.delenv(trust.TRUSTED_DIRS_ENV, raising=False)
    trust.reset_trust()
    yield
    trust.reset_trust()


def write_index(path, entries) -> str:
    base = dict(gdrive_id=None, sha256=None, config='toy', box_ap=None, source='test', format='mmdet3',
                needs_conversion=False)
    path.write_text(json.dumps(dict(version=1, models=[dict(base, **entry) for entry in entries])))
    return str(path)


def test_download_verify_record_and_trusted_load(server, tmp_path):
    base_url, _, digest = server
    index = write_index(tmp_path / 'index.json',
                        [dict(name='toy', url=f'{base_url}/toy.pth', sha256=digest, file_name='toy.pth')])
    dest = tmp_path / 'checkpoints'
    # End to end as a user runs it.
    result = subprocess.run([sys.executable, TOOL, 'toy', '--index', index, '--dest', str(dest)],
                            capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert result.returncode == 0, result.stderr
    path = str(dest / 'toy.pth')
    assert f'sha256: {digest}' in result.stdout
    assert f'path: {path}' in result.stdout
    assert 'toy.pth: ' in result.stderr  # the progress line
    assert sorted(os.listdir(dest)) == [trust.MANIFEST_NAME, 'toy.pth']  # no .partial left
    entry = json.loads((dest / trust.MANIFEST_NAME).read_text())['files']['toy.pth']
    assert entry['sha256'] == digest and entry['verified_by'] == 'sha256'

    # The verified file is trusted: mmengine's load_checkpoint unpickles its numpy metadata.
    model = nn.Linear(2, 1)
    checkpoint = load_checkpoint(model, path, map_location='cpu', strict=True)
    assert int(checkpoint['meta']['epoch']) == 12
    # The very same bytes elsewhere, without a manifest entry, are refused.
    copy = tmp_path / 'elsewhere' / 'toy.pth'
    copy.parent.mkdir()
    copy.write_bytes((dest / 'toy.pth').read_bytes())
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(str(copy))
    # Tampering with the downloaded file revokes the trust.
    with open(path, 'ab') as file:
        file.write(b'\0')
    assert not trust.is_trusted(path)

    # A second run re-verifies the existing file instead of trusting it blindly.
    assert tool.main(['toy', '--index', index, '--dest', str(dest), '--quiet']) == 1


def test_hash_prefix_in_file_name_and_url_override(server, tmp_path, capsys):
    base_url, _, digest = server
    file_name = f'toy-{digest[:8]}.pth'
    index = write_index(tmp_path / 'index.json',
                        [dict(name='toy', url='https://example.invalid/unreachable.pth', file_name=file_name)])
    dest = tmp_path / 'checkpoints'
    assert tool.main(['toy', '--index', index, '--dest', str(dest), '--url-override', f'{base_url}/{file_name}',
                      '--quiet']) == 0
    assert 'verified (file-name hash prefix)' in capsys.readouterr().out
    assert trust.is_trusted(dest / file_name)


def test_checksum_mismatch_removes_partial_file(server, tmp_path, capsys):
    base_url, _, digest = server
    wrong = ('0' if digest[0] != '0' else '1') + digest[1:]
    index = write_index(tmp_path / 'index.json',
                        [dict(name='toy', url=f'{base_url}/toy.pth', sha256=wrong, file_name='toy.pth')])
    dest = tmp_path / 'checkpoints'
    assert tool.main(['toy', '--index', index, '--dest', str(dest), '--quiet']) == 1
    error = capsys.readouterr().err
    assert 'checksum mismatch' in error and f'expected sha256 {wrong}' in error and f'got {digest}' in error
    assert os.listdir(dest) == []


def test_http_404_reports_status_and_url(server, tmp_path, capsys):
    base_url, _, _ = server
    index = write_index(tmp_path / 'index.json', [dict(name='toy', url=f'{base_url}/toy.pth', file_name='toy.pth')])
    missing = f'{base_url}/no/such/file.pth'
    assert tool.main(['toy', '--index', index, '--dest', str(tmp_path / 'out'), '--url-override', missing]) == 1
    error = capsys.readouterr().err
    assert 'HTTP error 404' in error and missing in error


def test_unknown_name_lists_known_names(tmp_path, capsys):
    index = write_index(tmp_path / 'index.json', [
        dict(name='alpha', url='http://127.0.0.1:9/a.pth', file_name='a.pth'),
        dict(name='beta', url='http://127.0.0.1:9/b.pth', file_name='b.pth')
    ])
    assert tool.main(['gamma', '--index', index, '--dest', str(tmp_path / 'out')]) == 1
    error = capsys.readouterr().err
    assert 'unknown checkpoint name "gamma"' in error and 'alpha, beta' in error
    assert not osp.exists(tmp_path / 'out')


def test_google_drive_confirmation_page_is_followed(server, tmp_path, capsys):
    base_url, _, digest = server
    index = write_index(tmp_path / 'index.json', [
        dict(name='authors', url='https://drive.google.com/file/d/x/view', gdrive_id='x', file_name='authors.pth',
             format='mmdet2', needs_conversion=True)
    ])
    dest = tmp_path / 'checkpoints'
    assert tool.main(['authors', '--index', index, '--dest', str(dest), '--url-override',
                      f'{base_url}/gdrive/download', '--quiet']) == 0
    out = capsys.readouterr()
    assert f'sha256: {digest}' in out.out
    assert 'NOT trusted' in out.err  # no checksum known: downloaded, but not trusted
    assert 'tools/convert_checkpoint.py' in out.out
    assert not trust.is_trusted(dest / 'authors.pth')
    with pytest.raises(UntrustedCheckpointError):
        CheckpointLoader.load_checkpoint(str(dest / 'authors.pth'))
    # Explicit trust of the local file (what the loader's error message suggests).
    assert tool.main(['--trust-file', str(dest / 'authors.pth')]) == 0
    assert int(CheckpointLoader.load_checkpoint(str(dest / 'authors.pth'))['meta']['epoch']) == 12


def test_interrupted_download_is_resumed_with_range(server, tmp_path):
    base_url, served, digest = server
    data = (served / 'toy.pth').read_bytes()
    index = write_index(tmp_path / 'index.json',
                        [dict(name='toy', url=f'{base_url}/ranged/toy.pth', sha256=digest, file_name='toy.pth')])
    dest = tmp_path / 'checkpoints'
    dest.mkdir()
    (dest / 'toy.pth.partial').write_bytes(data[:len(data) // 2])  # left over by an interrupted run
    Handler.range_requests.clear()
    assert tool.main(['toy', '--index', index, '--dest', str(dest), '--quiet']) == 0
    assert Handler.range_requests == [f'bytes={len(data) // 2}-']
    assert (dest / 'toy.pth').read_bytes() == data


def test_list(capsys):
    assert tool.main(['--list']) == 0
    out = capsys.readouterr().out
    for name in ('co_dino_5scale_r50_1x_coco', 'brs_detr_r50_12e_coco_brs_authors', 'swin_tiny_patch4_window7_224'):
        assert name in out


def test_http_loader_trusts_only_verified_downloads(server, tmp_path):
    base_url, _, digest = server
    # File name carries the sha256 prefix (torch.hub convention): verified, cached, trusted.
    checkpoint = CheckpointLoader.load_checkpoint(f'{base_url}/toy-{digest[:8]}.pth', map_location='cpu')
    assert int(checkpoint['meta']['epoch']) == 12
    cached = osp.join(os.environ['TORCH_HOME'], 'hub', 'checkpoints', f'toy-{digest[:8]}.pth')
    assert trust.is_trusted(cached)
    # Nothing to verify against: downloaded, but full unpickling is refused.
    with pytest.raises(UntrustedCheckpointError, match='toy.pth'):
        CheckpointLoader.load_checkpoint(f'{base_url}/toy.pth', map_location='cpu')
