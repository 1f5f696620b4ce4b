"""Does a checkpoint's state dict fit a model? Names and shapes compared, before anything is loaded.

Used by :class:`~brs_detr.engine.runner.ReliableRunner` (resuming and ``load_from``) and by the inference demo's
strict loading (:mod:`brs_detr.apis.weights`).
"""
from dataclasses import dataclass, field
from typing import Any, List, Mapping

#: How many keys of each kind :meth:`StateDictFit.describe` lists.
MAX_KEYS_LISTED = 5


@dataclass
class StateDictFit:
    """How a checkpoint's state dict fits a model's: what would load, what would not.

    Attributes:
        num_model_keys: Entries of the model's state dict.
        missing: Model keys the checkpoint lacks (they keep their initial values).
        unexpected: Checkpoint keys the model does not have (ignored).
        reshaped: ``'key: checkpoint (shape) vs model (shape)'`` for keys in both with different shapes (not
            loaded).
    """

    num_model_keys: int
    missing: List[str] = field(default_factory=list)
    unexpected: List[str] = field(default_factory=list)
    reshaped: List[str] = field(default_factory=list)

    @property
    def num_loaded(self) -> int:
        """Model entries the checkpoint provides with the right shape."""
        return self.num_model_keys - len(self.missing) - len(self.reshaped)

    @property
    def exact(self) -> bool:
        return not (self.missing or self.unexpected or self.reshaped)

    def describe(self, limit: int = MAX_KEYS_LISTED) -> str:
        """One line per kind of difference, each listing its first ``limit`` keys."""

        def listed(keys: List[str]) -> str:
            return ', '.join(keys[:limit]) + (f', ... ({len(keys) - limit} more)' if len(keys) > limit else '')

        parts = [f'{self.num_loaded} of the model\'s {self.num_model_keys} entries fit']
        for keys, what in ((self.missing, 'missing from the checkpoint'),
                           (self.reshaped, 'with another shape in the checkpoint'),
                           (self.unexpected, 'in the checkpoint but not in the model')):
            if keys:
                parts.append(f'{len(keys)} {what}: {listed(keys)}')
        return '; '.join(parts)


def state_dict_fit(model_state: Mapping[str, Any], checkpoint_state: Mapping[str, Any]) -> StateDictFit:
    """Compare names and shapes of a checkpoint's state dict with a model's (``model.state_dict()``)."""
    fit = StateDictFit(num_model_keys=len(model_state))
    for key, value in model_state.items():
        if key not in checkpoint_state:
            fit.missing.append(key)
            continue
        theirs = getattr(checkpoint_state[key], 'shape', None)
        if theirs is not None and tuple(theirs) != tuple(value.shape):
            fit.reshaped.append(f'{key}: checkpoint {tuple(theirs)} vs model {tuple(value.shape)}')
    fit.unexpected = [key for key in checkpoint_state if key not in model_state]
    return fit
