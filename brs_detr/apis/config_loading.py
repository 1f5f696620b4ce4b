"""Reading a config for the tools: every mistake in it is one line naming the file, the line or the key.

mmengine's ``Config.fromfile`` reports a syntax error without the file name (``File "<unknown>", line 2``), a
missing ``_base_`` or ``custom_imports`` module as a long traceback, and ``merge_from_dict`` takes any
``--cfg-options`` value (``train_cfg.max_epochs=two`` fails at the Runner's start, ``max_epoch=2`` is added silently).
A ``type`` nobody registered fails only when the Runner builds it. Here:

* :func:`read_config` (light: no torch, mmcv or mmdet) reads the config, imports its ``custom_imports`` and applies
  the ``--cfg-options`` (:func:`check_cfg_options`): keys must exist (or be written ``+key``), values must have the
  type of the value they replace. It runs before the tools' heavy imports.
* :func:`check_config_components` (after mmdet is imported, before anything is built): every ``type`` in the config
  must be registered, and a ``--cfg-options`` key that is new under a component (``default_hooks.checkpoint.
  by_epoch=False`` where the config's ``checkpoint`` dict has no ``by_epoch``) must be an argument of that component.

Every problem raises :class:`~brs_detr.apis.cli.ToolInputError` (one line ``<tool>: error: ...``, exit status 2).
"""
from __future__ import annotations

import ast
import difflib
import importlib
import inspect
import logging
import os
import os.path as osp
import traceback
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

from mmengine.config import Config

from .cli import ToolInputError, check_config_file, is_main_launch_process

#: Prefix of a ``--cfg-options`` key that is added to the config on purpose (and set whatever its type).
NEW_KEY_PREFIX = '+'
#: The arguments of mmengine's ``Runner.__init__`` (``tests/test_config_loading.py`` checks this list against it):
#: top-level fields configs often leave out, which ``--cfg-options`` may add (``randomness.seed=0``).
RUNNER_ARGUMENTS = frozenset({
    'auto_scale_lr', 'cfg', 'custom_hooks', 'data_preprocessor', 'default_hooks', 'default_scope', 'env_cfg',
    'experiment_name', 'launcher', 'load_from', 'log_level', 'log_processor', 'model', 'optim_wrapper',
    'param_scheduler', 'randomness', 'resume', 'test_cfg', 'test_dataloader', 'test_evaluator', 'train_cfg',
    'train_dataloader', 'val_cfg', 'val_dataloader', 'val_evaluator', 'visualizer', 'work_dir'})
#: Top-level fields the Runner (or brs-detr) reads although configs often leave them out.
RUNNER_FIELDS = RUNNER_ARGUMENTS | {'runner_type', 'model_wrapper_cfg', 'find_unused_parameters', 'compile',
                                    'data_check'}
#: File types mmengine reads as configs.
CONFIG_SUFFIXES = ('.py', '.json', '.yaml', '.yml')
#: Where a ``--cfg-options`` key new under a component waits for :func:`check_config_components` (an attribute of
#: the Config object, not a config key).
_DEFERRED_ATTRIBUTE = '_brs_detr_deferred_options'


# ----------------------------------------------------------------------------- reading the file
def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text


