"""A ``tf.data`` source of the blocks of batches a Python callable yields (TF node).

``DataFeed.dataset()`` hands TensorFlow whole blocks of batches (``[batches, batch_size, ...]``
per column) from a Python generator, and TensorFlow cuts them into batches. Built with
``tf.data.Dataset.from_generator(...).flat_map(...)``, every call traces four functions again
(three of ``from_generator`` and the one that slices blocks): 55-95 ms of a node's CPU per
``dataset()`` here, 80 ms and more for a process's first, and ``from_generator``'s
``output_signature`` path then checks every block in Python through ``eager_py_func``. A
one-epoch ``train()`` of 30,000 MNIST records per worker gives each node about 0.3 s of work,
so that was a third of it.

Here the three functions of a ``GeneratorDataset`` are traced once per process and kind of
block (column dtypes and shapes) and kept; each dataset is two ops run with them
(``GeneratorDataset`` on a key naming its callable, then ``UnbatchDataset``) and a
``from_variant`` wrapper: 8-12 ms, and an iterator's start 25 ms cheaper. The callables are
looked up by key in this module's ``BlockSources`` and dropped when their dataset is
garbage-collected.

The process's allocator is also set to keep freed memory for reuse (``keep_freed_memory``):
TensorFlow's ``GeneratorDataset`` fixes glibc's trim threshold at 128 KB when its first
iterator starts, which turns off glibc's adaptive mmap threshold; from then on every buffer
over 128 KB (a batch, a block's conversion) was a fresh mapping that the kernel faults in and
zeroes (an eager pass over 120 batches of 256 MNIST records: 23,600 page faults, 1.4-1.8 ms a
batch; 0-1,000 faults and 0.9-1.0 ms a batch with the memory kept).
"""
from __future__ import annotations

import ctypes
import itertools
import logging
import platform
import threading
import weakref
from typing import Callable, Iterator

import numpy as np

logger = logging.getLogger(__name__)

# glibc's mallopt parameters and the values set: the ceilings glibc's own adaptive thresholds
# reach (32 MiB for mmap; trimming at twice that), fixed.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20
TRIM_THRESHOLD_BYTES = 64 << 20

_memory_kept = False


def keep_freed_memory() -> bool:
    """Once per process, after TensorFlow's generator op set its trim threshold: buffers under
    32 MiB come from the heap and freed memory is kept for reuse (up to 64 MiB at a heap's top
    before it is given back). True when set (glibc only; elsewhere nothing changes)."""
    global _memory_kept
    if _memory_kept:
        return True
    _memory_kept = True
    if platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
                    and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
    except (OSError, AttributeError) as exc:
        logger.info("could not set the allocator's thresholds: %s", exc)
        return False


class BlockSources:
    """The callables behind this process's block datasets, and the traced functions of their
    ``GeneratorDataset``s (one set per kind of block)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._sources: dict[int, Callable[[], Iterator]] = {}   # key -> callable
        self._running: dict[int, Iterator] = {}                 # iterator id -> generator
        self._ids = itertools.count(1)
        self._functions: dict[tuple, tuple] = {}
        self.traced = 0            # kinds of block traced so far (tests read it)

    def dataset(self, specs: tuple, blocks: Callable[[], Iterator]):
        """A dataset of the batches in the blocks ``blocks()`` yields: tuples of arrays shaped
        like ``specs`` (``tf.TensorSpec``s of ``[batches, batch_size, ...]``), each iterator
        calling ``blocks()`` afresh. One column gives a dataset of tensors, several of tuples."""
        import tensorflow as tf
        init, next_block, finish = self._traced(specs)
        key = next(self._ids)
        with self._lock:
            self._sources[key] = blocks
        types = [s.dtype for s in specs]
        variant = tf.raw_ops.GeneratorDataset(
            init_func_other_args=[tf.constant(key, tf.int64)], next_func_other_args=[],
            finalize_func_other_args=[], init_func=init, next_func=next_block,
            finalize_func=finish, output_types=types, output_shapes=[s.shape for s in specs])
        variant = tf.raw_ops.UnbatchDataset(input_dataset=variant, output_types=types,
                                            output_shapes=[s.shape[1:] for s in specs])
        batches = tuple(tf.TensorSpec(s.shape[1:], s.dtype) for s in specs)
        dataset = tf.data.experimental.from_variant(
            variant, batches[0] if len(batches) == 1 else batches)
        weakref.finalize(dataset, self._forget, key)
        return dataset

    def _traced(self, specs: tuple) -> tuple:
        with self._lock:
            functions = self._functions.get(specs)
        if functions is None:
            functions = self._trace(specs)
            with self._lock:
                functions = self._functions.setdefault(specs, functions)
                self.traced = len(self._functions)
        return functions

    def _trace(self, specs: tuple) -> tuple:
        import tensorflow as tf
        scalar = [tf.TensorSpec([], tf.int64)]
        types = [s.dtype for s in specs]

        @tf.function(input_signature=scalar, autograph=False)
        def init(key):
            return tf.numpy_function(self._start, [key], tf.int64, stateful=True)

        @tf.function(input_signature=scalar, autograph=False)
        def next_block(iterator_id):
            block = tf.numpy_function(self._next, [iterator_id], types, stateful=True)
            for tensor, spec in zip(block, specs):
                tensor.set_shape(spec.shape)
            return block

        @tf.function(input_signature=scalar, autograph=False)
        def finish(iterator_id):
            return tf.numpy_function(self._finish, [iterator_id], tf.int64, stateful=True)

        return (init.get_concrete_function(), next_block.get_concrete_function(),
                finish.get_concrete_function())

    # -- called by TensorFlow, from its threads -----------------------------------------------
    def _start(self, key) -> np.int64:
        keep_freed_memory()   # TensorFlow's GeneratorDataset set its thresholds by now
        with self._lock:
            blocks = self._sources.get(int(key))
            iterator_id = next(self._ids)
        if blocks is None:   # (the dataset object was collected while TensorFlow iterates it)
            raise RuntimeError(f"block dataset {int(key)} was iterated after it was "
                               "garbage-collected")
        generator = blocks()
        with self._lock:
            self._running[iterator_id] = generator
        return np.int64(iterator_id)

    def _next(self, iterator_id) -> list:
        with self._lock:
            generator = self._running[int(iterator_id)]
        return list(next(generator))    # StopIteration ends the iterator

    def _finish(self, iterator_id) -> np.int64:
        with self._lock:
            generator = self._running.pop(int(iterator_id), None)
        if generator is not None:
            generator.close()
        return np.int64(0)

    def _forget(self, key: int) -> None:
        with self._lock:
            self._sources.pop(key, None)

    def live(self) -> tuple[int, int]:
        """``(datasets, iterators)`` this process holds callables and generators of."""
        with self._lock:
            return len(self._sources), len(self._running)


SOURCES = BlockSources()
