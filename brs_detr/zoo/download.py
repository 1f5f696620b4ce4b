"""Resumable, checksum-verified, atomic file download (http, https, Google Drive) with a progress display.

The body is streamed into ``<dst>.partial``, hashed on the fly, checked, fsynced and only then renamed to
``dst``: ``dst`` never holds a truncated or unverified download.

* **Resume.** A left-over ``<dst>.partial`` is continued with an HTTP ``Range: bytes=N-`` request. The
  download starts over cleanly (the partial file is truncated) when the server ignores the range (``200``
  instead of ``206``), answers a different range, or the partial file is larger than the file
  (``416 Range Not Satisfiable``; a partial file exactly as long as the file is checked as it is). A
  connection that drops in the middle of the body is resumed automatically (``retries`` times, with an
  exponential back-off); after that the partial file stays for the next run.
* **Google Drive.** Large files are served behind an HTML "can't scan this file for viruses" page. Its
  ``download-form`` (action URL plus hidden inputs such as ``confirm`` and ``uuid``) or an
  ``/uc?export=download`` link is followed with the cookies Drive set. Drive's error pages (quota
  exceeded, no access) and any other HTML body are rejected: nothing of them is written to disk.
* **Checksum.** A full sha256 or a torch.hub-style hash prefix. On a mismatch the file is moved aside
  to ``<dst>.sha256-<first 12 hex digits>.rejected`` (kept for inspection, never loaded) and
  :class:`ChecksumError` says where.
* **Disk full.** ``ENOSPC`` (or a free-space check before the body when its length is known) raises
  :class:`DiskFullError`; the bytes already written stay in the partial file (a correct prefix of the
  file), so the same call resumes once space has been freed.
* **Progress** goes to ``stream`` (stderr by default): one ``\\r``-refreshed bar with size, speed and ETA on
  a terminal, a plain line every :data:`PLAIN_REPORT_INTERVAL_S` seconds otherwise (log files, CI).
"""
import errno
import html
import http.client
import http.cookiejar
import os
import os.path as osp
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
from html.parser import HTMLParser
from typing import IO, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qsl, urlencode, urljoin, urlsplit, urlunsplit

from brs_detr.fileio.trust import sha256_file

READ_CHUNK_BYTES = 1024 * 1024
#: Refresh period of the progress bar on a terminal.
TTY_REFRESH_S = 0.2
#: Period of the plain progress lines when the stream is not a terminal.
PLAIN_REPORT_INTERVAL_S = 10.0
PROGRESS_BAR_WIDTH = 24
DEFAULT_TIMEOUT_S = 60.0
#: How often an interrupted body is resumed within one call.
DEFAULT_RETRIES = 3
#: First wait before resuming; doubled after every further interruption.
DEFAULT_RETRY_WAIT_S = 2.0
#: How many HTML confirmation pages are followed before giving up.
MAX_CONFIRMATION_HOPS = 2
#: HTML pages larger than this are not parsed for a confirmation form.
MAX_HTML_BYTES = 4 * 1024 * 1024
#: Leading bytes inspected to recognise an HTML body whose Content-Type does not say so.
HTML_SNIFF_BYTES = 512
USER_AGENT = 'brs-detr-download/1.1 (+urllib)'
PARTIAL_SUFFIX = '.partial'
REJECTED_SUFFIX = '.rejected'
#: Hex digits of the actual sha256 in the name of a file moved aside after a checksum mismatch.
REJECTED_HASH_DIGITS = 12
_HTML_START = re.compile(rb'^\s*(<!doctype\s+html|<html|<head|<body|<\?xml[^>]*>\s*<html)', re.IGNORECASE)
_CONTENT_RANGE = re.compile(r'^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$')


class DownloadError(RuntimeError):
    """The download failed (HTTP error, truncated transfer, HTML instead of a file, ...)."""


class NetworkError(DownloadError):
    """The server could not be reached at all (no network, DNS failure, connection refused, timeout)."""

    def __init__(self, url: str, reason: object) -> None:
        super().__init__(f'cannot reach {url}: {reason}')
        self.url, self.reason = url, reason


