"""Start time of the tools: ``python TOOL --help`` (and the other cheap commands) timed in fresh processes.

Used by ``tools/benchmark_tool_start.py``; the numbers are in docs/tools.md. Every command runs ``runs`` times in a
new interpreter (wall clock from start to exit, median reported), then once more with ``python -X importtime`` to
list the heavy packages (:data:`HEAVY_PACKAGES`) it imported: a tool should answer ``--help``, bad arguments and
``download_checkpoint.py --list`` without them (they cost seconds; docs/architecture.md).
"""
import os
import os.path as osp
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Set, Tuple

#: Packages whose import costs seconds (torch alone about 1.5 s, mmdet's models about 4 s on a 2-core CPU).
HEAVY_PACKAGES = ('torch', 'mmcv', 'mmdet')
#: Folders of the tools, relative to the repository root.
TOOL_FOLDERS = ('tools', 'tools/analysis_tools', 'tools/dataset_converters', 'tools/deployment', 'demo')
#: Commands besides ``--help`` that must start fast.
EXTRA_COMMANDS = (('tools/download_checkpoint.py', '--list'), )
#: Prefix of the lines ``python -X importtime`` writes to stderr.
IMPORTTIME_PREFIX = 'import time:'


@dataclass
class StartTime:
    """The measurements of one command.

    Attributes:
        command: The tool (repository-relative) and its arguments.
        seconds: Wall-clock time of each run.
        heavy: Heavy packages (:data:`HEAVY_PACKAGES`) the command imported.
        returncode: Exit status of the last run.
        stderr: What the command wrote to stderr (``-X importtime`` lines removed).
    """
    command: List[str]
    seconds: List[float] = field(default_factory=list)
    heavy: List[str] = field(default_factory=list)
    returncode: int = 0
    stderr: str = ''

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def tool_commands(repo_root: str) -> List[List[str]]:
    """``[tool, '--help']`` for every Python tool of :data:`TOOL_FOLDERS`, then :data:`EXTRA_COMMANDS`."""
    commands = []
    for folder in TOOL_FOLDERS:
        directory = osp.join(repo_root, folder)
        for name in sorted(os.listdir(directory)):
            if name.endswith('.py') and not name.startswith('_'):
                commands.append([f'{folder}/{name}', '--help'])
    return commands + [list(command) for command in EXTRA_COMMANDS]


def split_importtime(stderr: str) -> Tuple[Set[str], str]:
    """The modules a ``python -X importtime`` run imported, and its stderr without those lines."""
    modules, other = set(), []
    for line in stderr.splitlines():
        if line.startswith(IMPORTTIME_PREFIX):
            name = line.rsplit('|', 1)[-1].strip()
            if name != 'imported package':
                modules.add(name)
        else:
            other.append(line)
    return modules, '\n'.join(other)


def heavy_imports(modules: Set[str]) -> List[str]:
    """The :data:`HEAVY_PACKAGES` among ``modules`` (their submodules included)."""
    return [package for package in HEAVY_PACKAGES
            if any(module == package or module.startswith(package + '.') for module in modules)]


def _run(command: Sequence[str], repo_root: str, env: Dict[str, str], importtime: bool,
         timeout: float) -> subprocess.CompletedProcess:
    flags = ['-X', 'importtime'] if importtime else []
    return subprocess.run([sys.executable, *flags, *command], cwd=repo_root, env=env, capture_output=True,
                          text=True, timeout=timeout)


def measure(command: Sequence[str], repo_root: str, runs: int = 5, timeout: float = 120.0,
            env: Optional[Dict[str, str]] = None) -> StartTime:
    """Time ``runs`` fresh runs of ``python COMMAND`` in ``repo_root``, then list the heavy packages it imports."""
    env = dict(os.environ if env is None else env)
    result = StartTime(list(command))
    for _ in range(runs):
        start = time.perf_counter()
        _run(command, repo_root, env, importtime=False, timeout=timeout)
        result.seconds.append(time.perf_counter() - start)
    proc = _run(command, repo_root, env, importtime=True, timeout=timeout)
    modules, result.stderr = split_importtime(proc.stderr)
    result.heavy, result.returncode = heavy_imports(modules), proc.returncode
    return result


def format_table(results: Sequence[StartTime], limit_s: float) -> str:
    """A Markdown table: command, median / min / max seconds, under the limit, heavy packages imported."""
    lines = [f'| command | median s | min s | max s | < {limit_s:g} s | imports {"/".join(HEAVY_PACKAGES)} |',
             '| :--- | ---: | ---: | ---: | :---: | :--- |']
    for result in results:
        lines.append(f'| `python {" ".join(result.command)}` | {result.median:.2f} | {min(result.seconds):.2f} | '
                     f'{max(result.seconds):.2f} | {"yes" if result.median < limit_s else "**no**"} | '
                     f'{", ".join(result.heavy) or "-"} |')
    return '\n'.join(lines)
