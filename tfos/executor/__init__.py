"""The executor task: runs in a Spark Python worker, inside a task of a tfos Spark job.

The node task (``node_task``: one barrier task per TF node, which starts and supervises the TF
process, ``process``, ``process_guard``, ``tensorboard``) with its client of the driver's
control service (``control_client``), and the feed tasks that stream partitions into the nodes
(``feed_task``).

May import: ``tfos.core``, ``rdma``, pyspark (task context only) and grpc's client. Never
``tfos.driver`` or ``tfos.node``, and never tensorflow: the TF process is started by name
(``python -m tfos.node.main``) and everything it needs travels in its launch record.
"""
