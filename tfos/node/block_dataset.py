"""A ``tf.data`` source of the blocks of batches a Python callable yields (TF node).

``DataFeed.dataset()`` hands TensorFlow whole blocks of batches (``[batches, batch_size, ...]``
per column) from a Python generator, and TensorFlow cuts them into batches. Built with
``tf.data.Dataset.from_generator(...).flat_map(...)``, every call traced four functions again
(three of ``from_generator`` and the one that slices blocks): 55-95 ms of a node's CPU per
``dataset()`` on the 2-core test machine, more for a process's first, and
``from_generator``'s ``output_signature`` path then checked every block in Python (through
``eager_py_func``). A one-epoch ``train()`` of 30,000 MNIST records per worker gives each node
about 0.3 s of work, so that was a third of it.

Here the four functions are traced once per process and kind of block (column dtypes and
shapes) and kept. Each dataset is two ops run with them, ``GeneratorDataset`` on a key that
names its callable and ``FlatMapDataset`` over the blocks' tensor slices, wrapped by
``from_variant``: 8-12 ms, and each iterator starts 25 ms sooner. A node's CPU per record of
that one-epoch feed went from 11-16 us to 5.5-6. The callables are looked up by key in a
``BlockSources`` and dropped when their dataset is garbage-collected.

Not ``UnbatchDataset``, which needs no traced function: it copied every batch into new
memory, and since TensorFlow's generator op fixes glibc's trim threshold at 128 KB (its "Memory
patch applied" log line), new memory over 128 KB is fresh pages: 0.77 page faults per record
against 0.04 over tensor slices, and 40% more of the node's CPU.
"""
from __future__ import annotations

import itertools
import threading
import weakref
from typing import Callable, Iterator

import numpy as np


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
        init, next_block, finish, slices = self._traced(specs)
        key = next(self._ids)
        with self._lock:
            self._sources[key] = blocks
        types = [s.dtype for s in specs]
        variant = tf.raw_ops.GeneratorDataset(
            init_func_other_args=[tf.constant(key, tf.int64)], next_func_other_args=[],
            finalize_func_other_args=[], init_func=init, next_func=next_block,
            finalize_func=finish, output_types=types, output_shapes=[s.shape for s in specs])
        variant = tf.raw_ops.FlatMapDataset(input_dataset=variant, other_arguments=[],
                                            f=slices, output_types=types,
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

        @tf.function(input_signature=list(specs), autograph=False)
        def slices(*block):
            return tf.data.experimental.to_variant(tf.data.Dataset.from_tensor_slices(block))

        return (init.get_concrete_function(), next_block.get_concrete_function(),
                finish.get_concrete_function(), slices.get_concrete_function())

    # -- called by TensorFlow, from its threads -----------------------------------------------
    def _start(self, key) -> np.int64:
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
