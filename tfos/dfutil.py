"""TensorFlowOnSpark's ``dfutil``: TFRecords <-> DataFrames (driver); see ``tfos.ml.dfutil``."""
from tfos.ml.dfutil import (
                            INFER_RECORDS,
                            SCHEMA_FILE,
                            fromTFExample,
                            infer_schema,
                            isLoadedDF,
                            loadTFRecords,
                            saveAsTFRecords,
                            toTFExample,
)

__all__ = ["saveAsTFRecords", "loadTFRecords", "isLoadedDF", "toTFExample", "fromTFExample",
           "infer_schema", "SCHEMA_FILE", "INFER_RECORDS"]
