"""Files on local disk, S3 and HDFS for ``map_fun`` (runs in the TF node; InputMode.TENSORFLOW).

TensorFlow 2.21 reads only local files here (its ``s3://`` and ``hdfs://`` plugins no longer
load), so a node reads remote files itself, as ``tfos.files``:

1. ``list_files(pattern, ctx)`` expands a directory or a glob to a sorted list of files;
2. ``worker_shard(files, ctx)`` keeps this chief's or worker's disjoint share of them;
3. ``dataset(pattern, ctx, format=...)`` does both and returns a ``tf.data.Dataset``. Local
   TFRecord and text files go to TensorFlow's own readers; remote ones are streamed through
   fsspec file objects into ``tf.data.Dataset.from_generator`` in large reads, a chunk of
   records per step (framing and CRCs checked by ``tfos.core.tfrecord``); CSV and Parquet are
   read by pyarrow into columns.

``open``, ``upload_dir`` and ``download_dir`` cover the rest: TensorFlow writes a SavedModel or
checkpoint to a local directory, ``upload_dir`` copies it up. Where the bytes live and how to
reach them (S3 credentials, the Hadoop client) is ``tfos.node.filesystems``.
"""
from __future__ import annotations

import functools
import os
import posixpath
from typing import Any, Iterator, Sequence

from tfos.core import tfrecord
from tfos.core.errors import ConfigError
from tfos.node.filesystems import errors_named, locate, opened

FORMATS = ("tfrecord", "text", "csv", "parquet")
# Bytes each remote file is fetched in (one request each) and parsed in: large enough that
# per-request latency and per-call Python overhead vanish, small enough to stay in cache.
READ_BUFFER_BYTES = 8 << 20
PARSE_CHUNK_BYTES = 1 << 20
_MASTER_JOBS = ("chief", "master")


def filesystem(uri: str) -> tuple[Any, str]:
    """The fsspec filesystem holding ``uri`` and the path of ``uri`` on it."""
    place = locate(uri)
    return place.fs, place.path


def open(uri: str, mode: str = "rb", **kwargs):  # noqa: A001 - the name everyone expects
    """A file object of ``uri`` on any supported filesystem (fsspec's ``open``; a context
    manager). Keyword arguments go to the filesystem's ``open`` (``block_size``...)."""
    place = locate(uri)
    with errors_named(uri, "open"):
        return place.fs.open(place.path, mode, **kwargs)


def list_files(pattern: str | Sequence[str], ctx=None) -> list[str]:
    """The files ``pattern`` names, sorted: every file directly in a directory (names starting
    with ``_`` or ``.`` left out, as Hadoop does: ``_SUCCESS``, a saved schema), or every file
    a glob (``*``, ``?``, ``[...]``, ``**``) matches, or the file itself.

    A URI keeps its scheme in the names returned (``s3a://`` stays ``s3a://``); a local path
    gives absolute paths. With ``ctx``, a path without a scheme is first qualified against the
    node's default filesystem (``ctx.absolute_path``). A list of patterns gives the union.
    """
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    found: set[str] = set()
    for each in patterns:
        found.update(_list_one(_qualified(each, ctx)))
    return sorted(found)


def shard_files(files: Sequence[str], num_shards: int, index: int) -> list[str]:
    """Shard ``index`` of ``num_shards`` disjoint shards that together hold every file: files
    ``index``, ``index + num_shards``, ... of the list, so sizes spread evenly when neighbours
    in the list are alike. Refuses a split that leaves a shard without files."""
    if num_shards < 1 or not 0 <= index < num_shards:
        raise ConfigError(f"shard {index} of {num_shards}: need num_shards >= 1 and "
                          f"0 <= index < num_shards")
    if len(files) < num_shards:
        raise ConfigError(
            f"{len(files)} files for {num_shards} readers: reader {index} would get none. "
            f"Write the data as at least {num_shards} files (in Spark, repartition({num_shards}) "
            "or more before saving), or run fewer workers")
    return list(files[index::num_shards])


