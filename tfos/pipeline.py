"""TensorFlowOnSpark's ``pipeline``: Spark ML stages (driver); see ``tfos.ml.pipeline``."""
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
from tfos.ml.pipeline import VALIDATION_FEED, TFEstimator, TFModel

__all__ = ["TFEstimator", "TFModel", "Namespace", "TFParams", "VALIDATION_FEED",
           "HasBatchSize", "HasClusterSize", "HasDriverPSNodes", "HasEpochs", "HasExportDir",
           "HasGraceSecs", "HasInputMapping", "HasInputMode", "HasMasterNode", "HasModelDir",
           "HasNumPS", "HasOutputMapping", "HasProtocol", "HasReaders", "HasSignatureDefKey",
           "HasSteps", "HasTagSet", "HasTensorboard", "HasTFRecordDir"]
