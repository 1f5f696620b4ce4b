"""The package layout of brs_detr (docs/architecture.md): no import circles, imports run downward only.

Every module of ``brs_detr`` is parsed (not imported) and every import of a ``brs_detr`` module in it is collected:
absolute and relative, at module level and inside functions. The checks fail on

* a circle between modules (``a`` imports ``b`` ... imports ``a``), naming the modules of the circle;
* an import of a package from a package of the same or a higher layer of :data:`LAYERS` (e.g. ``fileio`` importing
  ``zoo``, ``models`` importing ``engine``);
* a ``brs_detr.x.y`` name shown in README.md or docs/ that does not exist (after a module moved).
"""
from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set

import pytest

PACKAGE = 'brs_detr'
PACKAGE_DIR = Path(__file__).resolve().parents[1] / PACKAGE

#: Layers from the bottom up (docs/architecture.md). A package may import only packages of lower layers; modules
#: directly in ``brs_detr/`` count as packages of their own name (``__init__`` is the package itself).
LAYERS = (
    ('version', 'lazy_import', 'known_warnings'),
    ('fileio', ),
    ('models', 'datasets'),
    ('engine', ),
    ('zoo', 'benchmarks', 'analysis'),
    ('apis', ),
    ('deployment', ),
    ('registration', ),
    ('__init__', ),
)
LAYER_OF = {package: level for level, packages in enumerate(LAYERS) for package in packages}

Graph = Dict[str, Set[str]]


def module_name(path: Path, root: Path) -> str:
    """``brs_detr/zoo/index.py`` -> ``brs_detr.zoo.index``; ``brs_detr/zoo/__init__.py`` -> ``brs_detr.zoo``."""
    parts = list(path.relative_to(root.parent).with_suffix('').parts)
    if parts[-1] == '__init__':
        parts.pop()
    return '.'.join(parts)


def _resolve_relative(module: str, is_package: bool, level: int, target: Optional[str]) -> str:
    base = module.split('.') if is_package else module.split('.')[:-1]
    if level > 1:
        base = base[:-(level - 1)]
    return '.'.join(base + ([target] if target else []))


def imported_modules(source: str, module: str, is_package: bool, known: Set[str]) -> Iterator[str]:
    """The modules of ``known`` that ``source`` (the code of ``module``) imports, anywhere in the file."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                name = alias.name
                while name and name not in known:  # ``import brs_detr.zoo.index as x``: the module itself
                    name = name.rpartition('.')[0]
                if name:
                    yield name
        elif isinstance(node, ast.ImportFrom):
            base = node.module if node.level == 0 else _resolve_relative(module, is_package, node.level, node.module)
            if base is None or not (base == PACKAGE or base.startswith(PACKAGE + '.')):
                continue
            for alias in node.names:  # ``from brs_detr.fileio import trust`` imports the module ``trust``
                submodule = f'{base}.{alias.name}'
                if submodule in known:
                    yield submodule
                elif base in known:
                    yield base


def import_graph(root: Path = PACKAGE_DIR) -> Graph:
    """Module -> the brs_detr modules it imports (a package's ``__init__`` is the package's name)."""
    files = {module_name(path, root): path for path in sorted(root.rglob('*.py'))}
    known = set(files)
    graph: Graph = {}
    for module, path in files.items():
        is_package = path.name == '__init__.py'
        graph[module] = set(imported_modules(path.read_text(encoding='utf-8'), module, is_package, known)) - {module}
    return graph


def find_cycles(graph: Graph) -> List[List[str]]:
    """One circle per strongly connected component of more than one module, as ``[a, b, ..., a]``."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    components: List[List[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm (recursion depth = module count, a few hundred at most)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(graph.get(node, ())):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle_in(graph, set(component)) for component in components]


def _circle_in(graph: Graph, component: Set[str]) -> List[str]:
    """A concrete circle through the first module (alphabetically) of a strongly connected component."""
    start = min(component)
    parents: Dict[str, str] = {}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to ``start``
        following = []
        for node in frontier:
            for succ in sorted(graph[node] & component):
                if succ == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [start] + path[::-1][1:] + [start]
                if succ not in parents:
                    parents[succ] = node
                    following.append(succ)
        frontier = following
    raise AssertionError(f'no circle in component {sorted(component)}')


def package_of(module: str) -> str:
    """``brs_detr.zoo.index`` -> ``zoo``; ``brs_detr.version`` -> ``version``; ``brs_detr`` -> ``__init__``."""
    parts = module.split('.')
    return parts[1] if len(parts) > 1 else '__init__'


def layering_violations(graph: Graph) -> List[str]:
    """``importer -> imported`` for every import of a package of the same or a higher layer."""
    violations = []
    for module, imports in sorted(graph.items()):
        own = package_of(module)
        for imported in sorted(imports):
            theirs = package_of(imported)
            if theirs != own and LAYER_OF[theirs] >= LAYER_OF[own]:
                violations.append(f'{module} ({own}, layer {LAYER_OF[own]}) imports {imported} '
                                  f'({theirs}, layer {LAYER_OF[theirs]})')
    return violations


