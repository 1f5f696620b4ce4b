"""Download model-zoo checkpoints, verify their sha256 and record them as trusted.

Usage::

    python tools/download_checkpoint.py --list
    python tools/download_checkpoint.py NAME [NAME ...] [--dest checkpoints/] [--index checkpoints/model_zoo.json]
                                        [--url-override URL] [--sha256 HEX] [--trust] [--force] [--quiet]
    python tools/download_checkpoint.py --trust-file PATH [PATH ...] [--sha256 HEX]

A download goes to ``DEST/<file_name>.partial`` (resumed if left over from an interrupted run),
is checked against the index's full sha256 or, where that is ``null``, the sha256 prefix in the
file name (``name-<prefix>.pth``), and is then renamed to ``DEST/<file_name>``. A verified file
is recorded in ``DEST/brs_detr_manifest.json`` (signed with a per-user key), which lets brs_detr
load it with full unpickling (``weights_only=False``) when torch's safe loader rejects it.

A file with no known checksum (the Google Drive releases) is downloaded but not trusted, unless
``--trust`` is given (trust on first download: do it only if you trust the source). Such files are
mmdet 2.x checkpoints anyway: convert them with ``tools/convert_checkpoint.py``.

``--trust-file PATH`` records an existing local file (its sha256 now) as trusted.

Exit status: 0 on success, 1 on a download, checksum or index error, 2 on bad arguments.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without install

from brs_detr.utils.download import DownloadError, download_file  # noqa: E402
from brs_detr.utils.model_zoo import (DEFAULT_INDEX, ModelZooError, entry_url, expected_checksum,  # noqa: E402
                                      get_entry, list_entries, load_index)
from brs_detr.utils.trust import (is_trusted, manifest_path, record_trusted_file, sha256_file,  # noqa: E402
                                  trust_reason)

DEFAULT_DEST = osp.join(osp.dirname(DEFAULT_INDEX))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Download model-zoo checkpoints with checksum verification and record them as trusted.')
    parser.add_argument('names', nargs='*', metavar='NAME', help='model-zoo entry name(s); see --list')
    parser.add_argument('--list', action='store_true', help='list the entries of the index and exit')
    parser.add_argument('--dest', default=DEFAULT_DEST, help='download directory (default: %(default)s)')
    parser.add_argument('--index', default=DEFAULT_INDEX, help='model-zoo index JSON (default: %(default)s)')
    parser.add_argument('--url-override', metavar='URL', help='download from URL instead of the entry\'s URL '
                        '(mirrors, local copies); the entry\'s checksum still applies')
    parser.add_argument('--sha256', metavar='HEX', help='expected full sha256 (overrides the index entry; with '
                        '--trust-file: the value the file must have)')
    parser.add_argument('--trust', action='store_true', help='also trust a download that has no checksum to be '
                        'verified against (trust on first download)')
    parser.add_argument('--force', action='store_true', help='download again even if the file exists')
    parser.add_argument('--quiet', action='store_true', help='no progress line')
    parser.add_argument('--trust-file', nargs='+', metavar='PATH', help='record existing local file(s) as trusted')
    args = parser.parse_args(argv)
    modes = sum([bool(args.list), bool(args.names), bool(args.trust_file)])
    if modes != 1:
        parser.error('give exactly one of: NAME..., --list, --trust-file PATH...')
    if args.url_override and len(args.names) > 1:
        parser.error('--url-override needs exactly one NAME')
    if args.sha256 and len(args.names) > 1:
        parser.error('--sha256 needs exactly one NAME')
    return args


def trust_local_files(paths, sha256=None) -> None:
    for path in paths:
        if not osp.isfile(path):
            raise FileNotFoundError(f'--trust-file: {path} does not exist or is not a file')
        digest = record_trusted_file(path, sha256=sha256, source='trusted explicitly (--trust-file)')
        manifest = manifest_path(osp.dirname(osp.abspath(path)))
        print(f'trusted {osp.abspath(path)}\nsha256: {digest}\nmanifest: {manifest}')


def download_entry(entry: dict, args: argparse.Namespace) -> None:
    url = args.url_override or entry_url(entry)
    expected = expected_checksum(entry, url)
    if args.sha256:
        expected['sha256'] = args.sha256.lower()
    path = osp.abspath(osp.join(args.dest, entry['file_name']))
    verifiable = bool(expected['sha256'] or expected['hash_prefix'])

    if osp.isfile(path) and not args.force:
        if is_trusted(path):
            print(f'{entry["name"]}: already downloaded and trusted ({trust_reason(path)})')
            print(f'sha256: {sha256_file(path)}\npath: {path}')
            return
        digest = sha256_file(path)
        if verifiable:
            ok = digest == expected['sha256'] if expected['sha256'] else digest.startswith(expected['hash_prefix'])
            if not ok:
                want = expected['sha256'] or expected['hash_prefix'] + '...'
                raise DownloadError(f'{path} exists but its sha256 is {digest}, expected {want}; '
                                    f'rerun with --force to download it again')
        print(f'{entry["name"]}: {path} already exists')
    else:
        print(f'{entry["name"]}: downloading {url}\n  to {path}', flush=True)
        digest = download_file(url, path, sha256=expected['sha256'], hash_prefix=expected['hash_prefix'],
                               progress=not args.quiet, resume=True)

    extra = dict(name=entry['name'], url=url, format=entry.get('format'))
    if verifiable:
        how = 'sha256' if expected['sha256'] else 'file-name hash prefix'
        record_trusted_file(path, sha256=digest, source=f'model zoo {entry["name"]}, verified by {how}',
                            verified_by=how, **extra)
        print(f'verified ({how}); recorded as trusted in {manifest_path(args.dest)}')
    elif args.trust:
        record_trusted_file(path, sha256=digest, source=f'model zoo {entry["name"]}, trusted on first download '
                            f'(--trust, no checksum known)', verified_by='none (--trust)', **extra)
        print(f'no checksum known; trusted on your request (--trust); recorded in {manifest_path(args.dest)}')
    else:
        print(f'WARNING: no checksum is known for {entry["name"]}, so the file is NOT trusted for full unpickling '
              f'(it loads only where torch.load(weights_only=True) accepts it). Add the sha256 below to the index, '
              f'or rerun with --trust if you trust the source.', file=sys.stderr)
    if entry.get('needs_conversion'):
        print(f'NOTE: {entry["name"]} is a {entry.get("format", "legacy")} checkpoint: convert it before use with '
              f'python tools/convert_checkpoint.py (see --help).')
    print(f'sha256: {digest}\npath: {path}')


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.trust_file:
            trust_local_files(args.trust_file, args.sha256)
            return 0
        index = load_index(args.index)
        if args.list:
            print('\n'.join(list_entries(index)))
            return 0
        entries = [get_entry(name, index) for name in args.names]  # unknown names fail before any download
        os.makedirs(args.dest, exist_ok=True)
        for entry in entries:
            download_entry(entry, args)
    except (ModelZooError, DownloadError, OSError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\ninterrupted; run the same command again to resume the download', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
