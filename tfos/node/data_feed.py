"""``DataFeed``: what ``ctx.get_data_feed()`` returns in a TF node (InputMode.SPARK).

TensorFlowOnSpark's API (``next_batch``, ``batch_results``, ``should_stop``, ``terminate``)
over a :class:`~tfos.node.feed_queue.FeedQueue` of columnar chunks, plus the fast path
``dataset(batch_size)``: a ``tf.data.Dataset`` of whole column batches that ends exactly at
each epoch's end, so Keras ``fit(dataset, epochs=N)`` sees the same number of batches on every
worker.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from tfos.core.errors import FeedUsageError
from tfos.node import block_dataset
from tfos.node.chunk_memory import ChunkMemory
from tfos.node.feed_queue import Chunk, FeedQueue

# dataset(): whole batches handed to TensorFlow per call of its generator, and their bytes.
BLOCK_BATCHES = 8
BLOCK_BYTES = 8 << 20
# dataset() without the node's memory: blocks joined from several chunks are kept for reuse,
# this many blocks' worth (TensorFlow holds the block it slices and the next one).
POOLED_BLOCKS = 4


class DataFeed:
    def __init__(self, queue: FeedQueue, train_mode: bool = True,
                 input_mapping: dict[str, str] | None = None,
                 on_terminate: Callable[[], None] | None = None, timeout: float | None = None,
                 memory: ChunkMemory | None = None):
        self.queue = queue
        self._memory = memory     # the feed server's, where dataset() joins chunks
        self.train_mode = train_mode
        self.input_mapping = input_mapping
        self._on_terminate = on_terminate
        self._timeout = timeout
        self._pending: list[tuple[Chunk, int, int]] = []   # rows awaiting batch_results
        self._stopped = False

    # -- columns ---------------------------------------------------------------------------
    def next_columns(self, batch_size: int, within_epoch: bool = False):
        """Up to ``batch_size`` rows as ``{column: array}``.

        With ``within_epoch``, a batch never spans two epochs and ``{}`` marks an epoch's end.
        Returns None once the feed is over.
        """
        return self._next_columns(batch_size, within_epoch)

    def _next_columns(self, batch_size: int, within_epoch: bool,
                      memory: ChunkMemory | None = None):
        """``next_columns``; rows from several chunks are joined in ``memory`` when given."""
        if batch_size < 1:
            raise FeedUsageError(f"batch_size={batch_size}: must be at least 1")
        # Training batches are whole until the feed ends (TensorFlowOnSpark's next_batch), so
        # every worker of a synchronous loop takes the same number of steps; inference hands
        # out what arrived, as its rows' results are awaited.
        fill = self.train_mode and not within_epoch
        pieces = self.queue.take(batch_size, within_epoch, self._timeout, fill=fill)
        if pieces is None:
            self._stopped = True
            return None
        if not self.train_mode:
            self._pending.extend(pieces)
        return _assemble(pieces, memory)

    # -- TensorFlowOnSpark's API ------------------------------------------------------------
    def next_batch(self, batch_size: int):
        """``batch_size`` items (fewer only in the last batch of the feed, or in inference
        mode): a list of rows, or with ``input_mapping`` a dict of tensor name -> array of that
        column. Empty once the feed is over."""
        columns = self.next_columns(batch_size)
        if not columns:
            return {} if self.input_mapping else []
        if self.input_mapping:
            return self._mapped(columns)
        values = list(columns.values())
        if len(values) == 1 and list(columns) == ["0"]:
            return list(values[0])
        return list(zip(*values))

    def _mapped(self, columns: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Columns renamed to tensors by ``input_mapping`` (column -> tensor). Rows without
        names (an RDD of tuples, as TensorFlowOnSpark's pipeline fed) hold the mapped columns
        in the sorted order of their names."""
        mapping = self.input_mapping
        if all(name in columns for name in mapping):
            return {tensor: columns[name] for name, tensor in mapping.items()}
        if len(columns) != len(mapping) or list(columns) != [str(i) for i in range(len(columns))]:
            raise FeedUsageError(f"input_mapping {mapping} names columns the feed does not have; "
                                 f"it has {list(columns)}")
        return {mapping[name]: columns[str(i)] for i, name in enumerate(sorted(mapping))}

    def should_stop(self) -> bool:
        return self._stopped or self.queue.done

    @property
    def done_feeding(self) -> bool:
        """TensorFlowOnSpark's flag: True once the feed is over (or terminated)."""
        return self.should_stop()

    def batch_results(self, results) -> None:
        """Sends one result per row handed out by ``next_batch``, in the same order."""
        columns = _result_columns(results)
        rows = {len(v) for v in columns.values()}
        owed = sum(stop - start for _, start, stop in self._pending)
        if rows != {owed}:
            raise FeedUsageError(f"batch_results got {sorted(rows)} results for {owed} rows "
                                 "handed out by next_batch: return exactly one result per row")
        offset = 0
        for chunk, start, stop in self._pending:
            n = stop - start
            chunk.reply({k: v[offset:offset + n] for k, v in columns.items()})
            offset += n
        self._pending = []

    def terminate(self) -> None:
        """Stops consuming: the driver cancels the feed and nothing more is read."""
        self._stopped = True
        self.queue.terminate()
        if self._on_terminate is not None:
            self._on_terminate()

    # -- tf.data ------------------------------------------------------------------------------
    def dataset(self, batch_size: int, columns: list[str] | None = None):
        """A ``tf.data.Dataset`` of batches of ``batch_size`` rows, one epoch per iteration.

        Elements are tuples of the chosen ``columns`` (default: all, in feed order; a single
        column is yielded as a tensor), e.g. ``(image, label)`` for Keras ``fit``. With an
        ``input_mapping`` the columns are named by their tensors (``["x", "y_"]``). Iterating
        it again continues with the next epoch.

        TensorFlow's auto-sharding is turned off: the feed has already split the data among
        the workers, and sharding it again would drop most of it. Under a multi-worker strategy
        Keras treats a dataset's batch as the global batch and splits it among the workers'
        replicas, so pass the global batch size (per-worker size times workers) there.
        """
        import tensorflow as tf
        first = self._peek()
        if self.input_mapping:
            first = self._mapped(first)
        names = columns or list(first)
        missing = [n for n in names if n not in first]
        if missing:
            named = "tensors" if self.input_mapping else "columns"
            raise FeedUsageError(f"dataset(columns={names}): the feed has no {named} {missing}; "
                                 f"it has {list(first)}")
        # The generator hands TensorFlow blocks of up to BLOCK_BATCHES whole batches at once
        # (shape [batches, batch_size, ...]), cut into batches by tf.data: a Python call and a
        # conversion per block rather than per batch, which is most of a batch's cost. The
        # tf.data source around it is traced once per process (tfos.node.block_dataset).
        # A block is a view of one chunk, or joined from several in reused memory, aligned
        # (as the node's large chunks are) for TensorFlow to take it without a copy; an
        # unaligned array TensorFlow copies, into fresh pages (see ChunkMemory).
        row_bytes = max(1, sum(first[n].itemsize * int(np.prod(first[n].shape[1:]))
                               for n in names))
        per_block = max(1, min(BLOCK_BATCHES, BLOCK_BYTES // (batch_size * row_bytes)))
        memory = self._memory
        if memory is None:
            memory = ChunkMemory(POOLED_BLOCKS * per_block * batch_size * row_bytes)
        specs = tuple(tf.TensorSpec((None, None) + first[n].shape[1:],
                                    tf.as_dtype(first[n].dtype)) for n in names)

        def blocks():
            while True:
                batch = self._next_columns(batch_size * per_block, True, memory)
                if not batch:
                    return
                if self.input_mapping:
                    batch = self._mapped(batch)
                rows = len(batch[names[0]])
                whole = rows // batch_size * batch_size
                if whole:
                    yield tuple(batch[n][:whole].reshape((-1, batch_size) + batch[n].shape[1:])
                                for n in names)
                if rows > whole:     # the epoch's last, short batch
                    yield tuple(batch[n][whole:][None] for n in names)

        dataset = block_dataset.SOURCES.dataset(specs, blocks)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.OFF
        return dataset.with_options(options)

    def _peek(self) -> dict[str, np.ndarray]:
        """A zero-row view of the first chunk, to learn column names, dtypes and shapes."""
        chunk = self.queue.peek(self._timeout)
        if chunk is None:
            raise FeedUsageError(f"feed {self.queue.name!r} ended before any data arrived, so "
                                 "its columns are unknown")
        return {name: array[:0] for name, array in chunk.columns.items()}


def _assemble(pieces: list[tuple[Chunk, int, int]],
              memory: ChunkMemory | None = None) -> dict[str, np.ndarray]:
    """The rows of ``pieces`` as columns: views of a single chunk, else joined (in ``memory``
    when given)."""
    if not pieces:
        return {}
    if len(pieces) == 1:
        chunk, start, stop = pieces[0]
        return {name: array[start:stop] for name, array in chunk.columns.items()}
    names = list(pieces[0][0].columns)
    if memory is None:
        return {name: np.concatenate([c.columns[name][a:b] for c, a, b in pieces])
                for name in names}
    rows = sum(b - a for _, a, b in pieces)
    joined = {}
    for name in names:
        parts = [c.columns[name][a:b] for c, a, b in pieces]
        dtype = np.result_type(*parts)
        if dtype.hasobject or len({p.shape[1:] for p in parts}) > 1:
            joined[name] = np.concatenate(parts)   # (rows of different shapes: its error)
            continue
        joined[name] = np.concatenate(parts, out=memory.empty((rows,) + parts[0].shape[1:],
                                                              dtype))
    return joined


def _result_columns(results) -> dict[str, np.ndarray]:
    if isinstance(results, dict):
        return {str(k): np.asarray(v) for k, v in results.items()}
    return {"0": np.asarray(results)}