class HTMLResponseError(DownloadError):
    """The server answered with an HTML page where a file was expected."""


class ChecksumError(DownloadError):
    """The downloaded bytes do not have the expected sha256 (prefix); ``rejected_path`` holds them."""

    def __init__(self, message: str, rejected_path: Optional[str] = None) -> None:
        super().__init__(message)
        self.rejected_path = rejected_path


class DiskFullError(DownloadError):
    """No space left on the device; ``partial_path`` keeps the ``bytes_kept`` bytes written so far."""

    def __init__(self, message: str, partial_path: str, bytes_kept: int) -> None:
        super().__init__(message)
        self.partial_path, self.bytes_kept = partial_path, bytes_kept


class _Interrupted(Exception):
    """The body stopped before its end (connection reset, timeout, short read); resumable."""


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
        HTMLResponseError: The page is Drive's error page (quota exceeded, no access, ...).
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
        raise HTMLResponseError(f'Google Drive refused the download of {page_url}: {" ".join(parser.error_text)}')
    return None


def looks_like_html(head: bytes) -> bool:
    """Whether the first bytes of a body are an HTML document."""
    return bool(_HTML_START.match(head[:HTML_SNIFF_BYTES]))


def format_bytes(count: float) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    for unit in ('B', 'KiB', 'MiB', 'GiB'):
        if abs(count) < 1024 or unit == 'GiB':
            return f'{int(count)} B' if unit == 'B' else f'{count:.1f} {unit}'
        count /= 1024
    return f'{count:.1f} GiB'


def _format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60:02d}:{rest % 60:02d}'


class ProgressMeter:
    """Progress of one transfer: a ``\\r`` bar on a terminal, plain periodic lines elsewhere, or nothing.

    Args:
        label: Shown in front (usually the file name).
        total: Expected final size in bytes, or ``None`` when unknown.
        done: Bytes already present before this transfer (a resumed partial file).
        stream: Where to write.
        mode: ``'tty'``, ``'plain'``, ``'off'``, or ``None`` to pick ``'tty'`` when ``stream.isatty()``.
    """

    def __init__(self, label: str, total: Optional[int], done: int, stream: IO[str],
                 mode: Optional[str] = None) -> None:
        if mode is None:
            mode = 'tty' if getattr(stream, 'isatty', lambda: False)() else 'plain'
        if mode not in ('tty', 'plain', 'off'):
            raise ValueError(f'progress mode must be tty, plain or off, got {mode!r}')
        self.label, self.total, self.done, self.stream, self.mode = label, total, done, stream, mode
        self.start_time = self.last_time = time.monotonic()
        self.start_done = done
        if mode == 'plain':
            resumed = f', resuming at {format_bytes(done)}' if done else ''
            size = format_bytes(total) if total else 'unknown size'
            self._write_line(f'{label}: downloading ({size}{resumed})')

    def _write_line(self, text: str) -> None:
        self.stream.write(text + '\n')
        self.stream.flush()

    def rate(self, now: float) -> float:
        """Bytes per second since this transfer started."""
        return (self.done - self.start_done) / max(now - self.start_time, 1e-6)

    def describe(self, now: float) -> str:
        """``'12.0 MiB / 97.8 MiB (12.3%) 4.1 MiB/s ETA 00:21'`` (parts that are unknown are left out)."""
        rate = self.rate(now)
        if self.total:
            eta = _format_duration((self.total - self.done) / rate) if rate > 0 else '--:--'
            return (f'{format_bytes(self.done)} / {format_bytes(self.total)} '
                    f'({100.0 * self.done / self.total:5.1f}%) {format_bytes(rate)}/s ETA {eta}')
        return f'{format_bytes(self.done)} {format_bytes(rate)}/s'

    def update(self, count: int) -> None:
        """``count`` more bytes arrived."""
        self.done += count
        now = time.monotonic()
        interval = TTY_REFRESH_S if self.mode == 'tty' else PLAIN_REPORT_INTERVAL_S
        if self.mode == 'off' or now - self.last_time < interval:
            return
        self.last_time = now
        if self.mode == 'tty':
            bar = ''
            if self.total:
                filled = int(PROGRESS_BAR_WIDTH * min(self.done / self.total, 1.0))
                bar = '[' + '#' * filled + '.' * (PROGRESS_BAR_WIDTH - filled) + '] '
            self.stream.write(f'\r{self.label}: {bar}{self.describe(now)}'.ljust(100)[:160])
            self.stream.flush()
        else:
            self._write_line(f'{self.label}: {self.describe(now)}')

    def finish(self, interrupted: bool = False) -> None:
        """Close the display with a summary line."""
        if self.mode == 'off':
            return
        now = time.monotonic()
        elapsed = now - self.start_time
        what = 'interrupted at' if interrupted else 'done,'
        summary = (f'{self.label}: {what} {format_bytes(self.done)} '
                   f'({format_bytes(self.done - self.start_done)} in {_format_duration(elapsed)}, '
                   f'{format_bytes(self.rate(now))}/s)')
        if self.mode == 'tty':
            self.stream.write('\r' + summary.ljust(100) + '\n')
            self.stream.flush()
        else:
            self._write_line(summary)


