"""Checksum-verified, resumable, atomic file download (http, https, Google Drive).

The file is streamed into ``<dst>.partial`` (continued with an HTTP ``Range`` request when a partial
file is left over and the server supports it), hashed on the fly, checked against a full sha256 or
a torch.hub-style hash prefix, fsynced and only then renamed to ``dst``. A checksum mismatch removes
the partial file; ``dst`` never holds an unverified or truncated download.

Google Drive serves large files behind an HTML "can't scan this file for viruses" page. The
``drive.usercontent.google.com/download?id=...&export=download&confirm=t`` URL usually skips it; if
an HTML page still comes back, its ``download-form`` (action URL plus hidden inputs such as
``confirm`` and ``uuid``) or an ``/uc?export=download`` link is followed once more, with the cookies
Drive set.
"""
import hashlib
import html
import http.cookiejar
import os
import os.path as osp
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import IO, Dict, List, Optional, Tuple
from urllib.parse import urlencode, urljoin, urlsplit, urlunsplit, parse_qsl

READ_CHUNK_BYTES = 1024 * 1024
PROGRESS_INTERVAL_S = 0.5
DEFAULT_TIMEOUT_S = 60.0
#: How many HTML confirmation pages are followed before giving up.
MAX_CONFIRMATION_HOPS = 2
#: HTML pages larger than this are not parsed for a confirmation form.
MAX_HTML_BYTES = 4 * 1024 * 1024
USER_AGENT = 'brs-detr-download/1.0 (+urllib)'
PARTIAL_SUFFIX = '.partial'


class DownloadError(RuntimeError):
    """The download failed (HTTP error, unreachable host, truncated transfer, HTML instead of a file)."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256 (prefix)."""


class _ConfirmationPageParser(HTMLParser):
    """Finds Google Drive's ``download-form`` / ``/uc?export=download`` link / error text in a page."""

    def __init__(self) -> None:
        super().__init__()
        self.form_action: Optional[str] = None
        self.form_inputs: List[Tuple[str, str]] = []
        self.export_href: Optional[str] = None
        self.error_text: List[str] = []
        self._in_form = False
        self._in_error = False

    def handle_starttag(self, tag: str, attrs: List[Tuple[str, Optional[str]]]) -> None:
        attributes = {key: value or '' for key, value in attrs}
        if tag == 'form' and attributes.get('id') == 'download-form':
            self._in_form = True
            self.form_action = attributes.get('action', '')
        elif tag == 'input' and self._in_form and attributes.get('type') == 'hidden' and attributes.get('name'):
            self.form_inputs.append((attributes['name'], attributes.get('value', '')))
        elif tag == 'a' and '/uc?export=download' in attributes.get('href', '') and self.export_href is None:
            self.export_href = attributes['href']
        elif 'uc-error-subcaption' in attributes.get('class', '').split():
            self._in_error = True

    def handle_endtag(self, tag: str) -> None:
        if tag == 'form':
            self._in_form = False
        self._in_error = False

    def handle_data(self, data: str) -> None:
        if self._in_error and data.strip():
            self.error_text.append(data.strip())


def confirmation_url(page: str, page_url: str) -> Optional[str]:
    """The URL a Google Drive HTML confirmation page points to, or ``None`` if it has none.

    Raises:
        DownloadError: The page is Drive's error page (quota exceeded, no access, ...).
    """
    parser = _ConfirmationPageParser()
    parser.feed(page)
    if parser.form_action:
        action = urljoin(page_url, html.unescape(parser.form_action))
        scheme, netloc, path, query, fragment = urlsplit(action)
        params = dict(parse_qsl(query))
        params.update(parser.form_inputs)
        return urlunsplit((scheme, netloc, path, urlencode(params), fragment))
    if parser.export_href:
        return urljoin(page_url, html.unescape(parser.export_href))
    if parser.error_text:
        raise DownloadError(f'Google Drive refused the download of {page_url}: {" ".join(parser.error_text)}')
    return None


def _format_bytes(count: float) -> str:
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if count < 1024 or unit == 'GiB':
            return f'{count:.1f} {unit}' if unit != 'B' else f'{int(count)} B'
        count /= 1024
    return f'{count:.1f} GiB'


class _Progress:
    """A single ``\\r``-refreshed progress line on a stream (stderr by default)."""

    def __init__(self, label: str, total: Optional[int], done: int, enabled: bool, stream: IO[str]) -> None:
        self.label, self.total, self.done = label, total, done
        self.enabled, self.stream = enabled, stream
        self.start_time = self.last_time = time.monotonic()
        self.start_done = done

    def update(self, count: int, final: bool = False) -> None:
        self.done += count
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last_time < PROGRESS_INTERVAL_S):
            return
        self.last_time = now
        rate = (self.done - self.start_done) / max(now - self.start_time, 1e-6)
        if self.total:
            text = (f'{self.label}: {_format_bytes(self.done)} / {_format_bytes(self.total)} '
                    f'({100.0 * self.done / self.total:5.1f}%) {_format_bytes(rate)}/s')
        else:
            text = f'{self.label}: {_format_bytes(self.done)} {_format_bytes(rate)}/s'
        self.stream.write('\r' + text.ljust(78) + ('\n' if final else ''))
        self.stream.flush()


