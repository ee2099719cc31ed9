"""The nodes' output on the driver (tfos.driver.console): noise left off the stream, every line
in the node's log file."""
import io
import itertools

from tfos.driver.console import NodeOutput, default_log_dir, is_tf_noise

# Printed by every TF 2.21 process on this machine kind at import (copied from a node's output).
STARTUP = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796006005.086578   24945 port.cc:153] oneDNN custom operations are on. You "
    "may see slightly different numerical results due to floating-point round-off errors from "
    "different computation orders. To turn them off, set the environment variable "
    "`TF_ENABLE_ONEDNN_OPTS=0`.",
    "I0000 00:00:1796006005.086873   24945 cudart_stub.cc:31] Could not find cuda drivers on "
    "your machine, GPU will not be used.",
    "I0000 00:00:1796006005.454927   24485 cpu_feature_guard.cc:227] This TensorFlow binary is "
    "optimized to use available CPU instructions in performance-critical operations.",
    "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other "
    "operations, rebuild TensorFlow with the appropriate compiler flags.",
    "E0000 00:00:1796006009.100158   24945 cuda_platform.cc:52] failed call to cuInit: "
    "INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "W0000 00:00:1796006011.246945   24945 dataset.cc:997] Input of GeneratorDatasetOp::Dataset "
    "will not be optimized because the dataset does not implement the AsGraphDefInternal() "
    "method needed to apply optimizations.",
    # A multi-worker cluster's rendezvous (MultiWorkerMirroredStrategy, at start).
    "I0000 00:00:1796007193.025710    7995 coordination_service.cc:221] Initializing "
    "CoordinationService",
    "I0000 00:00:1796007193.028925    7995 grpc_server_lib.cc:467] Started server with target: "
    "grpc://localhost:33325",
    "I0000 00:00:1796007193.070532    8016 coordination_service.h:529] /job:chief/replica:0/"
    "task:0 has connected to coordination service. Incarnation: 17438053458897981428",
    "I0000 00:00:1796007193.070593    8016 coordination_service.cc:502] Waiting for 1/2 tasks "
    "to connect.",
    "I0000 00:00:1796007193.070605    8016 coordination_service.cc:505] Example stragglers:",
    "/job:worker/replica:0/task:0",
    "I0000 00:00:1796007193.070878    7995 coordination_service_agent.cc:245] Coordination "
    "agent has successfully connected.",
    "I0000 00:00:1796007193.076818    8015 coordination_service.cc:1472] Barrier(WaitForAllTasks"
    "::3913366059136248162::0) has passed with status: OK",
    "I0000 00:00:1796007193.255418    7994 generator_dataset_op.cc:213] Memory patch applied: "
    "M_TRIM_THRESHOLD=128 kb was set.",
    "I0000 00:00:1796007193.635345    8260 tf_record_dataset_op.cc:390] TFRecordDataset "
    "`buffer_size` is unspecified, default to 262144",
    # Parameter servers and TF1 between-graph replication (copied from their nodes' logs).
    "I0000 00:00:1796018107.843897   30028 eager_service_impl.cc:349] Creating sync eager "
    "service context with rendezvous_id on host vm /job:ps/replica:0/task:0",
    "I0000 00:00:1796015218.1 19725 master.cc:243] Scanning workers for devices: 2 total workers",
    "I0000 00:00:1796015218.2 19725 mlir_graph_optimization_pass.cc:437] MLIR V1 optimization "
    "pass is not enabled",
    "I0000 00:00:1796015223.449577   19725 kernel_and_device.cc:101] Ignoring error status when "
    "releasing multi-device function handle UNIMPLEMENTED: Releasing a multi-device component "
    "handle on a remote device is not yet implemented.",
    "W0000 00:00:1796015223.5 19725 local_rendezvous.cc:412] Local rendezvous is aborting with "
    "status: ABORTED: Cleanup 82280651573471124 [type.googleapis.com/tensorflow.DerivedStatus='']",
]
# ParameterServerStrategy's ps and workers dump their session options at start.
SESSION_DUMP = [
    "I0000 00:00:1796015218.110219   19725 eager_service_impl.cc:355] SessionOptions: "
    "goo.gle/debugonly    ",
    "device_count {", '  key: "CPU"', "  value: 1", "}", "allow_soft_placement: true",
    "experimental {", '  collective_group_leader: "/job:worker/replica:0/task:0"', "}", "",
]
USER = [
    "mnist: MultiWorkerMirroredStrategy on chief:0, 4 tfrecord files, 15 steps per epoch",
    "Epoch 1/3",
    "15/15 - 2s - loss: 1.9779 - accuracy: 0.4194 - 2s/epoch - 141ms/step",
    # TF's own warnings that are not start-up noise stay visible.
    "W0000 00:00:1796006011.3 24945 collective_ops.cc:12] Collective op timed out",
    "WARNING:tensorflow:Your input ran out of data; interrupting training.",
    "  port.cc:153] oneDNN custom operations are on (quoted inside the user's own line)",
    "test accuracy: 0.9499",
    # The rendezvous's errors are not noise.
    "E0000 00:00:1796007193.1 8016 coordination_service.cc:900] Task /job:worker/replica:0/"
    "task:1 heartbeat timeout",
    "/job:worker/replica:0/task:1 is the one I mean",
]