def worker_shard(files: Sequence[str], ctx) -> list[str]:
    """This node's share of ``files``: shard ``i`` of ``ctx.num_workers``, where ``i`` counts
    the chief (first) and then the workers. For the nodes that read training data (chief and
    workers, or TFParallel's instances); a parameter server or evaluator has no shard."""
    return shard_files(files, ctx.num_workers, _reader_index(ctx))


def dataset(pattern: str | Sequence[str], ctx=None, format: str = "tfrecord",  # noqa: A002
            shard: bool = True, columns: Sequence[str] | None = None,
            num_parallel_reads: int | None = None, buffer_size: int | None = None):
    """A ``tf.data.Dataset`` of the files ``pattern`` names (see ``list_files``; a list of
    patterns too), this worker's shard of them when ``shard`` and a ``ctx`` are given.

    ``format``: ``"tfrecord"`` (each element a serialized record, as ``TFRecordDataset``),
    ``"text"`` (each element a line without its newline, as ``TextLineDataset``), ``"csv"``
    (with a header line) or ``"parquet"`` (each element a dict of column name -> value;
    ``columns`` selects columns; lists of numbers become vectors). ``num_parallel_reads``
    files are read at once (None: one after another, in order); ``buffer_size`` is the read
    size (default: TensorFlow's for local files, 8 MiB for remote ones).

    A sharded dataset turns TensorFlow's own auto-sharding off, so a strategy does not shard
    it a second time. Uneven shards end at different steps: under a synchronous strategy,
    ``.repeat()`` the dataset and give ``fit`` a ``steps_per_epoch``.
    """
    import tensorflow as tf
    if format not in FORMATS:
        raise ConfigError(f"format={format!r}: use one of {FORMATS}")
    if columns is not None and format in ("tfrecord", "text"):
        raise ConfigError(f"columns={list(columns)} with format={format!r}: only CSV and "
                          "Parquet files have columns (parse the records with tf.io instead)")
    files = list_files(pattern, ctx)
    if not files:
        raise ConfigError(f"no files to read: {pattern!r} names none")
    sharded = shard and ctx is not None and ctx.num_workers > 1
    if sharded:
        files = worker_shard(files, ctx)
    places = [locate(f) for f in files]
    if format in ("tfrecord", "text") and all(p.local for p in places):
        reader = tf.data.TFRecordDataset if format == "tfrecord" else tf.data.TextLineDataset
        data = reader([p.path for p in places], buffer_size=buffer_size,
                      num_parallel_reads=num_parallel_reads)
    else:
        data = _streamed(tf, files, format, columns, num_parallel_reads,
                         buffer_size or READ_BUFFER_BYTES)
    if sharded:
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = \
            tf.data.experimental.AutoShardPolicy.OFF
        data = data.with_options(options)
    return data


def upload_dir(local_dir: str, uri: str) -> list[str]:
    """Copies every file under ``local_dir`` to ``uri`` (same relative names); returns the
    URIs written. For what TensorFlow can only write locally: ``model.save(tmp)`` or
    ``checkpoint.save(tmp + "/ckpt")``, then ``upload_dir(tmp, "s3://bucket/model")``."""
    if not os.path.isdir(local_dir):
        raise ConfigError(f"upload_dir: {local_dir!r} is not a local directory")
    place = locate(uri)
    written = []
    with errors_named(uri, "write to"):
        for root, _, names in os.walk(local_dir):
            relative = os.path.relpath(root, local_dir)
            for name in sorted(names):
                target = posixpath.normpath(posixpath.join(place.path, relative, name))
                place.fs.makedirs(posixpath.dirname(target), exist_ok=True)
                place.fs.put_file(os.path.join(root, name), target)
                written.append(place.uri(target))
    return written


def download_dir(uri: str, local_dir: str) -> list[str]:
    """Copies every file under ``uri`` into ``local_dir`` (created; same relative names);
    returns the local paths. The way back for ``upload_dir``: a SavedModel to load, a
    checkpoint to restore from."""
    place = locate(uri)
    written = []
    with errors_named(uri, "read"):
        found = sorted(place.fs.find(place.path))
        if not found:
            raise FileNotFoundError(place.path)
        for source in found:
            target = os.path.join(local_dir, posixpath.relpath(source, place.path))
            os.makedirs(os.path.dirname(target), exist_ok=True)
            place.fs.get_file(source, target)
            written.append(target)
    return written