def _open_partial(path: str, mode: str) -> IO[bytes]:
    """Open the partial file (a seam for tests that simulate a full disk)."""
    return open(path, mode)


def _build_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))


def _request(opener: urllib.request.OpenerDirector, url: str, offset: int, timeout: float):
    """Open ``url`` (from byte ``offset``); a 416 answer is returned, not raised."""
    headers: Dict[str, str] = {'User-Agent': USER_AGENT}
    if offset:
        headers['Range'] = f'bytes={offset}-'
    request = urllib.request.Request(url, headers=headers)
    try:
        return opener.open(request, timeout=timeout)
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            return error
        raise DownloadError(f'HTTP error {error.code} ({error.reason}) while downloading {url}') from None
    except urllib.error.URLError as error:
        raise NetworkError(url, error.reason) from None
    except (OSError, http.client.HTTPException) as error:  # timeouts, resets before the headers
        raise NetworkError(url, error) from None


def _content_range(response) -> Tuple[Optional[int], Optional[int]]:
    """(first byte, total size) of a ``Content-Range`` header; ``None`` for what it does not say."""
    match = _CONTENT_RANGE.match(response.headers.get('Content-Range', '').strip())
    if not match:
        return None, None
    first = int(match.group(1)) if match.group(1) is not None else None
    total = int(match.group(3)) if match.group(3) != '*' else None
    return first, total


def _disk_full(partial: str, url: str, total: Optional[int]) -> DiskFullError:
    kept = osp.getsize(partial) if osp.isfile(partial) else 0
    need = f' of {format_bytes(total)}' if total else ''
    return DiskFullError(
        f'no space left on the device of {osp.dirname(partial)} while downloading {url}: {format_bytes(kept)}{need} '
        f'are kept in {partial}. Free at least {format_bytes(max((total or 0) - kept, 0))} there and run the same '
        f'command again to resume, or delete {partial} to give the space back.', partial, kept)


