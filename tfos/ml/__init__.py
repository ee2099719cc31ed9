"""Spark ML and data formats: runs on the driver and, through its Spark jobs, in executor tasks.

``dfutil``: TFRecord files <-> DataFrames (TensorFlowOnSpark's ``tfos.dfutil``), with no
TensorFlow in the tasks. ``pipeline``: Spark ML stages (``TFModel`` scores with a SavedModel in
the Python workers, so it loads TensorFlow there, lazily).

May import: ``tfos.driver`` (to run clusters), ``tfos.executor``, ``tfos.core``, pyspark,
pyarrow, TensorFlow (``pipeline`` only, inside functions). Never ``tfos.node``.
"""
