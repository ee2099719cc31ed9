"""Spark ML stages for TensorFlow models (driver; the scoring runs in Spark's Python workers).

TensorFlowOnSpark's ``pipeline`` names. ``TFEstimator.fit(df)`` trains through a TF cluster:
it starts ``TFCluster.run`` with ``train_fn``, hands the DataFrame's ``input_mapping`` columns
to the nodes (InputMode.SPARK: fed epoch by epoch, read with ``DataFeed(ctx.mgr,
input_mapping=args.input_mapping)``; InputMode.TENSORFLOW: written as TFRecords to
``tfrecord_dir``, read by the TF code), waits for the nodes to finish and returns a ``TFModel``
with the same parameters and ``history``, what ``train_fn`` returned on the primary node (a
Keras ``History`` as its dict). ``train_fn(args, ctx)`` gets the estimator's ``tf_args`` merged
with its parameters (``args.batch_size``, ``args.epochs``, ``args.export_dir``, ...) and, with a
validation DataFrame, ``args.validation_feed`` (the feed to read it from, one epoch of it after
each training epoch) or ``args.validation_dir`` (its TFRecords).

``TFModel.transform(df)`` needs no TF cluster: each Python worker loads the SavedModel at
``export_dir`` once (kept for the worker's later tasks), and every partition streams through it
as Arrow batches (``mapInArrow``) of ``batch_size`` rows. Input columns (``input_mapping``:
column -> signature input; by default each input reads the column of its name, and entries
for tensors the signature does not take, such as training labels, are left out) are cast and
reshaped to the signature's inputs; outputs (``output_mapping``: signature output -> column;
by default every output, as a column of its name) are put beside the input columns, in row
order, the last short batch included. An output of shape ``(rows,)`` or ``(rows, 1)`` becomes a
scalar column, any other shape an array column.

Both stages persist with Spark ML (``save``/``load``, alone or in a ``Pipeline``). A saved
``TFEstimator`` holds its ``train_fn`` and ``tf_args`` pickled, as ``TFCluster.run`` ships them
to the nodes: load only estimators you trust, as with any pickle.
"""
from __future__ import annotations

import base64
import functools
import logging
import os
import pickle

from pyspark.ml import Estimator, Model
from pyspark.ml.util import (
    DefaultParamsReader,
    DefaultParamsWriter,
    MLReadable,
    MLReader,
    MLWritable,
)

from tfos.core import topology
from tfos.core.config import InputMode
from tfos.core.errors import ConfigError
from tfos.ml.params import (
    HasBatchSize,
    HasClusterSize,
    HasDriverPSNodes,
    HasEpochs,
    HasExportDir,
    HasGraceSecs,
    HasInputMapping,
    HasInputMode,
    HasMasterNode,
    HasModelDir,
    HasNumPS,
    HasOutputMapping,
    HasProtocol,
    HasReaders,
    HasSignatureDefKey,
    HasSteps,
    HasTagSet,
    HasTensorboard,
    HasTFRecordDir,
    Namespace,
    TFParams,
)

logger = logging.getLogger(__name__)
VALIDATION_FEED = "validation"   # the feed a validation DataFrame is fed on (InputMode.SPARK)


