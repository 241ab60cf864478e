"""glibc malloc pinning: identical sampler steps take the same time in every stage's process."""

from __future__ import annotations

import ctypes


def pin_malloc_thresholds() -> bool:
    """Fix glibc malloc's trim, top-pad and mmap thresholds for this process; False where there is no glibc.

    glibc adapts these thresholds as a process runs. A sampler's large activations (5 MB per
    tensor at batch 10,000) were then returned to the OS and page-faulted back at every step in
    some processes and not in others, so identical unguided steps took 26 or 44 ms depending on
    the allocator's history. That swing is as large as the effects the table's time axis
    measures (a guided step costs about 1.4 unguided ones). Pinned, freed memory stays in the heap
    for reuse. Speed only: no number a stage computes changes.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # <malloc.h>
    settings = ((m_trim_threshold, 1 << 30), (m_top_pad, 64 << 20), (m_mmap_threshold, 32 << 20))
    return all(libc.mallopt(option, value) == 1 for option, value in settings)
