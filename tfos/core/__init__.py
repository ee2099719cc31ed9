"""The pure core of tfos: imported by every process (driver, executor task, TF node).

What every side agrees on: the configuration (``config``), roles and ``TF_CONFIG``
(``topology``), the three conversations between processes as typed, versioned messages
(``messages``: driver <-> node task control plane; ``feed_messages`` and ``feed_codec``: feeder
and driver <-> TF node data plane; ``launch``: node task <-> its TF process), request signatures
(``auth``), the feed's split, columns and sizes (``feed_plan``, ``feed_rows``), paths
(``paths``), TFRecord files and ``tf.train.Example`` (``tfrecord``), and the errors (``errors``).

May import: the standard library, numpy, protobuf and google-crc32c (``tfrecord``), and
``rdma``'s public API. Never pyspark, grpc,
tensorflow, or another ``tfos`` package: everything else imports this one.
"""
