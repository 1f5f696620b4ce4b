"""Install model-zoo checkpoints: download, verify (sha256), convert to this project's layout, check.

Usage::

    python tools/download_checkpoint.py --list [--markdown] [--dest checkpoints/]
    python tools/download_checkpoint.py NAME [NAME ...] [--dest checkpoints/] [--index checkpoints/model_zoo.json]
                                        [--url URL] [--sha256 HEX] [--force] [--no-convert] [--quiet]
                                        [--retries N] [--retry-wait S] [--timeout S]
    python tools/download_checkpoint.py --update-readme [README ...]   (default: README.md and checkpoints/README.md)
    python tools/download_checkpoint.py --trust-file PATH [PATH ...] [--sha256 HEX]

For a detector ``NAME`` this leaves ``DEST/NAME.pth``, ready for ``python tools/test.py CONFIG DEST/NAME.pth``
(the published file stays in ``DEST/original/``). Pretrained weights (ImageNet backbones, the COCO model the
Cityscapes configs start from) go to torch.hub's cache, where the configs' URLs find them. Each file is checked
against the sha256 in the index or, where none is published, the sha256 recorded on its first download. See
docs/checkpoints.md.

Exit status: 0 on success, 1 on a download, checksum, conversion or index error, 2 on bad arguments (and a --dest
that cannot be written, checked before any download), 130 when interrupted (run the same command again to resume).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # run from a checkout without install

from brs_detr.apis.cli import add_debug_argument, is_environment_error, run_tool_main, tool_name  # noqa: E402
from brs_detr.fileio.atomic_io import atomic_write_text  # noqa: E402
from brs_detr.fileio.output_paths import OutputPathError, check_output_dir  # noqa: E402
from brs_detr.fileio.trust import manifest_path, record_trusted_file  # noqa: E402
from brs_detr.zoo import known_hashes  # noqa: E402
from brs_detr.zoo.download import DownloadError  # noqa: E402
from brs_detr.zoo.index import (DEFAULT_INDEX, ModelZooError, format_table, get_entry, load_index,  # noqa: E402
                                markdown_table, readme_link_prefix, replace_readme_table, table_rows)
from brs_detr.zoo.install import InstallOptions, ZooInstallError, install_entry  # noqa: E402

DEFAULT_DEST = osp.join(osp.dirname(DEFAULT_INDEX))
REPO_ROOT = osp.dirname(DEFAULT_DEST)
#: The READMEs that show the generated zoo table between their markers.
DEFAULT_READMES = [osp.join(REPO_ROOT, 'README.md'), osp.join(DEFAULT_DEST, 'README.md')]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description='Install model-zoo checkpoints: download, verify, convert to this project\'s layout.',
        epilog='See docs/checkpoints.md.')
    parser.add_argument('names', nargs='*', metavar='NAME', help='model-zoo entry name(s); see --list')
    parser.add_argument('--list', action='store_true', help='print the zoo as a table and exit')
    parser.add_argument('--markdown', action='store_true', help='with --list: a Markdown table (checkpoints/README.md)')
    parser.add_argument('--update-readme', nargs='*', metavar='README',
                        help='rewrite the generated zoo table in each README (default: README.md and '
                        'checkpoints/README.md)')
    parser.add_argument('--dest', default=DEFAULT_DEST, help='directory of detector checkpoints (default: %(default)s)')
    parser.add_argument('--index', default=DEFAULT_INDEX, help='model-zoo index JSON (default: %(default)s)')
    parser.add_argument('--url', '--url-override', dest='url', metavar='URL',
                        help='download from URL instead (a mirror, a local copy); the checksums still apply')
    parser.add_argument('--sha256', metavar='HEX', help='expected sha256 of the published file (with --trust-file: '
                        'the value the file must have)')
    parser.add_argument('--force', action='store_true', help='download and convert again; replaces the recorded '
                        'first-use sha256 with the new file\'s')
    parser.add_argument('--no-convert', action='store_true', help='download and verify only')
    parser.add_argument('--quiet', action='store_true', help='no progress display')
    parser.add_argument('--retries', type=int, default=3, help='automatic resumes of an interrupted download')
    parser.add_argument('--retry-wait', type=float, default=2.0, help='seconds before the first automatic resume '
                        '(doubled for each further one)')
    parser.add_argument('--timeout', type=float, default=60.0, help='network timeout in seconds')
    parser.add_argument('--trust-file', nargs='+', metavar='PATH', help='record existing local file(s) as trusted '
                        'for full unpickling (you vouch for them)')
    add_debug_argument(parser)
    args = parser.parse_args(argv)
    modes = sum([bool(args.list), bool(args.names), bool(args.trust_file), args.update_readme is not None])
    if modes != 1:
        parser.error('give exactly one of: NAME..., --list, --update-readme, --trust-file PATH...')
    if args.markdown and not args.list:
        parser.error('--markdown goes with --list')
    if (args.url or args.sha256) and len(args.names) > 1:
        parser.error('--url and --sha256 need exactly one NAME')
    if args.retries < 0:
        parser.error('--retries must be >= 0')
    return args


def trust_local_files(paths, sha256=None) -> None:
    for path in paths:
        if not osp.isfile(path):
            raise FileNotFoundError(f'--trust-file: {path} does not exist or is not a file')
        digest = record_trusted_file(path, sha256=sha256, source='trusted explicitly (--trust-file)')
        manifest = manifest_path(osp.dirname(osp.abspath(path)))
        print(f'trusted {osp.abspath(path)}\nsha256: {digest}\nmanifest: {manifest}')


def list_zoo(index: dict, dest: str, markdown: bool) -> str:
    if markdown:
        return markdown_table(index)
    sizes = {name: record.get('size') for name, record in known_hashes.read_records().items()}
    return format_table(table_rows(index, dest, sizes))


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.trust_file:
            trust_local_files(args.trust_file, args.sha256)
            return 0
        index = load_index(args.index)
        if args.list:
            print(list_zoo(index, args.dest, args.markdown))
            return 0
        if args.update_readme is not None:
            for readme in args.update_readme or DEFAULT_READMES:
                with open(readme, encoding='utf-8') as file:
                    text = file.read()
                table = markdown_table(index, readme_link_prefix(readme, REPO_ROOT))
                atomic_write_text(replace_readme_table(text, table), readme)
                print(f'updated the model-zoo table in {readme}')
            return 0
        entries = [get_entry(name, index) for name in args.names]  # unknown names fail before any download
        check_output_dir(args.dest, '--dest')  # before any download (exit status 2)
        options = InstallOptions(dest=args.dest, url=args.url, sha256=args.sha256, force=args.force,
                                 convert=not args.no_convert, progress=not args.quiet, retries=args.retries,
                                 retry_wait_s=args.retry_wait, timeout=args.timeout)
        for entry in entries:
            install_entry(entry, options)
    except (ModelZooError, DownloadError, ZooInstallError, OSError, ValueError) as error:
        if is_environment_error(error) or isinstance(error, OutputPathError):
            raise  # an unwritable or full --dest: run_tool_main names the path (exit status 2)
        print(f'{tool_name()}: error: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print('\ninterrupted; run the same command again to resume the download', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    run_tool_main(main)
