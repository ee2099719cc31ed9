"""Command-line flags every tfos script shares, and a Spark session that just works (driver).

``argument_parser()`` gives ``--cluster_size --num_ps --rdma --tensorboard --log_dir --master
--input_mode``; scripts add their own flags to it. ``spark_session(args)`` returns the active
session (``spark-submit`` sets the master) or, with no master configured, an embedded
``local-cluster`` sized for ``--cluster_size``, with the settings tfos needs.
"""
from __future__ import annotations

import argparse
import os
import sys

from tfos.core.config import InputMode
from tfos.driver.preflight import BARRIER_FAIL_FAST


def argument_parser(description: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    group = parser.add_argument_group("tfos cluster")
    group.add_argument("--cluster_size", type=int, default=3,
                       help="number of TF nodes, one per executor (default 3)")
    group.add_argument("--num_ps", type=int, default=0, help="parameter servers among them")
    group.add_argument("--rdma", action="store_true",
                       help="exchange tensors over RDMA (needs an RDMA device on every host)")
    group.add_argument("--tensorboard", action="store_true",
                       help="run TensorBoard beside the chief and print its URL")
    group.add_argument("--log_dir", default=None, help="TensorBoard / summary directory")
    group.add_argument("--master", default=None,
                       help="Spark master URL when not started by spark-submit "
                            "(default: embedded local-cluster sized for --cluster_size)")
    group.add_argument("--input_mode", choices=("tensorflow", "spark"), default="tensorflow",
                       help="tensorflow: TF reads files itself; spark: Spark feeds the nodes")
    return parser


def input_mode(args) -> InputMode:
    return InputMode.SPARK if getattr(args, "input_mode", None) == "spark" \
        else InputMode.TENSORFLOW


def spark_session(args, app_name: str = "tfos", executor_memory_mb: int = 1024, conf=None):
    """The SparkSession for a script: spark-submit's, or an embedded local-cluster."""
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    from pyspark import SparkConf
    from pyspark.sql import SparkSession
    builder = SparkSession.builder.appName(app_name)
    master = getattr(args, "master", None)
    # Under spark-submit the JVM is already up (PYSPARK_GATEWAY_PORT) and holds the master.
    submitted = "PYSPARK_GATEWAY_PORT" in os.environ or SparkConf().contains("spark.master")
    if master is None and not submitted:
        cores = 2 if input_mode(args) == InputMode.SPARK else 1  # a slot for the feed tasks
        master = f"local-cluster[{args.cluster_size},{cores},{executor_memory_mb}]"
    if master is not None:
        builder = builder.master(master)
    # Spark's console progress bar redraws itself into the middle of the nodes' lines.
    quiet = {"spark.ui.showConsoleProgress": "false"}
    for key, value in {**BARRIER_FAIL_FAST, "spark.dynamicAllocation.enabled": "false",
                       **quiet, **(conf or {})}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()