def test_tensorflow_startup_noise_is_recognised_and_nothing_else():
    assert all(is_tf_noise(line) for line in STARTUP)
    assert not any(is_tf_noise(line) for line in USER)


def test_the_stream_shows_the_users_lines_and_the_log_file_keeps_every_line(tmp_path):
    stream = io.StringIO()
    output = NodeOutput(stream, str(tmp_path / "logs"))
    mixed = [line for pair in itertools.zip_longest(STARTUP, USER) for line in pair if line]
    output.write("chief:0@127.0.0.1", "chief-0.log", mixed[:5])
    output.write("chief:0@127.0.0.1", "chief-0.log", mixed[5:])
    output.write("worker:0@127.0.0.1", "worker-0.log", ["worker line"])
    assert stream.getvalue().splitlines() == \
        [f"[chief:0@127.0.0.1] {line}" for line in USER] + ["[worker:0@127.0.0.1] worker line"]
    assert (tmp_path / "logs" / "chief-0.log").read_text().splitlines() == mixed
    assert (tmp_path / "logs" / "worker-0.log").read_text() == "worker line\n"
    assert output.hidden == len(STARTUP)
    output.close()
    output.write("chief:0@127.0.0.1", "chief-0.log", ["after close"])   # dropped, no error
    assert "after close" not in (tmp_path / "logs" / "chief-0.log").read_text()


def test_a_session_options_dump_is_left_off_whole_even_across_batches():
    stream = io.StringIO()
    output = NodeOutput(stream, None)
    output.write("ps:0@h", "ps-0.log", ["before"] + SESSION_DUMP[:4])
    output.write("worker:0@h", "worker-0.log", ["another node's line", "}"])
    output.write("ps:0@h", "ps-0.log", SESSION_DUMP[4:] + ["after", "}"])
    assert stream.getvalue().splitlines() == [
        "[ps:0@h] before", "[worker:0@h] another node's line", "[worker:0@h] }",
        "[ps:0@h] after", "[ps:0@h] }"]


def test_show_tf_noise_shows_everything_and_an_unwritable_dir_only_costs_the_files(tmp_path):
    stream = io.StringIO()
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    output = NodeOutput(stream, str(blocked / "logs"), show_tf_noise=True)
    output.write("ps:0@h", "ps-0.log", STARTUP)
    assert len(stream.getvalue().splitlines()) == len(STARTUP) and output.hidden == 0
    assert output.log_dir is None


def test_default_log_dirs_are_distinct_per_cluster():
    assert default_log_dir("aaaa1111") != default_log_dir("bbbb2222")
    assert default_log_dir("aaaa1111").endswith("-aaaa1111")


def test_long_waits_say_what_they_wait_for(monkeypatch):
    import pytest

    from tfos.core.config import ClusterConfig
    from tfos.core.errors import ReservationTimeout, ShutdownTimeout
    from tfos.driver import cluster_state
    monkeypatch.setattr(cluster_state, "NOTE_AFTER", 0.1)
    monkeypatch.setattr(cluster_state, "NOTE_EVERY", 0.2)
    stream = io.StringIO()
    state = cluster_state.ClusterState(ClusterConfig(num_executors=2, master_node="chief"),
                                       driver_versions=("3", "2"), log_stream=stream)
    with pytest.raises(ReservationTimeout):
        state.wait_registered(0.5)
    notes = stream.getvalue().splitlines()
    assert 2 <= len(notes) <= 3, notes        # after 0.1 s, then every 0.2 s until 0.5 s
    assert notes[0].startswith("tfos: waiting for 2 of 2 nodes to start (chief:0, worker:0): ")
    assert notes[0].endswith("s so far, at most 0 s (reservation_timeout)")
    stream.truncate(0)
    stream.seek(0)
    with pytest.raises(ShutdownTimeout):
        state.wait_finished(0.3)
    assert stream.getvalue().startswith("tfos: waiting for chief:0@?, worker:0@? to return "
                                        "from map_fun")
