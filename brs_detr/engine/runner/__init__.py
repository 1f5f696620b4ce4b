from .loops import ResumableEpochBasedTrainLoop
from .runner import CheckpointFitError, ReliableRunner, ReliableTestRunner, find_resumable_checkpoint

__all__ = ['ResumableEpochBasedTrainLoop', 'CheckpointFitError', 'ReliableRunner', 'ReliableTestRunner',
           'find_resumable_checkpoint']