class _Transfer:
    """One download of ``url`` into ``partial`` (see :func:`download_file`)."""

    def __init__(self, url: str, partial: str, label: str, timeout: float, progress_mode: str,
                 stream: IO[str], log: Callable[[str], None]) -> None:
        self.url, self.partial, self.label, self.timeout = url, partial, label, timeout
        self.progress_mode, self.stream, self.log = progress_mode, stream, log
        self.opener = _build_opener()
        self.current_url = url  # after Drive's confirmation page: the confirmed URL

    def _offset(self) -> int:
        return osp.getsize(self.partial) if osp.isfile(self.partial) else 0

    def _restart(self, why: str) -> None:
        self.log(f'{self.label}: {why}; starting over')
        if osp.exists(self.partial):
            os.remove(self.partial)

    def _open_body(self):
        """A response positioned at the first missing byte of the partial file, or ``None`` when the partial
        file already holds the whole file. Follows Drive's confirmation pages; rejects HTML bodies."""
        for _ in range(MAX_CONFIRMATION_HOPS + 1):
            offset = self._offset()
            response = _request(self.opener, self.current_url, offset, self.timeout)
            if getattr(response, 'status', getattr(response, 'code', 200)) == 416:
                _, total = _content_range(response)
                response.close()
                if total is not None and total == offset:
                    return None  # the partial file is complete: only the checks are left
                self._restart(f'the partial file ({format_bytes(offset)}) is larger than the file'
                              + (f' ({format_bytes(total)})' if total is not None else ''))
                continue
            status = getattr(response, 'status', 200)
            content_type = response.headers.get('Content-Type', '')
            try:
                head = response.read(HTML_SNIFF_BYTES) if status == 200 or not offset else b''
            except (OSError, http.client.HTTPException) as error:
                response.close()
                raise _Interrupted(f'{type(error).__name__}: {error}') from None
            if content_type.startswith('text/html') or looks_like_html(head):
                page = (head + response.read(MAX_HTML_BYTES)).decode('utf-8', errors='replace')
                response.close()
                next_url = confirmation_url(page, response.geturl())
                if next_url is None or next_url == self.current_url:
                    raise HTMLResponseError(
                        f'{self.url} returned an HTML page instead of the file (for Google Drive: the file may not '
                        f'be shared publicly, or its daily download quota is exhausted; try again later or download '
                        f'it in a browser)')
                self.current_url = next_url
                continue
            if offset and status == 206:
                first, _ = _content_range(response)
                if first != offset:
                    response.close()
                    self._restart(f'asked for the bytes from {offset} but the server sent '
                                  f'"{response.headers.get("Content-Range", "")}"')
                    continue
            elif offset:
                self.log(f'{self.label}: the server ignored the range request (HTTP {status}); starting over')
            return response, head, (offset if status == 206 else 0)
        raise HTMLResponseError(f'{self.url}: still an HTML page after {MAX_CONFIRMATION_HOPS} confirmation steps')

    def run(self) -> None:
        """Complete the partial file; raises :class:`_Interrupted` when the body stops early."""
        opened = self._open_body()
        if opened is None:
            return
        response, head, offset = opened
        with response:
            length = response.headers.get('Content-Length')
            total = offset + int(length) if length and length.isdigit() else None
            if total is not None:
                free = shutil.disk_usage(osp.dirname(self.partial)).free
                if total - offset > free:
                    raise _disk_full(self.partial, self.url, total)
            meter = ProgressMeter(self.label, total, offset, self.stream, self.progress_mode)
            interrupted = True
            try:
                with _open_partial(self.partial, 'ab' if offset else 'wb') as file:
                    chunk = head
                    while True:
                        if chunk:
                            file.write(chunk)
                            meter.update(len(chunk))
                        try:
                            chunk = response.read(READ_CHUNK_BYTES)
                        except (OSError, http.client.HTTPException) as error:  # reset, timeout, IncompleteRead
                            raise _Interrupted(f'{type(error).__name__}: {error}') from None
                        if not chunk:
                            break
                    file.flush()
                    os.fsync(file.fileno())
                interrupted = False
            except OSError as error:
                if error.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise _disk_full(self.partial, self.url, total) from None
                raise
            finally:
                meter.finish(interrupted)
        size = self._offset()
        if total is not None and size < total:
            raise _Interrupted(f'the connection closed at byte {size} of {total}')