def _syntax_problem(path: str) -> Optional[str]:
    """``path, line N: ...`` for the first syntax error in ``path`` or in the ``_base_`` files it names (depth
    first, as mmengine reads them), a missing ``_base_`` file, or ``_base_`` files that include each other (mmengine
    recurses until Python's RecursionError); ``None`` when there is none."""
    seen = set()
    chain: List[str] = []  # the files being read, outermost first

    def visit(path: str, named_by: Optional[str]) -> Optional[str]:
        if path in chain:
            cycle = chain[chain.index(path):] + [path]
            return f'its _base_ files include each other: {" -> ".join(cycle)}'
        if path in seen:
            return None
        seen.add(path)
        chain.append(path)
        try:
            return _visit_file(path, named_by)
        finally:
            chain.pop()

    def _visit_file(path: str, named_by: Optional[str]) -> Optional[str]:
        if not osp.isfile(path):
            folder = osp.dirname(path) or '.'
            similar = difflib.get_close_matches(osp.basename(path), sorted(os.listdir(folder)), n=3, cutoff=0.5) \
                if osp.isdir(folder) else []
            return (f'{named_by}: its _base_ file {path} does not exist' +
                    (f'; similar files in {folder}: {", ".join(similar)}' if similar else
                     '' if osp.isdir(folder) else f' (the folder {folder} does not exist either)'))
        if not path.endswith('.py'):
            return None
        try:
            with open(path, encoding='utf-8') as file:
                text = file.read()
        except UnicodeDecodeError as error:
            return f'{path} is not UTF-8 text (byte {error.start})'
        try:
            ast.parse(text, filename=path)
        except SyntaxError as error:
            code = f': {error.text.strip()}' if error.text and error.text.strip() else ''
            return f'{path}, line {error.lineno}: syntax error: {error.msg}{code}'
        try:
            bases = Config._get_base_files(path)
        except Exception:  # noqa: B902  (mmengine's own error is reported instead)
            return None
        for base in bases:
            try:
                base_path, _ = Config._get_cfg_path(base, path)
            except Exception as error:  # noqa: B902  (an unknown package scope such as 'mmfoo::x.py')
                return f'{path}: its _base_ {base!r} cannot be found: {_first_line(str(error))}'
            problem = visit(osp.normpath(base_path), path)
            if problem is not None:
                return problem
        return None

    return visit(osp.abspath(path), None)


def _config_frame(error: BaseException) -> Optional[traceback.FrameSummary]:
    """The innermost frame of ``error``'s traceback that runs config code (not mmengine's or Python's)."""
    frames = [frame for frame in traceback.extract_tb(error.__traceback__)
              if frame.filename.endswith(CONFIG_SUFFIXES) and 'site-packages' not in frame.filename
              and not frame.filename.startswith('<')]
    return frames[-1] if frames else None


def describe_config_error(config_path: str, error: BaseException) -> str:
    """One line saying which file (and line) of the config could not be read, and why."""
    problem = _syntax_problem(config_path)
    if problem is not None:
        return f'cannot read config {config_path}: {problem}'
    frame = _config_frame(error)
    where = f'{frame.filename}, line {frame.lineno}: ' if frame is not None else ''
    return f'cannot read config {config_path}: {where}{type(error).__name__}: {_first_line(str(error))}'


def _import_custom_modules(cfg: Config, config_path: str) -> None:
    """Import ``custom_imports`` as mmengine does, with an error that names the module and why it failed."""
    custom = cfg.get('custom_imports')
    if not custom:
        return
    names = custom.get('imports', [])
    names = [names] if isinstance(names, str) else list(names)
    allow_failed = custom.get('allow_failed_imports', False)
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as error:  # noqa: B902  (any error of the imported module's code, reported)
            missing = isinstance(error, ModuleNotFoundError) and error.name is not None and (
                name == error.name or name.startswith(error.name + '.'))
            if missing:
                reason = (f'there is no module {name!r} on the Python path (the tool\'s folder, PYTHONPATH and the '
                          f'installed packages; the working directory only with PYTHONPATH=.)')
            else:
                frame = traceback.extract_tb(error.__traceback__)[-1]
                reason = (f'importing {name!r} failed at {frame.filename}, line {frame.lineno}: '
                          f'{type(error).__name__}: {_first_line(str(error))}')
            if allow_failed:
                if is_main_launch_process():
                    from mmengine.logging import print_log
                    print_log(f'{config_path}: custom_imports: {reason}; ignored (allow_failed_imports=True)',
                              logger='current', level=logging.WARNING)
                continue
            raise ToolInputError(f'{config_path}: custom_imports: {reason}') from error


