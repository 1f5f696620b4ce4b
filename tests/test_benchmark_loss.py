"""tools/benchmark_loss.py end to end, as a user runs it, on a tiny grid; its target verdict and memory probe
(brs_detr.benchmarks.loss*) directly."""
import itertools
import json
import os
import re
import statistics
import struct
import subprocess
import sys
import zlib

import pytest
from conftest import load_tool_module

from brs_detr.benchmarks.loss import CellResult, render_target, target_cells

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, 'tools', 'benchmark_loss.py')

LOSS_ROWS = ['focal (mmdet sigmoid)', 'RS (pairwise)', 'RS exact', 'BRS', 'AP (pairwise)', 'AP exact', 'BAP']
RATIO_ROWS = ['BRS / focal', 'RS (pairwise) / BRS', 'RS exact / BRS', 'BAP / focal', 'AP (pairwise) / BAP',
              'AP exact / BAP']
COLUMNS = ['2K · 0.5%', '2K · 2%']


def _run(args, timeout=120):
    return subprocess.run([sys.executable, TOOL] + args, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def _table_rows(markdown, title):
    """Header cells and rows ({first cell: other cells}) of the table right after the heading ``title``."""
    lines = markdown.split(title, 1)[1].strip().splitlines()
    table = list(itertools.takewhile(lambda line: line.startswith('|'), lines))
    assert len(table) > 2, f'no table after {title!r}'
    split = [[c.strip() for c in line.strip().strip('|').split('|')] for line in table]
    assert all(len(cells) == len(split[0]) for cells in split), 'ragged table'
    return split[0], {cells[0]: cells[1:] for cells in split[2:]}


def _check_png(path):
    with open(path, 'rb') as f:
        data = f.read()
    assert data[:8] == b'\x89PNG\r\n\x1a\n', 'not a PNG signature'
    # walk the chunks and verify every CRC up to IEND
    pos, chunks = 8, []
    while pos < len(data):
        length, kind = struct.unpack('>I4s', data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        (crc,) = struct.unpack('>I', data[pos + 8 + length:pos + 12 + length])
        assert zlib.crc32(kind + body) == crc, f'bad CRC in chunk {kind!r}'
        chunks.append(kind)
        pos += 12 + length
    assert chunks[0] == b'IHDR' and chunks[-1] == b'IEND' and b'IDAT' in chunks
    width, height = struct.unpack('>II', data[16:24])
    assert width > 100 and height > 100
    return len(data)


@pytest.mark.slow
def test_benchmark_tiny_grid(tmp_path):
    out_md, out_png, out_json = tmp_path / 'bench.md', tmp_path / 'plots' / 'bench.png', tmp_path / 'bench.json'
    proc = _run(['--sizes', '2000', '--ratios', '0.005', '0.02', '--repeats', '1', '--out-md', str(out_md),
                 '--out-png', str(out_png), '--out-json', str(out_json), '--target-sizes', '2000',
                 '--target-ratio', '1000'])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    markdown = out_md.read_text()
    # the target check: every (regime, m) cell at the target size, BRS / focal against the limit
    target = markdown.split('## Target: BRS at most 1000x the focal loss at L = 2K', 1)[1]
    table = [line for line in target.splitlines() if line.startswith('|')]
    assert table[0] == '| regime | L | m | focal (ms) | BRS (ms) | BRS / focal | fastest calls | met |'
    assert [line.split(' | ')[:3] for line in table[2:]] == [
        ['| early', '2K', '0.5%'], ['| early', '2K', '2%'], ['| trained', '2K', '0.5%'], ['| trained', '2K', '2%']]
    assert all(line.endswith('| yes |') for line in table[2:])
    assert '**Target met** in all 4 cells; largest ratio' in target
    for regime in ('early', 'trained'):
        section = markdown.split(f'## Regime `{regime}`', 1)[1].split('## Regime', 1)[0]
        header, rows = _table_rows(section, '### Forward + backward time (ms)')
        assert header == ['loss'] + COLUMNS
        assert list(rows) == LOSS_ROWS + RATIO_ROWS
        for name in LOSS_ROWS:  # every cell finished: a number of milliseconds
            for cell in rows[name]:
                assert re.fullmatch(r'\d+(\.\d+)?', cell), (regime, name, cell)
        for name in RATIO_ROWS:
            for cell in rows[name]:
                assert float(cell) > 0, (regime, name, cell)
        header, rows = _table_rows(section, '### Peak extra memory (MiB)')
        assert header == ['loss'] + COLUMNS
        assert list(rows) == LOSS_ROWS
        for name in LOSS_ROWS:
            for cell in rows[name]:
                assert re.fullmatch(r'\d+(\.\d+)?', cell), (regime, name, cell)

    # the printed table is the written one
    assert markdown.strip() in proc.stdout

    size = _check_png(out_png)
    assert size < 300_000

    raw = json.loads(out_json.read_text())
    assert len(raw['results']) == 2 * 2 * len(LOSS_ROWS)
    # --malloc keep (the default): the worker kept freed memory through glibc's mallopt, and says so
    assert raw['info']['malloc'].startswith('freed memory kept in the process (glibc M_TRIM_THRESHOLD 1024 MiB')
    assert f'memory allocator: {raw["info"]["malloc"]}.' in markdown
    assert [(row['regime'], row['ratio']) for row in raw['target']] == [
        ('early', 0.005), ('early', 0.02), ('trained', 0.005), ('trained', 0.02)]
    assert all(row['met'] and row['value'] == row['brs'] / row['focal'] for row in raw['target'])
    for cell in raw['results']:
        assert cell['status'] == 'ok'
        assert cell['num_pos'] == (10 if cell['ratio'] == 0.005 else 40)
        assert len(cell['times_ms']) == 1
        assert all(v == v for v in cell['loss_values'].values())  # not NaN
        # the ranking errors of random logits are strictly between 0 and 1
        if cell['loss'] != 'focal':
            assert 0 < cell['loss_values']['loss_rank'] < 1


@pytest.mark.slow
def test_benchmark_budget_kills_slow_cell_and_skips_larger(tmp_path):
    """A pairwise cell over its budget is reported as such instead of hanging; larger ones are skipped."""
    out_md, out_json = tmp_path / 'bench.md', tmp_path / 'bench.json'
    proc = _run(['--regimes', 'early', '--sizes', '2000', '200000', '300000', '--ratios', '0.05',
                 '--losses', 'ap', '--repeats', '1', '--pairwise-max-seconds', '0.5',
                 '--out-md', str(out_md), '--out-json', str(out_json)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    header, rows = _table_rows(out_md.read_text(), '### Forward + backward time (ms)')
    assert header == ['loss', '2K · 5%', '200K · 5%', '300K · 5%']
    assert re.fullmatch(r'\d+(\.\d+)?', rows['AP (pairwise)'][0])
    assert rows['AP (pairwise)'][1:] == ['> 0.5 s', '> 0.5 s (skipped)']
    status = [cell['status'] for cell in json.loads(out_json.read_text())['results']]
    assert status == ['ok', 'over_budget', 'skipped']


def _cell(loss, regime, ratio, cpu_ms, status='ok'):
    median = statistics.median(cpu_ms) if cpu_ms else None
    return CellResult(regime, 1_000_000, ratio, loss, 10, status=status, median_cpu_ms=median, median_ms=1.0,
                      cpu_ms=cpu_ms, times_ms=[1.0] * len(cpu_ms))


def test_benchmark_target_verdict():
    """The target rows and the verdict from the reported (median) times; cells that did not finish fail it."""
    tool = load_tool_module('benchmark_loss')  # the tool's own defaults (--target-ratio 3, ...)
    args = tool.parse_args(['--sizes', '1000000', '--ratios', '0.01', '0.05', '--losses', 'focal', 'brs',
                            '--metric', 'cpu', '--regimes', 'early'])
    results = [_cell('focal', 'early', 0.01, [20.0, 21.0, 30.0]),
               _cell('brs', 'early', 0.01, [40.0, 50.0, 61.0]),  # median 50 / 21 = 2.38
               _cell('focal', 'early', 0.05, [20.0, 20.0, 20.0]),
               _cell('brs', 'early', 0.05, [59.0, 61.0, 70.0])]  # 3.05
    rows = target_cells(results, args)
    assert [round(row['value'], 2) for row in rows] == [2.38, 3.05]
    assert [round(row['fastest'], 2) for row in rows] == [2.0, 2.95]
    assert [row['met'] for row in rows] == [True, False]
    text = '\n'.join(render_target(results, args))
    assert '**Target not met** in 1 of 2 cells; largest ratio 3.05 (early, m = 5%).' in text
    assert '| early | 1M | 5% | 20.0 | 61.0 | 3.05 | 2.95 | **no** |' in text
    args.target_ratio = 3.1
    assert '**Target met** in all 2 cells' in '\n'.join(render_target(results, args))
    results[3] = _cell('brs', 'early', 0.05, [], status='over_budget')
    rows = target_cells(results, args)
    assert rows[1]['value'] is None and not rows[1]['met']
    args.target_sizes = [10_000]  # no cell at the target size: no section
    assert render_target(results, args) == []


def test_benchmark_rejects_bad_arguments(tmp_path):
    proc = _run(['--ratios', '5', '--out-md', str(tmp_path / 'x.md')])
    assert proc.returncode == 2
    assert 'fraction in (0, 1)' in proc.stderr
    proc = _run(['--device', 'tpu'])
    assert proc.returncode == 2 and '--device' in proc.stderr
    assert not (tmp_path / 'x.md').exists()


@pytest.mark.skipif(not os.access('/proc/self/clear_refs', os.W_OK), reason='needs Linux /proc/self/clear_refs')
def test_cpu_memory_probe_measures_a_known_allocation():
    """The CPU probe sees torch allocations (tracemalloc does not), also after a larger earlier peak."""
    import torch

    from brs_detr.benchmarks.memory import MIB, PeakMemoryMeter
    meter = PeakMemoryMeter(torch.device('cpu'))
    assert meter.resettable
    earlier = torch.ones(96 * 2 ** 18)  # 96 MiB peak before the measured call
    del earlier
    mib = 32
    meter.reset()
    block = torch.ones(mib * 2 ** 18)  # float32: 4 bytes each
    del block
    peak, baseline = meter.read()
    assert abs((peak - baseline) / MIB - mib) < 4