# ----------------------------------------------------------------------------- the checks on brs_detr
def test_every_package_has_a_layer():
    packages = {package_of(module) for module in import_graph()}
    assert packages - set(LAYER_OF) == set(), 'add the new package to LAYERS here and to docs/architecture.md'


def test_no_import_circles():
    cycles = find_cycles(import_graph())
    assert not cycles, 'import circles in brs_detr:\n' + '\n'.join(' -> '.join(cycle) for cycle in cycles)


def test_imports_run_downward():
    violations = layering_violations(import_graph())
    assert not violations, 'imports against the layering of docs/architecture.md:\n' + '\n'.join(violations)


def test_the_graph_sees_relative_absolute_and_function_level_imports():
    graph = import_graph()
    assert 'brs_detr.fileio.atomic_io' in graph['brs_detr.fileio.trust']  # relative, module level
    assert 'brs_detr.fileio.trust' in graph['brs_detr.zoo.known_hashes']  # absolute
    assert 'brs_detr.zoo.convert' in graph['brs_detr.zoo.install']  # inside a function


# ----------------------------------------------------------------------------- the checker itself
def _write_package(root: Path, files: Dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root / PACKAGE


def test_a_circle_is_found_and_named(tmp_path):
    package = _write_package(tmp_path, {
        '__init__.py': '',
        'fileio/__init__.py': '',
        'fileio/atomic_io.py': 'def write():\n    from .trust import record\n',
        'fileio/trust.py': 'from brs_detr.fileio.atomic_io import write\n',
        'fileio/file_lock.py': 'import os\n',
    })
    cycles = find_cycles(import_graph(package))
    assert cycles == [['brs_detr.fileio.atomic_io', 'brs_detr.fileio.trust', 'brs_detr.fileio.atomic_io']]


def test_a_longer_circle_through_from_imports_of_modules_is_found(tmp_path):
    package = _write_package(tmp_path, {
        '__init__.py': '',
        'zoo/__init__.py': '',
        'zoo/a.py': 'from . import b\n',
        'zoo/b.py': 'from brs_detr.zoo import c\n',
        'zoo/c.py': 'import brs_detr.zoo.a as a\n',
    })
    assert find_cycles(import_graph(package)) == [['brs_detr.zoo.a', 'brs_detr.zoo.b', 'brs_detr.zoo.c',
                                                   'brs_detr.zoo.a']]


def test_an_upward_import_is_a_violation(tmp_path):
    package = _write_package(tmp_path, {
        '__init__.py': '',
        'fileio/__init__.py': '',
        'fileio/checkpoint.py': 'from ..zoo.index import find_by_url\n',
        'zoo/__init__.py': '',
        'zoo/index.py': 'from brs_detr.fileio import checkpoint\n',
    })
    graph = import_graph(package)
    assert find_cycles(graph) == [['brs_detr.fileio.checkpoint', 'brs_detr.zoo.index', 'brs_detr.fileio.checkpoint']]
    assert layering_violations(graph) == [
        'brs_detr.fileio.checkpoint (fileio, layer 1) imports brs_detr.zoo.index (zoo, layer 4)']


@pytest.mark.parametrize('importer, imported', [('models', 'engine'), ('zoo', 'apis'), ('models', 'datasets')])
def test_same_or_higher_layer_imports_are_violations(tmp_path, importer, imported):
    package = _write_package(tmp_path, {
        '__init__.py': '',
        f'{importer}/__init__.py': f'from brs_detr.{imported} import thing\n',
        f'{imported}/__init__.py': 'thing = 1\n',
    })
    assert len(layering_violations(import_graph(package))) == 1


# ----------------------------------------------------------------------------- names the documentation shows
DOC_FILES = ('README.md', 'checkpoints/README.md', 'docs/*.md')
DOTTED_NAME = re.compile(r'\bbrs_detr(?:\.[A-Za-z_]\w*)+')


def documented_names() -> List[str]:
    """Every ``brs_detr.x.y`` the documentation mentions (file names such as ``brs_detr.md`` left out)."""
    root = PACKAGE_DIR.parent
    names = set()
    for pattern in DOC_FILES:
        for path in sorted(root.glob(pattern)):
            names.update(name for name in DOTTED_NAME.findall(path.read_text(encoding='utf-8'))
                          if name.rsplit('.', 1)[-1] not in ('md', 'py', 'json'))
    return sorted(names)


def test_the_names_in_the_docs_exist():
    assert 'brs_detr.zoo.convert.convert_state_dict_for_config' in documented_names()
    missing = []
    for name in documented_names():
        parts = name.split('.')
        for split in range(len(parts), 0, -1):  # the longest importable module, then attributes
            try:
                target = importlib.import_module('.'.join(parts[:split]))
            except ModuleNotFoundError:
                continue
            if not str(getattr(target, '__file__', '')).startswith(str(PACKAGE_DIR)):
                missing.append(name)  # found elsewhere (another checkout's editable install)
                break
            try:
                for attribute in parts[split:]:
                    target = getattr(target, attribute)
            except AttributeError:
                missing.append(name)
            break
        else:
            missing.append(name)
    assert not missing, f'names in README.md / docs that do not exist: {missing}'