class TFEstimator(Estimator, TFParams, HasInputMapping, HasClusterSize, HasNumPS,
                  HasDriverPSNodes, HasInputMode, HasMasterNode, HasProtocol, HasGraceSecs,
                  HasTensorboard, HasModelDir, HasExportDir, HasTFRecordDir, HasBatchSize,
                  HasEpochs, HasReaders, HasSteps, MLReadable, MLWritable):
    """Trains ``train_fn(args, ctx)`` on a TF cluster; ``fit`` returns a :class:`TFModel`.

    ``tf_args``: the TF function's own arguments (dict, argparse or tfos ``Namespace``, or an
    argv list it parses itself). ``export_fn`` (TensorFlowOnSpark's TF1 export step) is
    refused: export in ``train_fn``, e.g. with ``tfos.compat.export_saved_model``. Keyword
    ``cluster_options`` go to ``TFCluster.run`` (``log_stream``, ``env``, ``num_gpus``, ...).
    """

    def __init__(self, train_fn, tf_args=None, export_fn=None, **cluster_options):
        super().__init__()
        if export_fn is not None:
            raise ConfigError("TFEstimator(export_fn=...) is TensorFlow 1's export step; export "
                              "the SavedModel at the end of train_fn instead, e.g. "
                              "tfos.compat.export_saved_model(model, args.export_dir, "
                              "is_chief=ctx.job_name == 'chief')")
        self.train_fn = train_fn
        self.args = Namespace(tf_args)
        self.cluster_options = cluster_options
        self.validation_data = None
        self._setDefault(input_mapping={}, cluster_size=1, num_ps=0, driver_ps_nodes=False,
                         input_mode=int(InputMode.SPARK), master_node="chief", protocol="grpc",
                         tensorboard=False, grace_secs=0, model_dir=None, export_dir=None,
                         tfrecord_dir=None, batch_size=100, epochs=1, readers=1, steps=1000)

    def setValidationData(self, dataset):  # noqa: N802 - Spark ML's accessor names
        """A DataFrame to validate on after each epoch (not a Param: it is data, so it is not
        saved with the estimator). Its ``input_mapping`` columns reach ``train_fn`` like the
        training data's."""
        self.validation_data = dataset
        return self

    def getValidationData(self):  # noqa: N802
        return self.validation_data

    def _fit(self, dataset):
        from tfos.driver.cluster import TFCluster, spark_context
        args = self.merge_args_params()
        for name in ("model_dir", "export_dir", "tfrecord_dir"):
            setattr(args, name, _driver_path(getattr(args, name)))
        columns = self._input_columns(dataset, "the training DataFrame")
        train = dataset.select(columns)
        validation = None
        if self.validation_data is not None:
            validation = self.validation_data.select(
                self._input_columns(self.validation_data, "the validation DataFrame"))
        mode = InputMode(args.input_mode)
        args.validation_feed = args.validation_dir = None
        if mode == InputMode.TENSORFLOW:
            _write_tfrecords(args, train, validation)
        elif validation is not None:
            args.validation_feed = VALIDATION_FEED
        tf_args = self.args.argv if self.args.argv else args
        logger.info("TFEstimator: training %s on %d nodes with %s", _name(self.train_fn),
                    args.cluster_size, args)
        cluster = TFCluster.run(
            spark_context(dataset.sparkSession), self.train_fn, tf_args, args.cluster_size,
            args.num_ps, args.tensorboard, mode, driver_ps_nodes=args.driver_ps_nodes,
            master_node=args.master_node, rdma=args.protocol == "rdma", **self.cluster_options)
        with cluster:
            if mode == InputMode.SPARK:
                _feed(cluster, train, validation, args.epochs)
            cluster.shutdown(grace_secs=args.grace_secs)
        model = self._copyValues(TFModel(self.args))
        for name in ("model_dir", "export_dir"):    # where the nodes wrote, not relative
            if getattr(args, name):
                model._set(**{name: getattr(args, name)})
        model.history = cluster.results.get(topology.primary_node(cluster.config.roles).label)
        return model

    def _input_columns(self, dataset, what: str) -> list[str]:
        """The ``input_mapping`` columns, sorted by name (the order TensorFlowOnSpark fed)."""
        columns = sorted(self.getInputMapping())
        if not columns:
            raise ConfigError("TFEstimator needs setInputMapping({column: tensor}): the "
                              "DataFrame's columns to train on")
        missing = [c for c in columns if c not in dataset.columns]
        if missing:
            raise ConfigError(f"TFEstimator input_mapping names columns {missing} that {what} "
                              f"does not have; it has {dataset.columns}")
        return columns

    # -- persistence ------------------------------------------------------------------------
    def write(self):
        return _EstimatorWriter(self)

    @classmethod
    def read(cls):
        return _StageReader(cls)

    @classmethod
    def _from_metadata(cls, metadata: dict) -> "TFEstimator":
        # A directory the user saved and chose to load (see the module's doc), never the network.
        train_fn, (args, options) = pickle.loads(base64.b64decode(metadata["tfos_train_fn"]))
        return cls(train_fn, args, **options)


def _feed(cluster, train, validation, epochs: int) -> None:
    """Feeds the epochs; with validation data, one epoch of it after each training epoch, in
    the order Keras ``fit(..., validation_data=...)`` reads them."""
    if validation is None:
        cluster.train(train, epochs)
        return
    for _ in range(epochs):
        cluster.train(train, 1)
        cluster.train(validation, 1, qname=VALIDATION_FEED)


def _write_tfrecords(args: Namespace, train, validation) -> None:
    """InputMode.TENSORFLOW: the training (and validation) columns as TFRecords for the TF
    code to read, at ``tfrecord_dir`` (and ``<tfrecord_dir>_validation``), replacing earlier
    ones."""
    from tfos.ml.dfutil import saveAsTFRecords
    if not args.tfrecord_dir:
        raise ConfigError("TFEstimator with InputMode.TENSORFLOW needs setTFRecordDir(path): "
                          "the DataFrame is written there as TFRecords for train_fn to read")
    saveAsTFRecords(train, args.tfrecord_dir, mode="overwrite")
    if validation is not None:
        args.validation_dir = args.tfrecord_dir.rstrip("/") + "_validation"
        saveAsTFRecords(validation, args.validation_dir, mode="overwrite")


