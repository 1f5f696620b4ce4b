from .loops import ResumableEpochBasedTrainLoop
from .runner import CheckpointFitError, ReliableRunner, find_resumable_checkpoint

__all__ = ['ResumableEpochBasedTrainLoop', 'CheckpointFitError', 'ReliableRunner', 'find_resumable_checkpoint']
