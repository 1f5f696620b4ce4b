"""Name the config component that refused its arguments when the model, a dataloader or an evaluator is built.

A model is built from nested config dicts (``model.backbone``, ``model.bbox_head.loss_cls``, ...), a dataloader
from its dataset, pipeline transforms and sampler, an evaluator from its metrics. When one of their classes refuses
its arguments (``ResNet(depth=19)``: ``KeyError: 'invalid depth 19 for resnet'``; ``RandomFlip(prob=1.5)``: a bare
``AssertionError``; ``CocoMetric(metric='bboxx')``), mmengine passes the exception on as it is: a traceback through
the registry that never says which config key was wrong. :func:`describe_build_error` finds the component whose
``__init__`` raised and the config keys that build it.
"""
from __future__ import annotations

import contextlib
import re
import traceback
from typing import Any, Iterator, List, Optional, Tuple

#: Exceptions a component raises when it refuses its arguments (anything else is passed on as it is).
ARGUMENT_ERRORS = (TypeError, KeyError, ValueError, AssertionError, IndexError, NotImplementedError)
#: The TypeError of a call with an argument the class does not take (raised before its ``__init__`` runs).
UNEXPECTED_ARGUMENT = re.compile(r'^(\w+)\.__init__\(\) got an unexpected keyword argument')
#: At most this many config keys are named for one class.
MAX_NAMED_KEYS = 3


class ComponentBuildError(ValueError):
    """The model, a dataloader or an evaluator cannot be built from the config: a component refused its
    arguments."""


#: The name the model's case had first.
ModelBuildError = ComponentBuildError


def _typed_dicts(node: Any, path: str) -> Iterator[Tuple[str, dict]]:
    """``(config key, dict)`` of every dict with a ``type`` under ``node``."""
    if isinstance(node, dict):
        if 'type' in node:
            yield path, node
        for key, value in node.items():
            yield from _typed_dicts(value, f'{path}.{key}')
    elif isinstance(node, (list, tuple)):
        for index, value in enumerate(node):
            yield from _typed_dicts(value, f'{path}.{index}')


def _refusing_class(error: BaseException) -> Optional[type]:
    """The class whose ``__init__`` raised ``error`` (the innermost one on the traceback)."""
    found = None
    tb = error.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        if frame.f_code.co_name == '__init__' and 'self' in frame.f_locals:
            found = type(frame.f_locals['self'])
        tb = tb.tb_next
    return found


def _type_name(value: Any) -> str:
    return value if isinstance(value, str) else getattr(value, '__name__', str(value))


def describe_build_error(model_cfg: dict, error: BaseException, root: str = 'model') -> Optional[str]:
    """One line naming the component of ``model_cfg`` that refused its arguments, or ``None`` when ``error`` is not
    an argument error of a class built from the config (a bug: its traceback should be seen), or is one of
    brs-detr's own errors (they name their problem already: the data check's, a checkpoint's).

    Args:
        model_cfg: The config dict that was built (``model``, a dataloader, an evaluator).
        error: What building it raised.
        root: The config key of ``model_cfg``.
    """
    if not isinstance(error, ARGUMENT_ERRORS) or type(error).__module__.split('.')[0] == 'brs_detr':
        return None
    called = UNEXPECTED_ARGUMENT.match(str(error)) if isinstance(error, TypeError) else None
    refusing = _refusing_class(error)
    if called is not None:  # an argument the class does not take: raised by its caller, named in the message
        refusing_name = called.group(1)
        names = {refusing_name}
    elif refusing is not None:
        refusing_name, names = refusing.__name__, {cls.__name__ for cls in refusing.__mro__}
    else:
        return None
    keys: List[str] = [key for key, node in _typed_dicts(model_cfg, root) if _type_name(node['type']) in names]
    if not keys:
        return None
    where = ', '.join(keys[:MAX_NAMED_KEYS]) + (f' (and {len(keys) - MAX_NAMED_KEYS} more)'
                                                if len(keys) > MAX_NAMED_KEYS else '')
    message = traceback.format_exception_only(type(error), error)[-1].strip()
    if isinstance(error, AssertionError) and not str(error):  # a bare assert: its line says what it checks
        message += f' ({traceback.extract_tb(error.__traceback__)[-1].line})'
    built = 'the model' if root == 'model' else root
    return (f'cannot build {built}: {where} ({refusing_name}) refused its arguments: {message} '
            f'(check those config keys; --debug shows the traceback)')


@contextlib.contextmanager
def named_build_errors(model_cfg: Any, root: str = 'model') -> Iterator[None]:
    """Turn a component's refusal of its arguments, raised while the block builds ``model_cfg``, into
    :class:`ComponentBuildError` naming its config keys (:func:`describe_build_error`); any other error passes as it
    is."""
    try:
        yield
    except Exception as error:  # noqa: B902  (re-raised as it is unless a config component refused)
        described = describe_build_error(model_cfg, error, root) if isinstance(model_cfg, dict) else None
        if described is None:
            raise
        raise ComponentBuildError(described) from error
