"""TensorFlowOnSpark's ``pipeline``: Spark ML stages (driver); see ``tfos.ml.pipeline``."""
from tfos.ml.pipeline import (
                              HasBatchSize,
                              HasExportDir,
                              HasInputMapping,
                              HasOutputMapping,
                              HasSignatureDefKey,
                              HasTagSet,
                              TFModel,
)

__all__ = ["TFModel", "HasBatchSize", "HasInputMapping", "HasOutputMapping", "HasExportDir",
           "HasSignatureDefKey", "HasTagSet"]
