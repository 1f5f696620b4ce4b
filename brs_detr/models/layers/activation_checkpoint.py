"""Activation checkpointing of transformer layers (``num_cp`` of the encoder and decoder configs)."""
import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint


def check_num_cp(num_cp: int, num_layers: int, owner: str) -> int:
    """Validate ``num_cp``: the number of leading layers whose activations are recomputed in backward.

    Args:
        num_cp (int): ``-1`` or ``0`` for none, up to ``num_layers`` for all (mmdet's ``num_cp``; the original
            Co-DETR's encoder ``with_cp``).
        num_layers (int): Layers of the encoder or decoder.
        owner (str): Name for the error message.

    Returns:
        int: The number of checkpointed layers (0 for none).

    Raises:
        ValueError: ``num_cp`` is below -1 or above ``num_layers``.
    """
    if not -1 <= num_cp <= num_layers:
        raise ValueError(f'{owner}: num_cp must lie in [-1, num_layers={num_layers}] (the number of checkpointed '
                         f'layers, -1 or 0 for none), got {num_cp}')
    return max(num_cp, 0)


def run_layer(layer: nn.Module, checkpointed: bool, **kwargs) -> Tensor:
    """``layer(**kwargs)``, recomputing its activations in backward instead of keeping them if ``checkpointed``.

    Non-reentrant checkpointing (``use_reentrant=False``): gradients are exactly those without it (the layers are
    deterministic; their dropout is 0 in the Co-DETR configs, and the RNG state is restored for the recomputation
    anyway), a layer may run several times per iteration (the positive-query passes reuse the decoder) and DDP
    needs no ``static_graph`` (reentrant checkpointing makes DDP fail with "Expected to mark a variable ready only
    once", Co-DETR issue #62). Without gradients (inference) the layer runs plainly.
    """
    if checkpointed and torch.is_grad_enabled():
        return checkpoint(layer, use_reentrant=False, **kwargs)
    return layer(**kwargs)
