"""Which weights of a checkpoint depend on its number of classes (fine-tuning to another class list).

A detector trained on COCO (80 classes) and a model for a data set with 3 classes share every weight except the
class layers of their heads: the classifiers (``fc_cls``, ``cls_branches``, ``atss_cls``, ...), a class-specific
box regressor (``fc_reg``: 4 outputs per class), the mask logits (one per class), their biases. Such a weight has the
same shape in both models except along one dimension whose size is ``a * N`` or ``a * (N + 1)`` (``a`` outputs per
class, ``+ 1`` for a softmax classifier's background column) with ``N`` the class count of each model.
:func:`class_dependent_weights` finds them; everything else of the checkpoint must fit the model exactly
(:class:`~brs_detr.engine.runner.runner.ReliableRunner`).

The checkpoint's class count comes from its ``meta`` (``dataset_meta['classes']`` as mmengine saves it,
``CLASSES`` in mmdet 2.x checkpoints); without one it is inferred from the weights: the one count every differing
class layer agrees on.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Set, Tuple

from torch import nn

from brs_detr.datasets.num_classes import CLASS_FREE_PARTS, heads_of_other_labels

Shape = Tuple[int, ...]


@dataclass
class ClassWeight:
    """A checkpoint weight that differs from the model's only along its class dimension.

    Attributes:
        key: The state-dict key (after the checkpoint's keys were revised, e.g. ``module.`` removed).
        head: The head it belongs to (the nearest module with ``num_classes``).
        checkpoint_shape: Its shape in the checkpoint.
        model_shape: Its shape in the model.
    """
    key: str
    head: str
    checkpoint_shape: Shape
    model_shape: Shape

    def describe(self) -> str:
        return f'{self.key} {self.checkpoint_shape} -> {self.model_shape}'


@dataclass
class ClassWeightSplit:
    """:func:`class_dependent_weights`' answer.

    Attributes:
        class_weights: The reshaped weights that are class layers of a head.
        other: ``'key: checkpoint (shape) vs model (shape)'`` for every other reshaped weight.
        checkpoint_classes: The checkpoint's class count (from its meta, or the one its weights imply), if known.
        classes_source: ``'meta'`` or ``'weights'`` (where ``checkpoint_classes`` comes from).
    """
    class_weights: List[ClassWeight]
    other: List[str]
    checkpoint_classes: Optional[int]
    classes_source: str


def checkpoint_class_names(checkpoint: Mapping) -> Optional[Tuple[str, ...]]:
    """The class names a checkpoint's ``meta`` lists (mmengine's ``dataset_meta``, mmdet 2.x's ``CLASSES``), in
    label order; ``None`` when it lists none."""
    meta = checkpoint.get('meta') if isinstance(checkpoint, Mapping) else None
    if not isinstance(meta, Mapping):
        return None
    dataset_meta = meta.get('dataset_meta')
    classes = dataset_meta.get('classes') if isinstance(dataset_meta, Mapping) else None
    if classes is None:
        classes = meta.get('CLASSES')
    return tuple(classes) if isinstance(classes, (list, tuple)) and classes else None


def checkpoint_num_classes(checkpoint: Mapping) -> Optional[int]:
    """The number of classes a checkpoint's ``meta`` names (:func:`checkpoint_class_names`)."""
    names = checkpoint_class_names(checkpoint)
    return None if names is None else len(names)


def _class_heads(model: nn.Module) -> Dict[str, int]:
    """Module name -> ``num_classes`` for every module that predicts the dataset's classes (not RPN or semantic heads,
    backbones, necks)."""
    heads = {}
    for name, module in model.named_modules():
        value = getattr(module, 'num_classes', None)
        if (name and name.split('.')[0] not in CLASS_FREE_PARTS and not isinstance(module, heads_of_other_labels())
                and isinstance(value, int) and not isinstance(value, bool) and value > 0):
            heads[name] = value
    return heads


def _head_of(key: str, heads: Mapping[str, int]) -> Optional[str]:
    """The nearest enclosing class head of a state-dict key."""
    parts = key.split('.')[:-1]
    while parts:
        name = '.'.join(parts)
        if name in heads:
            return name
        parts.pop()
    return None


def _class_dimension(checkpoint_shape: Shape, model_shape: Shape) -> Optional[int]:
    """The one dimension in which the shapes differ; ``None`` when they differ in rank or in several."""
    if len(checkpoint_shape) != len(model_shape):
        return None
    differing = [dim for dim, (theirs, ours) in enumerate(zip(checkpoint_shape, model_shape)) if theirs != ours]
    return differing[0] if len(differing) == 1 else None


def _outputs_per_class(size: int, num_classes: int) -> List[int]:
    """Every ``a >= 1`` with ``size == a * num_classes`` or ``size == a * (num_classes + 1)``."""
    return [a for a in range(1, size // num_classes + 1) if size in (a * num_classes, a * (num_classes + 1))]


def _compatible_class_counts(checkpoint_size: int, outputs_per_class: Sequence[int]) -> Set[int]:
    """The class counts ``n >= 1`` for which ``checkpoint_size`` is ``a * n`` or ``a * (n + 1)``."""
    counts = set()
    for a in outputs_per_class:
        if checkpoint_size % a == 0:
            counts.update(n for n in (checkpoint_size // a, checkpoint_size // a - 1) if n >= 1)
    return counts


def class_dependent_weights(model: nn.Module, model_shapes: Mapping[str, Shape], checkpoint_shapes: Mapping[str, Shape],
                            reshaped: Sequence[str], checkpoint_classes: Optional[int]) -> ClassWeightSplit:
    """Split the reshaped keys of a checkpoint into class layers of the model's heads and the rest.

    Args:
        model: The model the checkpoint is loaded into (its heads and their ``num_classes``).
        model_shapes: Key -> shape of the model's state dict.
        checkpoint_shapes: Key -> shape of the checkpoint's state dict.
        reshaped: The keys in both whose shapes differ.
        checkpoint_classes: The checkpoint's class count from its meta (:func:`checkpoint_num_classes`), if known.

    Returns:
        The split; with ``checkpoint_classes=None`` the checkpoint class count is the one that explains the most
        reshaped keys, and only the keys it explains are class layers.
    """
    heads = _class_heads(model)
    candidates: List[Tuple[ClassWeight, Set[int]]] = []
    other: List[str] = []
    for key in reshaped:
        theirs, ours = tuple(checkpoint_shapes[key]), tuple(model_shapes[key])
        head = _head_of(key, heads)
        dim = _class_dimension(theirs, ours)
        counts: Set[int] = set()
        if head is not None and dim is not None:
            counts = _compatible_class_counts(theirs[dim], _outputs_per_class(ours[dim], heads[head]))
            if checkpoint_classes is not None:
                counts &= {checkpoint_classes}
        if counts:
            candidates.append((ClassWeight(key, head, theirs, ours), counts))
        else:
            other.append(f'{key}: checkpoint {theirs} vs model {ours}')
    if checkpoint_classes is not None:
        return ClassWeightSplit([weight for weight, _ in candidates], other, checkpoint_classes, 'meta')
    if not candidates:
        return ClassWeightSplit([], other, None, 'weights')
    # the class count that explains the most weights (the smallest among equals); a weight it does not explain
    # is not a class layer
    support: Dict[int, int] = {}
    for _, counts in candidates:
        for count in counts:
            support[count] = support.get(count, 0) + 1
    best = min(support, key=lambda count: (-support[count], count))
    class_weights = [weight for weight, counts in candidates if best in counts]
    other += [f'{weight.key}: checkpoint {weight.checkpoint_shape} vs model {weight.model_shape}'
              for weight, counts in candidates if best not in counts]
    agreed = set.intersection(*(counts for weight, counts in candidates if best in counts))
    return ClassWeightSplit(class_weights, other, best if len(agreed) == 1 else None, 'weights')