def _driver_path(path: str | None) -> str | None:
    """A relative local path made absolute where the driver stands: the TF nodes and the
    Python workers run in executor directories of their own."""
    if not path or "://" in path or os.path.isabs(path):
        return path
    return os.path.abspath(path)


def _name(fn) -> str:
    return getattr(fn, "__qualname__", repr(fn))


class _EstimatorWriter(DefaultParamsWriter):
    """The parameters as Spark ML metadata, with ``train_fn``, ``tf_args`` and the cluster
    options pickled inside it (the log stream stays behind: it belongs to this process)."""

    def saveImpl(self, path: str) -> None:
        from tfos.driver.cluster import pickle_map_fun
        estimator = self.instance
        options = {k: v for k, v in estimator.cluster_options.items() if k != "log_stream"}
        payload = pickle_map_fun(estimator.train_fn, (estimator.args, options))
        DefaultParamsWriter.saveMetadata(estimator, path, self.sparkSession, extraMetadata={
            "tfos_train_fn": base64.b64encode(payload).decode("ascii")})


class _StageReader(MLReader):
    """Loads a stage saved by ``_EstimatorWriter`` or ``_ModelWriter``: its metadata, then its
    parameters (the class builds itself from the metadata's extras)."""

    def __init__(self, cls):
        super().__init__()
        self.cls = cls

    def load(self, path: str):
        metadata = DefaultParamsReader.loadMetadata(path, self.sparkSession)
        expected = f"{self.cls.__module__}.{self.cls.__name__}"
        if metadata["class"] != expected:
            raise ConfigError(f"{path} holds a saved {metadata['class']}, not a {expected}")
        stage = self.cls._from_metadata(metadata)
        stage._resetUid(metadata["uid"])
        DefaultParamsReader.getAndSetParams(stage, metadata)
        return stage


class TFModel(Model, TFParams, HasBatchSize, HasInputMapping, HasOutputMapping, HasModelDir,
              HasExportDir, HasSignatureDefKey, HasTagSet, MLReadable, MLWritable):
    """Scores a DataFrame with a SavedModel, without a TF cluster (see the module's doc).

    ``history``: what the estimator's ``train_fn`` returned on the primary node (None when
    built directly); saved and loaded with the model.
    """

    def __init__(self, tf_args=None):
        super().__init__()
        self.args = Namespace(tf_args)
        self.history = None
        self._setDefault(batch_size=100, signature_def_key="serving_default", tag_set="serve",
                         input_mapping={}, output_mapping={}, model_dir=None, export_dir=None)

    def _transform(self, dataset):
        from pyspark.sql.types import StructField, StructType
        export_dir = _driver_path(self.getExportDir())
        if not export_dir:
            raise ConfigError("TFModel needs setExportDir(path): the SavedModel to score with")
        specs = _signature(export_dir, self.getTagSet(), self.getSignatureDefKey())
        inputs = _fed_inputs(self.getInputMapping(), specs, self.getSignatureDefKey())
        missing = sorted(set(inputs) - set(dataset.columns))
        if missing:
            raise ConfigError(f"TFModel input_mapping names columns {missing} that the "
                              f"DataFrame does not have; it has {dataset.columns}")
        outputs = self.getOutputMapping() or {name: name for name in specs.outputs}
        columns = sorted((column, tensor) for tensor, column in outputs.items())
        schema = StructType(list(dataset.schema.fields) + [
            StructField(column, _spark_type(specs.outputs, tensor), True)
            for column, tensor in columns])
        score = functools.partial(
            _score, export_dir, self.getTagSet(), self.getSignatureDefKey(),
            inputs, columns, self.getBatchSize(), schema.json())
        return dataset.mapInArrow(score, schema)

    def write(self):
        return _ModelWriter(self)

    @classmethod
    def read(cls):
        return _StageReader(cls)

    @classmethod
    def _from_metadata(cls, metadata: dict) -> "TFModel":
        model = cls()
        model.history = metadata.get("tfos_history")
        return model


class _ModelWriter(DefaultParamsWriter):
    def saveImpl(self, path: str) -> None:
        DefaultParamsWriter.saveMetadata(self.instance, path, self.sparkSession,
                                         extraMetadata={"tfos_history": self.instance.history})


# -- the SavedModel ------------------------------------------------------------------------------
class _Signature:
    def __init__(self, function):
        self.function = function
        self.inputs = function.structured_input_signature[1]
        self.outputs = function.structured_outputs


