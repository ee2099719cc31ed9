"""The TF node: runs in the TensorFlow process a node task starts (``python -m tfos.node.main``).

The entry point (``main``), the ``ctx`` given to ``map_fun`` (``context``), TensorFlowOnSpark's
``TFNode`` helpers (``api``), the feed endpoint with its buffers and ``DataFeed``
(``feed_server``, ``feed_queue``, ``data_feed``), the progress it reports to the driver
(``progress``), and its own reading of files on local disk, S3 and HDFS (``files``, public as
``tfos.files``, over ``filesystems`` and ``columnar``).

May import: ``tfos.core``, ``rdma``, tensorflow (lazily, after ``TF_CONFIG`` is set), fsspec,
s3fs and pyarrow. Never pyspark, grpc, ``tfos.driver`` or ``tfos.executor``.
"""
