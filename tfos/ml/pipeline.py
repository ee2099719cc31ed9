"""Spark ML stages for TensorFlow models (driver; the scoring runs in Spark's Python workers).

TensorFlowOnSpark's ``pipeline`` names. ``TFModel.transform(df)`` needs no TF cluster: each
Python worker loads the SavedModel at ``export_dir`` once (kept for the worker's later tasks),
and every partition streams through it as Arrow batches (``mapInArrow``) of ``batch_size``
rows. Input columns (``input_mapping``: column -> signature input) are cast and reshaped to the
signature's inputs; outputs (``output_mapping``: signature output -> column) are put beside the
input columns, in row order, the last short batch included. An output of shape ``(rows,)`` or
``(rows, 1)`` becomes a scalar column, any other shape an array column.

``TFEstimator`` (training through a cluster) is still to come.
"""
from __future__ import annotations

import functools

from pyspark.ml import Model
from pyspark.ml.param import Param, Params, TypeConverters
from pyspark.ml.util import DefaultParamsReadable, DefaultParamsWritable

from tfos.core.errors import ConfigError


class HasBatchSize(Params):
    batch_size = Param(Params._dummy(), "batch_size", "rows per batch",
                       typeConverter=TypeConverters.toInt)

    def setBatchSize(self, value):  # noqa: N802 - Spark ML's accessor names
        return self._set(batch_size=value)

    def getBatchSize(self):  # noqa: N802
        return self.getOrDefault(self.batch_size)


class HasInputMapping(Params):
    input_mapping = Param(Params._dummy(), "input_mapping",
                          "input DataFrame column -> signature input tensor")

    def setInputMapping(self, value):  # noqa: N802
        return self._set(input_mapping=dict(value))

    def getInputMapping(self):  # noqa: N802
        return self.getOrDefault(self.input_mapping)


class HasOutputMapping(Params):
    output_mapping = Param(Params._dummy(), "output_mapping",
                           "signature output tensor -> output DataFrame column")

    def setOutputMapping(self, value):  # noqa: N802
        return self._set(output_mapping=dict(value))

    def getOutputMapping(self):  # noqa: N802
        return self.getOrDefault(self.output_mapping)


class HasExportDir(Params):
    export_dir = Param(Params._dummy(), "export_dir", "directory of the SavedModel",
                       typeConverter=TypeConverters.toString)

    def setExportDir(self, value):  # noqa: N802
        return self._set(export_dir=value)

    def getExportDir(self):  # noqa: N802
        return self.getOrDefault(self.export_dir)


class HasSignatureDefKey(Params):
    signature_def_key = Param(Params._dummy(), "signature_def_key",
                              "the SavedModel's signature to run",
                              typeConverter=TypeConverters.toString)

    def setSignatureDefKey(self, value):  # noqa: N802
        return self._set(signature_def_key=value)

    def getSignatureDefKey(self):  # noqa: N802
        return self.getOrDefault(self.signature_def_key)


class HasTagSet(Params):
    tag_set = Param(Params._dummy(), "tag_set", "comma-separated tags of the MetaGraph to load",
                    typeConverter=TypeConverters.toString)

    def setTagSet(self, value):  # noqa: N802
        return self._set(tag_set=value)

    def getTagSet(self):  # noqa: N802
        return self.getOrDefault(self.tag_set)


class TFModel(Model, HasBatchSize, HasInputMapping, HasOutputMapping, HasExportDir,
              HasSignatureDefKey, HasTagSet, DefaultParamsReadable, DefaultParamsWritable):
    """Scores a DataFrame with a SavedModel, without a TF cluster (see the module's doc)."""

    def __init__(self, tf_args=None):
        super().__init__()
        self.tf_args = tf_args
        self._setDefault(batch_size=100, signature_def_key="serving_default", tag_set="serve",
                         input_mapping={}, output_mapping={})

    def _transform(self, dataset):
        from pyspark.sql.types import StructField, StructType
        inputs, outputs = self.getInputMapping(), self.getOutputMapping()
        if not inputs or not outputs:
            raise ConfigError("TFModel needs setInputMapping({column: input tensor}) and "
                              "setOutputMapping({output tensor: column})")
        missing = sorted(set(inputs) - set(dataset.columns))
        if missing:
            raise ConfigError(f"TFModel input_mapping names columns {missing} that the "
                              f"DataFrame does not have; it has {dataset.columns}")
        specs = _signature(self.getExportDir(), self.getTagSet(), self.getSignatureDefKey())
        if set(inputs.values()) != set(specs.inputs):
            raise ConfigError(f"TFModel input_mapping feeds {sorted(inputs.values())} but the "
                              f"signature {self.getSignatureDefKey()!r} takes "
                              f"{sorted(specs.inputs)}")
        columns = sorted((column, tensor) for tensor, column in outputs.items())
        schema = StructType(list(dataset.schema.fields) + [
            StructField(column, _spark_type(specs.outputs, tensor), True)
            for column, tensor in columns])
        score = functools.partial(
            _score, self.getExportDir(), self.getTagSet(), self.getSignatureDefKey(),
            dict(inputs), columns, self.getBatchSize(), schema.json())
        return dataset.mapInArrow(score, schema)


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
    model = tf.saved_model.load(export_dir, tags=[t for t in tag_set.split(",") if t])
    if key not in model.signatures:
        raise ConfigError(f"the SavedModel at {export_dir} has no signature {key!r}; it has "
                          f"{sorted(model.signatures)}")
    signature = _Signature(model.signatures[key])
    signature.model = model   # keeps the variables alive
    return signature


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
                values = results[tensor]
                if values.ndim == 2 and values.shape[1] == 1:
                    values = values[:, 0]
                arrow_type = to_arrow_type(schema[column].dataType)
                piece = piece.append_column(column, pa.array(values.tolist(), arrow_type))
            yield piece


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