# -- listing ----------------------------------------------------------------------------------
def _qualified(path: str, ctx) -> str:
    if ctx is not None:
        return ctx.absolute_path(path)
    return path if "://" in path else os.path.abspath(path)


def _list_one(uri: str) -> list[str]:
    place = locate(uri)
    fs, path = place.fs, place.path
    with errors_named(uri, "list"):
        try:
            if any(c in path for c in "*?["):
                infos = fs.glob(path, detail=True).values()
            elif fs.isdir(path):
                infos = [i for i in fs.ls(path, detail=True)
                         if not posixpath.basename(i["name"].rstrip("/")).startswith(("_", "."))]
            else:
                infos = [fs.info(path)]
        except FileNotFoundError:
            place.check_container()   # a missing bucket, named as such
            raise
        files = [place.uri(i["name"]) for i in infos if i["type"] == "file"]
        if not files:
            place.check_container()
            raise ConfigError(f"{uri}: no files there (a glob that matches nothing, or an "
                              "empty directory): check the path")
    return files


def _reader_index(ctx) -> int:
    """This node's place among the nodes reading training data: the chief, then workers."""
    if ctx.job_name in _MASTER_JOBS:
        return 0
    if ctx.job_name == "worker":
        masters = sum(len(ctx.cluster_spec.get(job, ())) for job in _MASTER_JOBS)
        return masters + ctx.task_index
    raise ConfigError(f"{ctx.job_name}:{ctx.task_index} reads no shard of the training files: "
                      "only the chief and workers do. Read every file with shard=False "
                      "(an evaluator's validation data), or skip reading on this node")


# -- streamed reading (remote files, CSV, Parquet) --------------------------------------------
def _streamed(tf, files: list[str], format: str, columns, parallel: int | None,  # noqa: A002
              buffer_size: int):
    """Files read in Python, a chunk of records per step, into tf.data (then one per element).
    Each file is one ``from_generator`` dataset; ``interleave`` reads ``parallel`` at once."""
    if format in ("tfrecord", "text"):
        spec = tf.TensorSpec((None,), tf.string)
        read = functools.partial(_tfrecord_chunks if format == "tfrecord" else _line_chunks,
                                 buffer_size=buffer_size)
    else:
        from tfos.node import columnar
        schema = columnar.schema(files[0], format, columns, buffer_size)
        spec = columnar.tensor_specs(tf, schema, files[0])
        read = functools.partial(columnar.batches, format=format, schema=schema,
                                 buffer_size=buffer_size)

    def one_file(uri):
        return tf.data.Dataset.from_generator(read, args=(uri,), output_signature=spec)

    names = tf.data.Dataset.from_tensor_slices(files)
    if parallel and parallel > 1:
        data = names.interleave(one_file, cycle_length=parallel, num_parallel_calls=parallel,
                                deterministic=True)
    else:
        data = names.flat_map(one_file)
    return data.unbatch()


def _tfrecord_chunks(uri: bytes, buffer_size: int) -> Iterator[Any]:
    import numpy as np
    name = uri.decode()
    with opened(name, buffer_size) as stream:
        for records in tfrecord.read_record_chunks(stream, name, PARSE_CHUNK_BYTES):
            yield np.array(records, dtype=object)


def _line_chunks(uri: bytes, buffer_size: int) -> Iterator[Any]:
    """Lines without their ``\\n`` (or ``\\r\\n``), as ``TextLineDataset`` gives them."""
    import numpy as np
    name = uri.decode()
    with opened(name, buffer_size) as stream:
        tail = b""
        while True:
            more = stream.read(PARSE_CHUNK_BYTES)
            if not more:
                break
            lines = (tail + more).split(b"\n")
            tail = lines.pop()
            if lines:
                yield np.array([line[:-1] if line.endswith(b"\r") else line
                                for line in lines], dtype=object)
        if tail:
            yield np.array([tail[:-1] if tail.endswith(b"\r") else tail], dtype=object)