def read_config(config_path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config as the tools do: ``Config.fromfile``, its ``custom_imports``, then ``--cfg-options``, then every
    head's ``num_classes`` from the datasets (:func:`brs_detr.datasets.num_classes.resolve_num_classes`).

    Light: imports no torch, mmcv or mmdet (unless ``custom_imports`` does, or a dataset without ``metainfo`` needs
    its classes from mmdet's registry).

    Raises:
        ToolInputError: The file is missing or not a config file, has a syntax error (file and line, also in a
            ``_base_`` file), names a ``_base_`` file that does not exist, fails while it runs (file, line and
            error), imports a module that does not exist or fails; or an option of ``cfg_options`` is refused by
            :func:`check_cfg_options`.
        NumClassesError: A head's ``num_classes`` disagrees with the datasets' classes.
    """
    check_config_file(config_path)
    if not config_path.endswith(CONFIG_SUFFIXES):
        hint = ' (a checkpoint? the config comes first: CONFIG CHECKPOINT)' if config_path.endswith(
            ('.pth', '.pt', '.ckpt')) else ''
        raise ToolInputError(f'{config_path} is not a config file: expected {"/".join(CONFIG_SUFFIXES)}{hint}')
    from brs_detr.datasets.num_classes import markers_kept, resolve_num_classes

    try:
        with markers_kept():  # num_classes='from_dataset' resolved after --cfg-options, which may change the classes
            cfg = Config.fromfile(config_path, import_custom_modules=False)
    except Exception as error:  # noqa: B902  (anything the config's code raises)
        raise ToolInputError(describe_config_error(config_path, error)) from error
    _import_custom_modules(cfg, config_path)
    if cfg_options:
        cfg.merge_from_dict(check_cfg_options(cfg, cfg_options))
    resolve_num_classes(cfg)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """work_dir priority, as in mmdet: CLI > ``work_dir`` in the config > ./work_dirs/<config name>."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


# ----------------------------------------------------------------------------- --cfg-options
def _config_paths(node: Any, prefix: str = '') -> Iterator[str]:
    """Every dotted key path of a config (list items by index)."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, (list, tuple)) else ()
    for key, value in items:
        path = f'{prefix}{key}'
        yield path
        yield from _config_paths(value, path + '.')


def _child(node: Any, part: str) -> Tuple[bool, Any]:
    if isinstance(node, dict) and part in node:
        return True, node[part]
    if isinstance(node, (list, tuple)) and part.isdigit() and int(part) < len(node):
        return True, node[int(part)]
    return False, None


def _deepest_existing(cfg: Config, key: str) -> Tuple[str, Any, bool]:
    """``(longest existing prefix of key, its node, whether the whole key exists)``."""
    node: Any = cfg._cfg_dict
    walked: List[str] = []
    for part in key.split('.'):
        found, child = _child(node, part)
        if not found:
            return '.'.join(walked), node, False
        node = child
        walked.append(part)
    return key, node, True


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return 'True/False'
    if isinstance(value, int):
        return 'an integer'
    if isinstance(value, float):
        return 'a number'
    if isinstance(value, str):
        return 'a string'
    if isinstance(value, (list, tuple)):
        return 'a list'
    if isinstance(value, dict):
        return 'a dict'
    return type(value).__name__


def value_type_problem(old: Any, new: Any) -> Optional[str]:
    """Why ``new`` cannot replace the config value ``old`` (``None``: it can).

    Numbers, True/False, lists and dicts must stay what they are (an integer where the config has a number is
    fine, and so is one string where the config has a list of strings: ``test_evaluator.metric=bbox``); ``None``
    replaces or is replaced by anything; strings are not checked (``DictAction`` turns ``'1'`` into an integer).
    """
    if old is None or new is None or isinstance(old, str):
        return None
    if isinstance(old, bool):
        fits = isinstance(new, bool)
    elif isinstance(old, int):
        fits = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        fits = isinstance(new, (int, float)) and not isinstance(new, bool)
    elif isinstance(old, (list, tuple)):
        # a string where the config lists strings: mmdet's arguments of this kind take either (metric='bbox')
        fits = isinstance(new, (list, tuple)) or (isinstance(new, str) and bool(old)
                                                  and all(isinstance(item, str) for item in old))
    elif isinstance(old, dict):
        fits = isinstance(new, dict)
    else:
        return None
    return None if fits else f'expects {_type_name(old)} (the config has {old!r}), got {_type_name(new)} {new!r}'


def _typed_parent(cfg: Config, key: str) -> Optional[Tuple[str, str]]:
    """``(parent path, component type)`` when ``key`` is one new argument of a dict with a string ``type``."""
    prefix, node, _ = _deepest_existing(cfg, key)
    rest = key[len(prefix) + 1:] if prefix else key
    if '.' in rest or not isinstance(node, dict) or not isinstance(node.get('type'), str):
        return None
    return prefix, node['type']


#: Keys whose values another check names better than a type mismatch (``classes='person'``:
#: :func:`brs_detr.datasets.num_classes.resolve_num_classes` says how to write one class).
TYPE_CHECKED_ELSEWHERE = ('classes', )
#: How close (difflib ratio) a new key must be to an existing sibling to count as its misspelling.
TYPO_SIMILARITY = 0.8


def _resembles_a_sibling(parent: dict, key: str) -> bool:
    """Whether the new last part of ``key`` looks like a misspelt key of ``parent`` (``max_epoch``/``max_epochs``)."""
    return bool(difflib.get_close_matches(key.rsplit('.', 1)[-1], [str(k) for k in parent], n=1,
                                          cutoff=TYPO_SIMILARITY))


#: Top-level config keys that a tool reads itself (besides the Runner's fields).
TOOL_FIELDS = frozenset({'custom_imports', 'tta_model', 'tta_pipeline', 'data_check'})
#: The shortest string value whose copies are looked for (shorter ones match by chance).
MIN_COPIED_STRING = 2


def _copies_of_variable(cfg: Config, key: str) -> List[Tuple[str, Any]]:
    """``(path, value)`` of the config values that were made from the top-level variable ``key`` when the file was
    read: equal strings, strings that start with it (``data_root + 'annotations/...'``), and equal numbers under a
    key of the same name (``max_epochs`` -> ``train_cfg.max_epochs``)."""
    old = cfg._cfg_dict.get(key)
    if isinstance(old, bool) or not isinstance(old, (str, int, float)):
        return []
    if isinstance(old, str) and len(old) < MIN_COPIED_STRING:
        return []
    copies = []
    for path in _config_paths(cfg._cfg_dict):
        if path == key:
            continue
        _, value, _ = _deepest_existing(cfg, path)
        if isinstance(old, str):
            if isinstance(value, str) and value.startswith(old):
                copies.append((path, value))
        elif path.rsplit('.', 1)[-1] == key and value == old and not isinstance(value, bool):
            copies.append((path, value))
    return copies


def _variable_override_problem(cfg: Config, key: str, value: Any) -> Optional[str]:
    """Why ``--cfg-options key=value`` on a top-level variable of the config would change nothing (``None``: it
    does, or the variable was not copied anywhere)."""
    if '.' in key or key in RUNNER_FIELDS or key in TOOL_FIELDS:
        return None
    copies = _copies_of_variable(cfg, key)
    if not copies:
        return None
    old = cfg._cfg_dict[key]
    instead = ' '.join(f'{path}={value}{copied[len(old):]}' if isinstance(old, str) and isinstance(value, str)
                       else f'{path}={value}' for path, copied in copies)
    return (f'--cfg-options {key}={value}: {key} is a variable of {cfg.filename} that was copied into '
            f'{", ".join(path for path, _ in copies)} when the file was read; changing it now changes nothing '
            f'(mmengine would accept it silently). Set the keys that use it instead: --cfg-options {instead}')


def check_cfg_options(cfg: Config, cfg_options: dict) -> dict:
    """The ``--cfg-options`` with keys that must exist in ``cfg`` (or carry the ``+`` opt-in) and values of the
    type they replace.

    mmengine's ``merge_from_dict`` silently adds any key: ``train_cfg.max_epoch=2`` (for ``max_epochs``) trains
    with the config's value and no warning. Here every key must exist in the config, except keys under a top-level
    Runner field the config does not set (``randomness.seed=0``), under ``data_check``, and a new argument of a
    component (``default_hooks.checkpoint.by_epoch=False``: checked against the component's arguments by
    :func:`check_config_components` once its class can be looked up; a new key that resembles an existing one,
    ``train_cfg.max_epoch`` next to ``max_epochs``, is refused at once as its misspelling); a key written
    ``+key=value`` is added (or set) deliberately, whatever its value.

    Returns:
        The options with the ``+`` removed, for ``merge_from_dict``.

    Raises:
        ToolInputError: Names each unknown key with the closest existing keys, and each value of the wrong type.
    """
    checked, unknown, wrong_type, deferred, variables = {}, [], [], [], []
    for key, value in cfg_options.items():
        if key.startswith(NEW_KEY_PREFIX):
            checked[key[len(NEW_KEY_PREFIX):]] = value
            continue
        checked[key] = value
        top = key.split('.')[0]
        if top not in cfg and top in RUNNER_FIELDS:
            continue
        _, node, exists = _deepest_existing(cfg, key)
        if exists and _variable_override_problem(cfg, key, value) is not None:
            variables.append(_variable_override_problem(cfg, key, value))
        elif exists:
            problem = value_type_problem(node, value) if key.rsplit('.', 1)[-1] not in TYPE_CHECKED_ELSEWHERE else None
            if problem is not None:
                wrong_type.append(f'--cfg-options {key}: {problem}')
        elif _typed_parent(cfg, key) is not None and not _resembles_a_sibling(node, key):
            deferred.append((key, *_typed_parent(cfg, key)))
        else:
            unknown.append(key)
    lines = variables + wrong_type
    if unknown:
        paths = list(_config_paths(cfg._cfg_dict))
        for key in unknown:
            prefix, node, _ = _deepest_existing(cfg, key)
            siblings = [f'{prefix}.{k}' if prefix else str(k) for k in node] if isinstance(node, dict) else []
            close = difflib.get_close_matches(key, siblings, n=3, cutoff=0.5) or difflib.get_close_matches(
                key, paths, n=3, cutoff=0.6)
            lines.append(f'--cfg-options {key}: no such key in {cfg.filename}' +
                         (f'; closest existing keys: {", ".join(close)}' if close else '') +
                         (f' (under {prefix}: {", ".join(map(str, node))})' if not close and siblings else ''))
        lines.append(f'(mmengine would add the key silently. To add a new key on purpose, write it as '
                     f'{NEW_KEY_PREFIX}KEY=VALUE, e.g. {NEW_KEY_PREFIX}{unknown[0]}=...)')
    elif wrong_type:
        lines.append(f'(to set a value of another type on purpose, write it as {NEW_KEY_PREFIX}KEY=VALUE)')
    elif variables:
        lines.append(f'(to set the variable anyway, write it as {NEW_KEY_PREFIX}KEY=VALUE)')
    if lines:
        raise ToolInputError('\n'.join(lines))
    if deferred:
        previous = list(getattr(cfg, _DEFERRED_ATTRIBUTE, ()))
        object.__setattr__(cfg, _DEFERRED_ATTRIBUTE, previous + deferred)
    return checked


# ----------------------------------------------------------------------------- components (after mmdet is imported)
#: Config key -> the mmdet registry that builds the dicts under it (the nearest such key on a dict's path counts).
REGISTRY_OF_KEY = {
    'model': 'MODELS', 'data_preprocessor': 'MODELS', 'tta_model': 'MODELS',
    'dataset': 'DATASETS', 'datasets': 'DATASETS',
    'pipeline': 'TRANSFORMS', 'transforms': 'TRANSFORMS', 'tta_pipeline': 'TRANSFORMS',
    'train_pipeline': 'TRANSFORMS', 'test_pipeline': 'TRANSFORMS', 'val_pipeline': 'TRANSFORMS',
    'batch_sampler': 'DATA_SAMPLERS', 'collate_fn': 'FUNCTIONS',
    'default_hooks': 'HOOKS', 'custom_hooks': 'HOOKS',
    'optim_wrapper': 'OPTIM_WRAPPERS', 'optimizer': 'OPTIMIZERS', 'constructor': 'OPTIM_WRAPPER_CONSTRUCTORS',
    'param_scheduler': 'PARAM_SCHEDULERS',
    'train_cfg': 'LOOPS', 'val_cfg': 'LOOPS', 'test_cfg': 'LOOPS',
    'val_evaluator': 'METRICS', 'test_evaluator': 'METRICS', 'metrics': 'METRICS',
    'visualizer': 'VISUALIZERS', 'vis_backends': 'VISBACKENDS',
    'log_processor': 'LOG_PROCESSORS', 'model_wrapper_cfg': 'MODEL_WRAPPERS',
    'init_cfg': 'WEIGHT_INITIALIZERS',
    'assigner': 'TASK_UTILS', 'bbox_coder': 'TASK_UTILS', 'anchor_generator': 'TASK_UTILS',
    'prior_generator': 'TASK_UTILS', 'point_generator': 'TASK_UTILS', 'iou_calculator': 'TASK_UTILS',
    'match_costs': 'TASK_UTILS', 'iou_calculator2d': 'TASK_UTILS',
}
#: Keys under ``model`` whose ``type`` names a task utility (``model.train_cfg.sampler``) rather than a model part.
TASK_UTILITY_KEYS = ('sampler', )


def _registry_of_path(path: Sequence[str]) -> str:
    """The registry name for a dict at ``path`` (its keys from the top), by the nearest key that names one."""
    in_model = bool(path) and path[0] in ('model', 'tta_model')
    for key in reversed(path):
        if in_model and key in TASK_UTILITY_KEYS:
            return 'TASK_UTILS'
        if key == 'sampler' and not in_model:
            return 'DATA_SAMPLERS'
        if in_model and key in ('train_cfg', 'test_cfg'):
            continue  # the model's train_cfg/test_cfg are plain dicts, not loops
        if key in REGISTRY_OF_KEY:
            return REGISTRY_OF_KEY[key]
    return 'MODELS'


def _typed_dicts(node: Any, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], dict]]:
    """Every dict with a ``type`` in the config, with its path."""
    if isinstance(node, dict):
        if 'type' in node:
            yield path, node
        for key, value in node.items():
            yield from _typed_dicts(value, path + (str(key), ))
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _typed_dicts(value, path + (str(index), ))


def _registry_tree(registry) -> List[Any]:
    """``registry``, its parents up to the root, then every registry below the root (mmcv's, mmdet's, ...): where
    mmengine's ``Registry.get`` may find a name without a scope."""
    chain = [registry]
    while chain[-1].parent is not None:
        chain.append(chain[-1].parent)
    below, queue = [], list(chain[-1].children.values())
    while queue:
        child = queue.pop(0)
        below.append(child)
        queue.extend(child.children.values())
    return chain + [r for r in below if r not in chain]


def _lookup(registries: dict, registry_name: str, type_name: str):
    """The class ``type_name`` names: in the registry of its place, else in any mmdet registry (``None``: none).

    The registries' modules are imported first (``import_from_location``, as ``Registry.get`` does); then the names
    are looked up in their tables directly (``Registry.get`` re-checks the imports and scopes on every call).
    """
    preferred = registries.get(registry_name)
    for registry in ([preferred] if preferred is not None else []) + list(registries.values()):
        registry.import_from_location()
        for candidate in _registry_tree(registry):
            if type_name in candidate.module_dict:
                return candidate.module_dict[type_name]
    return None


def _found(registries: dict, registry_name: str, type_name: str) -> bool:
    """Whether :func:`_lookup` finds ``type_name`` or mmcv.ops has it; found names are remembered (registries only
    grow)."""
    key = (registry_name, type_name)
    if key not in _FOUND:
        import mmcv.ops
        if _lookup(registries, registry_name, type_name) is None and not hasattr(mmcv.ops, type_name):
            return False
        _FOUND.add(key)
    return True


_FOUND: set = set()


def _registered_names(registry) -> List[str]:
    names, current = set(), registry
    while current is not None:
        names.update(current.module_dict)
        current = current.parent
    return sorted(names)


def _accepted_arguments(component) -> Optional[set]:
    """The keyword arguments ``component`` (a class or function) takes by name; ``None`` when it takes any
    (``**kwargs`` all the way up, or a signature that cannot be read)."""
    classes = inspect.getmro(component) if inspect.isclass(component) else (component, )
    accepted = set()
    for cls in classes:
        function = cls.__init__ if inspect.isclass(component) else cls
        if function is object.__init__:
            break
        try:
            parameters = inspect.signature(function).parameters.values()
        except (TypeError, ValueError):
            return None
        accepted.update(p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            return accepted - {'self'}
    return accepted - {'self'}


def check_config_components(cfg: Config) -> None:
    """Check, before anything is built, that every ``type`` in ``cfg`` is registered and that each ``--cfg-options``
    key new under a component is one of its arguments (see :func:`check_cfg_options`).

    A type is accepted when the registry of its place (``model`` -> models, ``pipeline`` -> transforms, ...) or any
    other mmdet/mmengine registry has it, or mmcv.ops has a function of that name (``nms``, ``RoIAlign``); scoped
    types of other packages (``mmpretrain.X``) are left to their package.

    Raises:
        ToolInputError: ``unknown type 'ATSSHaed' at model.bbox_head.type: not in mmdet's model registry (closest
            registered names: ATSSHead, ...)``, or ``--cfg-options KEY: CheckpointHook takes no argument ...``.
    """
    import mmdet.registry
    from mmengine.registry import FUNCTIONS, Registry

    registries = {name: registry for name, registry in vars(mmdet.registry).items()
                  if isinstance(registry, Registry) and not name.startswith('MMENGINE_')}
    registries.setdefault('FUNCTIONS', FUNCTIONS)
    problems = []
    for path, node in _typed_dicts(cfg._cfg_dict):
        type_name = node['type']
        if not isinstance(type_name, str):
            continue  # a class (lazy-import configs) or a function
        scope, _, bare = type_name.rpartition('.')
        if scope and scope not in ('mmdet', 'mmengine', 'mmcv') or node.get('_scope_') not in (None, 'mmdet'):
            continue
        if _found(registries, _registry_of_path(path), bare):
            continue
        registry = registries[_registry_of_path(path)]
        close = difflib.get_close_matches(bare, _registered_names(registry), n=3, cutoff=0.6)
        where = '.'.join(path + ('type', ))
        problems.append(f'{cfg.filename}: unknown type {type_name!r} at {where}: not in {registry.scope}\'s '
                        f'{registry.name} registry nor in any other' +
                        (f' (closest registered names: {", ".join(close)})' if close else '') +
                        ' (a typo, or a module missing from custom_imports?)')
    for key, parent, type_name in getattr(cfg, _DEFERRED_ATTRIBUTE, ()):
        component = _lookup(registries, _registry_of_path(tuple(parent.split('.'))), type_name.rpartition('.')[2])
        accepted = _accepted_arguments(component) if component is not None else None
        argument = key.rsplit('.', 1)[1]
        if accepted is None or argument in accepted:
            continue
        close = difflib.get_close_matches(argument, sorted(accepted), n=3, cutoff=0.5)
        problems.append(f'--cfg-options {key}: no such key in {cfg.filename}, and {type_name} (at {parent}) takes no '
                        f'argument {argument!r}' + (f'; closest: {", ".join(close)}' if close else
                                                    f' (its arguments: {", ".join(sorted(accepted))})') +
                        f'. To add it anyway, write {NEW_KEY_PREFIX}{key}=...')
    if problems:
        raise ToolInputError('\n'.join(problems))