def download_file(url: str,
                  dst: str,
                  sha256: Optional[str] = None,
                  hash_prefix: Optional[str] = None,
                  progress: bool = True,
                  resume: bool = True,
                  timeout: float = DEFAULT_TIMEOUT_S,
                  stream: Optional[IO[str]] = None,
                  retries: int = DEFAULT_RETRIES,
                  retry_wait_s: float = DEFAULT_RETRY_WAIT_S,
                  progress_mode: Optional[str] = None,
                  log: Optional[Callable[[str], None]] = None) -> str:
    """Download ``url`` to ``dst`` atomically, resuming and verifying it (see the module docstring).

    Args:
        url: http(s) URL (Google Drive confirmation pages are followed).
        dst: Destination path; its directory is created.
        sha256: Expected full sha256 (hex), or ``None``.
        hash_prefix: Expected leading hex digits of the sha256 (torch.hub file-name convention),
            used when ``sha256`` is ``None``.
        progress: Show progress on ``stream``.
        resume: Continue a left-over ``<dst>.partial``. Without it a unique temporary name is used (safe
            when several processes download the same file) and removed on failure.
        timeout: Socket timeout in seconds.
        stream: Where progress and notes go (default ``sys.stderr``).
        retries: How often a body that stops early is resumed within this call.
        retry_wait_s: First wait before resuming (doubled each time).
        progress_mode: ``'tty'``, ``'plain'`` or ``None`` (decided by ``stream.isatty()``).
        log: Receives notes (restarts, retries); default: a line on ``stream``.

    Returns:
        The sha256 hex digest of the downloaded file.

    Raises:
        NetworkError: The server cannot be reached.
        HTMLResponseError: An HTML page came back instead of the file.
        DiskFullError: No space left (the partial file is kept for resuming).
        ChecksumError: The content does not match; it was moved to ``error.rejected_path``.
        DownloadError: HTTP error (status and URL in the message) or a transfer interrupted more often than
            ``retries`` (the partial file is kept; call again to resume).
    """
    stream = stream or sys.stderr
    log = log or (lambda message: (stream.write(message + '\n'), stream.flush()))
    dst = osp.abspath(osp.expanduser(dst))
    os.makedirs(osp.dirname(dst), exist_ok=True)
    partial = dst + PARTIAL_SUFFIX if resume else f'{dst}.{os.getpid()}.{time.time_ns()}{PARTIAL_SUFFIX}'
    transfer = _Transfer(url, partial, osp.basename(dst), timeout, progress_mode if progress else 'off', stream, log)
    try:
        for attempt in range(retries + 1):
            try:
                transfer.run()
                break
            except _Interrupted as error:
                if attempt == retries:
                    raise DownloadError(f'the download of {url} was interrupted ({error}) {retries + 1} times; '
                                        f'{format_bytes(transfer._offset())} are kept in {partial}: run the same '
                                        f'command again to resume') from None
                wait = retry_wait_s * 2**attempt
                log(f'{osp.basename(dst)}: interrupted ({error}); resuming in {wait:.0f} s '
                    f'(retry {attempt + 1} of {retries})')
                time.sleep(wait)
        return _verify_and_commit(partial, dst, url, sha256, hash_prefix)
    except BaseException:
        if not resume and osp.exists(partial):
            os.remove(partial)
        raise


def _verify_and_commit(partial: str, dst: str, url: str, sha256: Optional[str], hash_prefix: Optional[str]) -> str:
    got = sha256_file(partial)
    expected = sha256.lower() if sha256 else None
    prefix = hash_prefix.lower() if hash_prefix and not sha256 else None
    if (expected and got != expected) or (prefix and not got.startswith(prefix)):
        rejected = move_aside(partial, dst, got)
        want = f'sha256 {expected}' if expected else f'a sha256 starting with {prefix} (from the file name)'
        raise ChecksumError(f'checksum mismatch for {url}: expected {want}, got {got}. The file was moved to '
                            f'{rejected} (not used; delete it once inspected)', rejected)
    os.replace(partial, dst)
    return got


def move_aside(path: str, dst: str, sha256: str) -> str:
    """Move a file that failed a check to ``<dst>.sha256-<digits>.rejected`` (next to ``dst``); return that path."""
    rejected = f'{dst}.sha256-{sha256[:REJECTED_HASH_DIGITS]}{REJECTED_SUFFIX}'
    os.replace(path, rejected)
    return rejected
