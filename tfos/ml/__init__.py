"""Spark ML and data formats: runs on the driver and, through its Spark jobs, in executor tasks.

``dfutil``: TFRecord files <-> DataFrames (TensorFlowOnSpark's ``tfos.dfutil``). The Spark ML
pipeline (``TFEstimator``/``TFModel``) joins here.

May import: ``tfos.driver`` (to run clusters), ``tfos.executor``, ``tfos.core``, pyspark,
pyarrow. Never ``tfos.node``, nor TensorFlow in what runs in executor tasks.
"""
