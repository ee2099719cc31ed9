"""TensorFlowOnSpark's names for node code: TFNode, ctx.mgr, ctx.tmp_socket, tfos.compat."""
from __future__ import annotations

import os
import socket
import types

import pytest

import tfos
from tfos.executor import process
from tfos.node.context import NodeContext

HOST = "127.0.0.1"


def test_tfcluster_carries_tfos_input_modes_as_tensorflowonspark_did():
    assert tfos.TFCluster.InputMode.SPARK == tfos.InputMode.SPARK == 1
    assert tfos.TFCluster.InputMode.TENSORFLOW == 0


def test_hdfs_path_needs_only_the_default_fs_and_working_dir():
    ctx = types.SimpleNamespace(defaultFS="hdfs://nn:8020", working_dir="/w")
    assert tfos.TFNode.hdfs_path(ctx, "s3a://b/k") == "s3a://b/k"
    assert tfos.TFNode.hdfs_path(ctx, "/data") == "hdfs://nn:8020/data"
    local = types.SimpleNamespace(defaultFS="file:///", working_dir="/w")
    assert tfos.TFNode.hdfs_path(local, "data/x") == "file:///w/data/x"


def test_release_port_false_holds_the_tf_port_until_release_port(launch_record, caplog):
    with process.reserved_port(HOST) as port:          # as the node task holds it
        ctx = NodeContext(launch_record(host=HOST, tf_port=port, hold_port=True))
        assert ctx.tmp_socket.getsockname() == (HOST, port)
        # TensorFlow's server (SO_REUSEADDR) can bind and listen while both hold the port...
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((HOST, port))
        server.listen()
        server.close()
        # ...and a process that does not share the reservation cannot.
        with socket.socket() as other, pytest.raises(OSError):
            other.bind((HOST, port))
        tfos.TFNode.release_port(ctx)
        assert ctx.tmp_socket is None
        ctx.release_port()
        assert "holds no port" in caplog.text
    assert NodeContext(launch_record(host=HOST, tf_port=port)).tmp_socket is None


def test_data_feed_from_ctx_mgr_is_the_nodes_feed(launch_record):
    ctx = NodeContext(launch_record())
    with pytest.raises(tfos.ConfigError, match="only the chief and workers"):
        tfos.TFNode.DataFeed(ctx.mgr, False)


def test_compat_exports_a_servable_model_only_from_the_chief(tmp_path, capsys):
    import numpy as np
    import tensorflow as tf
    model = tf.keras.Sequential([tf.keras.Input((2,), name="features"),
                                 tf.keras.layers.Dense(1)])
    model.layers[-1].set_weights([np.array([[3.14], [1.618]], np.float32),
                                  np.zeros(1, np.float32)])
    chief, worker = tmp_path / "chief", tmp_path / "worker"
    capsys.readouterr()
    tfos.compat.export_saved_model(model, str(chief), is_chief=True)
    tfos.compat.export_saved_model(model, str(worker), is_chief=False)
    assert not worker.exists()
    # One line from the chief instead of Keras's endpoint listing from every worker.
    assert capsys.readouterr().out.splitlines() == [
        f"tfos: SavedModel exported to {chief} (serving_default, inputs ['features'])"]
    serve = tf.saved_model.load(str(chief)).signatures["serving_default"]
    (out,) = serve(tf.constant([[1.0, 1.0]])).values()
    assert out.numpy()[0, 0] == pytest.approx(4.758, abs=1e-4)
    options = tf.data.Options()
    tfos.compat.disable_auto_shard(options)
    assert options.experimental_distribute.auto_shard_policy == \
        tf.data.experimental.AutoShardPolicy.OFF
    assert tfos.compat.is_gpu_available() == bool(tf.config.list_physical_devices("GPU"))
    assert not [p for p in os.listdir(tmp_path) if p not in ("chief",)]


def test_cluster_resolver_comes_from_the_context_not_tf_config(launch_record, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    spec = {"chief": ["a:1"], "worker": ["b:2", "c:3"]}
    ctx = NodeContext(launch_record(job_name="worker", task_index=1, node_id=2, num_workers=3,
                                    cluster_spec=spec))
    resolver = ctx.cluster_resolver()
    assert resolver.cluster_spec().as_dict() == spec
    assert (resolver.task_type, resolver.task_id, resolver.rpc_layer) == ("worker", 1, "grpc")
    assert resolver.master() == "grpc://c:3"
