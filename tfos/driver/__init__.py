"""The driver: runs in the Spark application's driver process (a script, spark-submit, a notebook).

``TFCluster`` (``cluster``), the preflight checks (``preflight``), the control service the node
tasks report to and what it knows about them (``control_service``, ``cluster_state``), the
feeding of Spark data (``feeder``: epochs and markers; ``feed_jobs``: the Spark jobs that run
the feed tasks), the reading of Spark's errors (``spark_errors``) and the command-line helpers
(``cli``).

May import: ``tfos.core``, ``tfos.executor`` (the functions its Spark jobs run on executors),
``rdma``, pyspark and grpc. Nothing below imports this package.
"""
