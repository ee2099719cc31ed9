"""The TF node: runs in the TensorFlow process a node task starts (``python -m tfos.node.main``).

The entry point (``main``), the ``ctx`` given to ``map_fun`` (``context``), TensorFlowOnSpark's
``TFNode`` helpers (``api``), and the feed endpoint with its buffers and ``DataFeed``
(``feed_server``, ``feed_queue``, ``data_feed``).

May import: ``tfos.core``, ``rdma`` and tensorflow (lazily, after ``TF_CONFIG`` is set). Never
pyspark, grpc, ``tfos.driver`` or ``tfos.executor``.
"""
