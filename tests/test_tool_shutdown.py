"""The tools take the gloo process group down before the interpreter finalizes (``launch.run_tool_main``).

Left to interpreter shutdown, a gloo worker thread that drops the last reference to a finished collective's tensors
cannot take the GIL and the process aborts ("terminate called without an active exception", exit code -6) after a
successful run. That race is timing dependent; what the fix guarantees is deterministic and checked here in a
subprocess: by the time ``atexit`` handlers run, gloo's worker threads and the TCP store's server thread have been
joined, even though the DDP wrapper that holds the group sits in a reference cycle, and the exit status is kept.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest


pytestmark = pytest.mark.skipif(not Path('/proc/self/task').is_dir(), reason='counts threads through /proc')

SCRIPT = textwrap.dedent('''
    import atexit, os, sys
    import torch
    import torch.distributed as dist
    from brs_detr.apis.cli import run_tool_main

    from mmengine.model import MMDistributedDataParallel

    def count_threads():  # native threads of c10d: gloo's event loop and work queue, the TCP store's server
        names = [open(os.path.join('/proc/self/task', tid, 'comm')).read() for tid in os.listdir('/proc/self/task')]
        return sum(('gloo' in name) or ('tcpstore' in name) for name in names)

    atexit.register(lambda: print('threads at exit:', count_threads(), flush=True))

    class Holder:  # a reference cycle around the DDP wrapper, like Runner <-> its loops and hooks
        pass

    def main():
        dist.init_process_group('gloo', init_method='tcp://127.0.0.1:{port}', rank=0, world_size=1)
        holder = Holder()
        holder.self = holder
        holder.model = MMDistributedDataParallel(module=torch.nn.Linear(4, 2), device_ids=None)
        holder.model(torch.ones(3, 4)).sum().backward()
        dist.broadcast(torch.arange(8.0), src=0)
        print('threads while running:', count_threads(), flush=True)
        {ending}

    run_tool_main(main)
''')


def run_script(tmp_path: Path, port: int, ending: str) -> subprocess.CompletedProcess:
    script = tmp_path / 'tool.py'
    script.write_text(SCRIPT.format(port=port, ending=ending))
    return subprocess.run([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                          timeout=120)


def thread_counts(output: str) -> tuple:
    lines = dict(line.split(':') for line in output.splitlines() if line.startswith('threads '))
    return int(lines['threads while running']), int(lines['threads at exit'])


@pytest.mark.parametrize('ending, expected_rc', [('return', 0), ('sys.exit(3)', 3),
                                                 ('raise RuntimeError("boom")', 1)])
def test_gloo_threads_joined_before_exit(tmp_path, free_port, ending, expected_rc):
    done = run_script(tmp_path, free_port(), ending)
    assert done.returncode == expected_rc, done.stdout
    running, at_exit = thread_counts(done.stdout)
    assert running > 0, f'gloo started no worker threads?\n{done.stdout}'
    assert at_exit == 0, f'{at_exit} c10d threads still alive when the interpreter finalizes:\n{done.stdout}'
    if expected_rc == 1:
        assert 'RuntimeError: boom' in done.stdout  # the traceback is still printed