@functools.lru_cache(maxsize=4)
def _signature(export_dir: str, tag_set: str, key: str) -> _Signature:
    """The signature ``key`` of the SavedModel, loaded once per process (a Python worker keeps
    it for the tasks it runs later)."""
    import tensorflow as tf
    _task_threads(tf)
    model = tf.saved_model.load(export_dir, tags=[t for t in tag_set.split(",") if t])
    if key not in model.signatures:
        raise ConfigError(f"the SavedModel at {export_dir} has no signature {key!r}; it has "
                          f"{sorted(model.signatures)}")
    signature = _Signature(model.signatures[key])
    signature.model = model   # keeps the variables alive
    return signature


def _task_threads(tf) -> None:
    """In a Spark task, TensorFlow computes with the task's cores (``spark.task.cpus``), not
    every core of the host: the other task slots of the executor score at the same time.
    Once TensorFlow has started in this process the setting is fixed, and left as it is."""
    from pyspark import TaskContext
    task = TaskContext.get()
    if task is None:
        return
    try:
        tf.config.threading.set_intra_op_parallelism_threads(task.cpus())
        tf.config.threading.set_inter_op_parallelism_threads(task.cpus())
    except RuntimeError:
        pass   # TensorFlow already ran in this Python worker (another task or UDF)


def _fed_inputs(mapping: dict, specs: _Signature, key: str) -> dict:
    """Column -> signature input for every input of the signature. Without a mapping, each
    input reads the column of its own name; entries for tensors the signature does not take
    (the labels an estimator trained with) are left out."""
    mapping = mapping or {name: name for name in specs.inputs}
    fed = {column: tensor for column, tensor in mapping.items() if tensor in specs.inputs}
    if set(fed.values()) != set(specs.inputs):
        raise ConfigError(f"TFModel input_mapping feeds {sorted(mapping.values())} but the "
                          f"signature {key!r} takes {sorted(specs.inputs)}: map a column to "
                          f"each of {sorted(set(specs.inputs) - set(fed.values()))}")
    return fed


def _spark_type(outputs: dict, tensor: str):
    from pyspark.sql.types import (
        ArrayType,
        BooleanType,
        DoubleType,
        FloatType,
        LongType,
    )
    if tensor not in outputs:
        raise ConfigError(f"output_mapping names {tensor!r}, which the signature does not "
                          f"output; it outputs {sorted(outputs)}")
    spec = outputs[tensor]
    base = {"float32": FloatType(), "float64": DoubleType(), "bool": BooleanType()}.get(
        spec.dtype.name, LongType() if spec.dtype.is_integer else DoubleType())
    shape = spec.shape.as_list()
    return base if len(shape) <= 1 or shape[1:] == [1] else ArrayType(base)


def _score(export_dir, tag_set, key, inputs, outputs, batch_size, schema_json, batches):
    """``mapInArrow``: the input batches with the model's outputs appended."""
    import json

    import pyarrow as pa
    from pyspark.sql.pandas.types import to_arrow_type
    from pyspark.sql.types import StructType

    from tfos.core.feed_rows import arrow_to_columns
    schema = StructType.fromJson(json.loads(schema_json))
    signature = _signature(export_dir, tag_set, key)
    for batch in batches:
        for start in range(0, batch.num_rows, batch_size):
            piece = batch.slice(start, batch_size)
            columns = arrow_to_columns(piece.select(list(inputs)), -1, start)
            results = _run(signature, {inputs[c]: columns[c] for c in inputs})
            for column, tensor in outputs:
                arrow_type = to_arrow_type(schema[column].dataType)
                piece = piece.append_column(column, _arrow_column(pa, results[tensor],
                                                                  arrow_type))
            yield piece


def _arrow_column(pa, values, arrow_type):
    """One output tensor of ``rows`` rows as an Arrow column, straight from its buffer: a scalar
    per row for shapes ``(rows,)`` and ``(rows, 1)``, else each row's values, flattened."""
    import numpy as np
    rows = len(values)
    if isinstance(arrow_type, pa.ListType):
        flat = values.reshape(rows, -1)
        offsets = np.arange(rows + 1, dtype=np.int32) * flat.shape[1]
        items = flat.ravel().astype(arrow_type.value_type.to_pandas_dtype(), copy=False)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(items))
    return pa.array(values.reshape(rows).astype(arrow_type.to_pandas_dtype(), copy=False))


def _run(signature: _Signature, feeds: dict) -> dict:
    import tensorflow as tf
    args = {}
    for name, spec in signature.inputs.items():
        value = tf.convert_to_tensor(feeds[name])
        value = tf.cast(value, spec.dtype)
        shape = spec.shape.as_list()
        if len(shape) > 1 and None not in shape[1:]:
            value = tf.reshape(value, [-1, *shape[1:]])
        args[name] = value
    return {name: tensor.numpy() for name, tensor in signature.function(**args).items()}
