"""Peak memory of a stretch of work, for the benchmarks (CUDA: the caching allocator; CPU: the process's RSS).

torch's CPU allocations are invisible to tracemalloc, so on the CPU the process's resident set is measured: free
heap memory is returned to the system (``malloc_trim``), the kernel's peak-RSS counter is reset
(``/proc/self/clear_refs``), and the peak is ``VmHWM`` (Linux only). Used by both benchmarks
(:mod:`brs_detr.benchmarks.train`, :mod:`brs_detr.benchmarks.loss_worker`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import os
from typing import TYPE_CHECKING, Callable, Optional, Tuple

if TYPE_CHECKING:
    import torch

MIB = 2**20
#: Written to ``/proc/self/clear_refs``, it resets the peak resident set size (``VmHWM``) to the current one.
CLEAR_REFS_RESET_PEAK = '5'


def libc_function(name: str) -> Optional[Callable]:
    """A function of the C library (``malloc_trim``, ``mallopt``: glibc only), or None where it has none."""
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library('c') or 'libc.so.6'), name)
    except (OSError, AttributeError):
        return None


class PeakMemoryMeter:
    """Peak memory of a stretch of work on ``device``, measured between :meth:`reset` and :meth:`read`.

    * CUDA: the caching allocator's peak of allocated tensor memory (``torch.cuda.max_memory_allocated``) after
      ``torch.cuda.reset_peak_memory_stats``.
    * CPU (Linux): the process's peak resident set size (``VmHWM`` in ``/proc/self/status``), which
      :meth:`reset` sets back to the current RSS by writing ``5`` to ``/proc/self/clear_refs``. Before that, Python
      garbage is collected and glibc is asked to return free heap pages to the system (``malloc_trim``), so memory
      freed by earlier work is not silently reused below the baseline. Where ``clear_refs`` is not writable the
      peak cannot be reset and the process's lifetime peak (``ru_maxrss``) is reported instead
      (``resettable`` False).

    :meth:`read` returns ``(peak, baseline)`` in bytes: ``peak`` is the highest value seen since :meth:`reset`
    (absolute: it includes the model, optimizer state and everything else the process holds), ``baseline`` the
    value at :meth:`reset`; ``peak - baseline`` is the extra memory of the measured work (activations, gradients,
    temporaries).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.resettable = device.type == 'cuda' or os.access('/proc/self/clear_refs', os.W_OK)
        self._baseline = 0
        self._malloc_trim = libc_function('malloc_trim') if device.type == 'cpu' else None

    @property
    def method(self) -> str:
        """How the peak is measured (reported with the results)."""
        if self.device.type == 'cuda':
            return 'torch.cuda.max_memory_allocated'
        return 'peak RSS (/proc/self/clear_refs, VmHWM)' if self.resettable else 'lifetime peak RSS (ru_maxrss)'

    @staticmethod
    def _status_bytes(field: str) -> Optional[int]:
        try:
            with open('/proc/self/status') as status:
                for line in status:
                    if line.startswith(field + ':'):
                        return int(line.split()[1]) * 1024  # reported in kB
        except OSError:
            return None
        return None

    def _release_free_memory(self) -> None:
        gc.collect()
        if self._malloc_trim is not None:
            self._malloc_trim(0)

    def reset(self) -> None:
        """Start a measurement: the current usage becomes the baseline and the peak."""
        if self.device.type == 'cuda':
            import torch
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._baseline = torch.cuda.memory_allocated(self.device)
            return
        self._release_free_memory()
        try:
            with open('/proc/self/clear_refs', 'w') as clear_refs:
                clear_refs.write(CLEAR_REFS_RESET_PEAK)
        except OSError:
            self.resettable = False
        self._baseline = self._status_bytes('VmRSS') or 0

    def read(self) -> Tuple[int, int]:
        """``(peak, baseline)`` in bytes since the last :meth:`reset`."""
        if self.device.type == 'cuda':
            import torch
            torch.cuda.synchronize(self.device)
            return torch.cuda.max_memory_allocated(self.device), self._baseline
        peak = self._status_bytes('VmHWM') if self.resettable else None
        if peak is None:
            import resource
            self.resettable = False
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
        return peak, self._baseline
