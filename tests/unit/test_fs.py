"""Path qualification against the default filesystem (``tfos.core.paths.absolute_path``)."""
from __future__ import annotations

import getpass

import pytest

from tfos import TFNode
from tfos.core.paths import absolute_path
from tfos.node.context import NodeContext

WD = "/var/spark/work/app-1/0"


@pytest.mark.parametrize("path, default_fs, expected", [
    # A path with a scheme is left alone, whatever the default filesystem.
    ("hdfs://other:9000/data", "hdfs://nn:8020", "hdfs://other:9000/data"),
    ("gs://bucket/mnist", "file:///", "gs://bucket/mnist"),
    ("file:///tmp/x", "hdfs://nn:8020", "file:///tmp/x"),
    # Distributed default filesystem: absolute paths get its prefix, relative ones /user/<me>.
    ("/data/mnist", "hdfs://nn:8020", "hdfs://nn:8020/data/mnist"),
    ("/data/mnist", "hdfs://nn:8020/", "hdfs://nn:8020/data/mnist"),
    ("viewfs:///x", "hdfs://nn:8020", "viewfs:///x"),
    # Local filesystem: file:// and the node's working directory.
    ("/tmp/model", "file:///", "file:///tmp/model"),
    ("/tmp/a/../model/./x", "file:///", "file:///tmp/model/x"),
    ("model", "file:///", f"file://{WD}/model"),
    ("./model/", "file:///", f"file://{WD}/model"),
    ("../shared", "file:///", "file:///var/spark/work/app-1/shared"),
    ("model", "", f"file://{WD}/model"),
    ("/m", "file:/", "file:///m"),
])
def test_absolute_path(path, default_fs, expected):
    assert absolute_path(path, default_fs, WD) == expected


def test_a_relative_path_on_hdfs_lands_in_the_users_home():
    user = getpass.getuser()
    assert absolute_path("mnist/model", "hdfs://nn:8020", WD) == \
        f"hdfs://nn:8020/user/{user}/mnist/model"


def test_ctx_and_tfnode_helpers_qualify_against_the_nodes_filesystem(launch_record):
    ctx = NodeContext(launch_record(default_fs="hdfs://nn:8020", working_dir=WD))
    assert ctx.absolute_path("/data") == "hdfs://nn:8020/data"
    assert TFNode.hdfs_path(ctx, "/data") == "hdfs://nn:8020/data"
    assert TFNode.hdfs_path(ctx, "s3a://b/k") == "s3a://b/k"
