"""altclip_np.runtime: the process-wide settings a model turns on (no timing: page-fault counts)."""
import gc
import resource
import sys
import weakref

import numpy as np
import pytest

from altclip_np import runtime


def faults_to_fill(nbytes):  # minor page faults taken to allocate, fill and free one block
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    a = np.empty(nbytes, np.uint8)
    a.fill(1)
    del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's")
def test_tune_malloc_reuses_freed_activation_memory():
    # A 4 MiB activation is 1,024 pages: glibc's default serves it with a fresh mmap each time (500 faults observed
    # per allocation); once tuned, the second and later allocations reuse the heap block. Observed: 0 faults.
    runtime.tune_malloc()
    faults_to_fill(4 << 20)  # the first allocation grows the heap
    assert faults_to_fill(4 << 20) < 64


def test_freeze_gc_once_freezes_only_once():
    # The first call (a model's first forward) moves the objects alive then out of the GC's sight; later calls do
    # nothing, so a reference cycle made afterwards is still collected.
    runtime.freeze_gc_once()
    frozen = gc.get_freeze_count()
    assert frozen > 0

    class Node:
        pass

    node = Node()
    node.self = node
    ref = weakref.ref(node)
    del node
    runtime.freeze_gc_once()
    assert gc.get_freeze_count() == frozen
    gc.collect()
    assert ref() is None