def _open(opener: urllib.request.OpenerDirector, url: str, offset: int, timeout: float):
    headers: Dict[str, str] = {'User-Agent': USER_AGENT}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:  # the partial file is already complete (or bogus)
            raise
        raise DownloadError(f'HTTP error {error.code} ({error.reason}) while downloading {url}') from None
    except urllib.error.URLError as error:
        raise DownloadError(f'cannot reach {url}: {error.reason}') from None
    except OSError as error:  # timeouts, connection resets
        raise DownloadError(f'cannot download {url}: {error}') from None


def download_file(url: str,
                  dst: str,
                  sha256: Optional[str] = None,
                  hash_prefix: Optional[str] = None,
                  progress: bool = True,
                  resume: bool = True,
                  timeout: float = DEFAULT_TIMEOUT_S,
                  stream: Optional[IO[str]] = None) -> str:
    """Download ``url`` to ``dst`` atomically and verify its checksum.

    Args:
        url: http(s) URL (Google Drive confirmation pages are followed).
        dst: Destination path; its directory is created.
        sha256: Expected full sha256 (hex), or ``None``.
        hash_prefix: Expected leading hex digits of the sha256 (torch.hub file-name convention),
            used when ``sha256`` is ``None``.
        progress: Print a progress line.
        resume: Continue a left-over ``<dst>.partial`` with an HTTP Range request. Without it a
            unique temporary name is used (safe when several processes download the same file).
        timeout: Socket timeout in seconds.
        stream: Where the progress line goes (default ``sys.stderr``).

    Returns:
        The sha256 hex digest of the downloaded file.

    Raises:
        DownloadError: HTTP error (status and URL in the message), unreachable host, truncated
            transfer or an HTML page where a file was expected.
        ChecksumError: The content does not match ``sha256`` / ``hash_prefix`` (the partial file
            is removed; ``dst`` is untouched).
    """
    stream = stream or sys.stderr
    dst = osp.abspath(osp.expanduser(dst))
    os.makedirs(osp.dirname(dst), exist_ok=True)
    partial = dst + PARTIAL_SUFFIX if resume else f'{dst}.{os.getpid()}.{time.time_ns()}{PARTIAL_SUFFIX}'
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    current_url = url
    try:
        for _ in range(MAX_CONFIRMATION_HOPS + 1):
            offset = osp.getsize(partial) if resume and osp.isfile(partial) else 0
            try:
                response = _open(opener, current_url, offset, timeout)
            except urllib.error.HTTPError:  # 416 on a stale partial file: start over
                os.remove(partial)
                offset = 0
                response = _open(opener, current_url, offset, timeout)
            with response:
                content_type = response.headers.get('Content-Type', '')
                if content_type.startswith('text/html'):
                    page = response.read(MAX_HTML_BYTES).decode('utf-8', errors='replace')
                    next_url = confirmation_url(page, response.geturl())
                    if next_url is None or next_url == current_url:
                        raise DownloadError(
                            f'{url} returned an HTML page instead of a file (for Google Drive: the file may not '
                            f'be shared publicly, or its daily download quota is exhausted; try again later or '
                            f'download it in a browser and record it with '
                            f'tools/download_checkpoint.py --trust-file PATH)')
                    current_url = next_url
                    continue
                return _stream_to_file(response, url, dst, partial, offset, sha256, hash_prefix, progress,
                                       stream)
        raise DownloadError(f'{url}: still an HTML page after {MAX_CONFIRMATION_HOPS} confirmation steps')
    except ChecksumError:
        raise
    except BaseException:
        if not resume and osp.exists(partial):
            os.remove(partial)
        raise


def _stream_to_file(response, url: str, dst: str, partial: str, offset: int, sha256: Optional[str],
                    hash_prefix: Optional[str], progress: bool, stream: IO[str]) -> str:
    status = getattr(response, 'status', 200)
    digest = hashlib.sha256()
    if offset and status == 206:
        content_range = response.headers.get('Content-Range', '')
        if not content_range.startswith(f'bytes {offset}-'):
            raise DownloadError(f'{url}: asked to resume at byte {offset} but the server sent range '
                                f'"{content_range}"; delete {partial} and try again')
        with open(partial, 'rb') as existing:  # re-hash what is already there
            for chunk in iter(lambda: existing.read(READ_CHUNK_BYTES), b''):
                digest.update(chunk)
        mode = 'ab'
    else:
        offset, mode = 0, 'wb'
    length_header = response.headers.get('Content-Length')
    total = offset + int(length_header) if length_header and length_header.isdigit() else None
    meter = _Progress(osp.basename(dst), total, offset, progress, stream)
    with open(partial, mode) as file:
        for chunk in iter(lambda: response.read(READ_CHUNK_BYTES), b''):
            file.write(chunk)
            digest.update(chunk)
            meter.update(len(chunk))
        file.flush()
        os.fsync(file.fileno())
    meter.update(0, final=True)
    size = osp.getsize(partial)
    if total is not None and size != total:
        raise DownloadError(f'download of {url} was cut off at {size} of {total} bytes; run the command again '
                            f'to resume from {partial}')
    got = digest.hexdigest()
    if sha256 and got != sha256.lower():
        os.remove(partial)
        raise ChecksumError(f'checksum mismatch for {url}: expected sha256 {sha256.lower()}, got {got} '
                            f'(the partial file was removed)')
    if not sha256 and hash_prefix and not got.startswith(hash_prefix.lower()):
        os.remove(partial)
        raise ChecksumError(f'checksum mismatch for {url}: expected a sha256 starting with {hash_prefix.lower()} '
                            f'(from the file name), got {got} (the partial file was removed)')
    os.replace(partial, dst)
    return got
