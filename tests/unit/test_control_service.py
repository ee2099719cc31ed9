"""The driver's control plane over real gRPC on 127.0.0.1: ``ControlService``, ``ControlClient``
and the ``ClusterState`` they feed, including the waits the driver builds on it."""
from __future__ import annotations

import threading
import time
from concurrent import futures

import grpc
import pytest

from tfos import DriverUnreachable
from tfos.core import auth
from tfos.core import messages as m
from tfos.core.config import ClusterConfig
from tfos.core.errors import (
    ClusterFailed,
    NodeFailed,
    ReservationTimeout,
    ShutdownTimeout,
)
from tfos.core.messages import method_path
from tfos.core.runtime import python_version, tensorflow_version
from tfos.executor.control_client import ControlClient

HOST = "127.0.0.1"
CHIEF, WORKER = 0, 1


def register_msg(node_id: int, **overrides) -> m.Register:
    fields = dict(node_id=node_id, attempt=0, host=HOST, tf_port=41000 + node_id,
                  pid=5000 + node_id, python_version=python_version(),
                  tf_version=tensorflow_version())
    fields.update(overrides)
    return m.Register(**fields)


def raw_call(address: str, method: str, body: bytes, metadata=()) -> bytes:
    """Calls ``method`` with raw bytes, bypassing ControlClient (as a hostile peer would)."""
    with grpc.insecure_channel(address) as channel:
        return channel.unary_unary(method_path(method))(body, metadata=metadata, timeout=5)


def rpc_error(address: str, method: str, body: bytes, metadata=()) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        raw_call(address, method, body, metadata)
    return info.value


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the wire ----------------------------------------------------------------------------------

def test_register_is_accepted_and_recorded(control_chief_worker):
    plane = control_chief_worker
    reply = plane.client.register(register_msg(CHIEF))
    assert reply == m.RegisterReply(accepted=True)
    node = plane.state.nodes[CHIEF]
    assert plane.state.registered == {CHIEF}
    assert (node.host, node.tf_port, node.pid) == (HOST, 41000, 5000)
    assert node.state is m.NodeState.STARTING
    assert node.label == "chief:0@127.0.0.1"
    assert not plane.state.failures


def test_heartbeat_says_continue_then_stop_after_request_stop(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(WORKER))
    reply = plane.client.heartbeat(m.Heartbeat(WORKER, m.NodeState.RUNNING))
    assert reply == m.HeartbeatReply(m.Command.CONTINUE)
    assert plane.state.nodes[WORKER].state is m.NodeState.RUNNING
    plane.state.request_stop()
    assert plane.client.heartbeat(m.Heartbeat(WORKER, m.NodeState.RUNNING)).command \
        is m.Command.STOP


def test_log_lines_reach_the_log_stream_with_the_node_prefix(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    assert plane.client.logs(m.LogLines(CHIEF, ["epoch 1", "", "loss=0.5 ✓"])) == m.Ack(True)
    assert plane.log.getvalue() == ("[chief:0@127.0.0.1] epoch 1\n"
                                    "[chief:0@127.0.0.1] \n"
                                    "[chief:0@127.0.0.1] loss=0.5 ✓\n")
    assert list(plane.state.nodes[CHIEF].tail) == ["epoch 1", "", "loss=0.5 ✓"]


def test_log_lines_of_an_unknown_node_are_refused(control_chief_worker):
    plane = control_chief_worker
    assert plane.client.logs(m.LogLines(9, ["who?"])) == m.Ack(False)
    assert plane.log.getvalue() == ""


def test_service_url_is_recorded(control_chief_worker):
    plane = control_chief_worker
    plane.client.service_url(m.ServiceUrl(CHIEF, "tensorboard", "http://127.0.0.1:6006/"))
    assert plane.state.services == {"tensorboard": "http://127.0.0.1:6006/"}


def test_a_client_with_the_wrong_secret_is_refused_and_registers_nothing(control_chief_worker):
    plane = control_chief_worker
    with ControlClient(plane.address, auth.new_secret(), timeout=5) as intruder:
        with pytest.raises(DriverUnreachable) as info:
            intruder.register(register_msg(CHIEF))
    assert "UNAUTHENTICATED" in str(info.value)
    assert plane.address in str(info.value)
    assert plane.state.registered == set()
    assert plane.state.nodes[CHIEF].host == "?"
    assert plane.service.rejected == 1


@pytest.mark.parametrize("garbage", [
    b"", b"\xff\xfe", b"not json", b"[]", b'{"v":1,"type":"Heartbeat","body":{}}',
    b'{"v":1,"type":"Register","body":{"node_id":"0"}}',
    m.encode(m.Heartbeat(0, m.NodeState.RUNNING)),
])
def test_signed_garbage_gets_invalid_argument_and_the_service_keeps_serving(
        control_chief_worker, garbage):
    plane = control_chief_worker
    path = method_path("Register")
    error = rpc_error(plane.address, "Register", garbage, auth.sign(plane.secret, path, garbage))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert plane.state.registered == set()
    # Only a holder of the secret can sign: an unreadable signed message means the driver and an
    # executor run different tfos code, which fails the cluster at once with that diagnosis.
    (failure,) = plane.state.failures
    assert "different tfos versions" in failure.reason
    # The service keeps serving: it now tells every node to stop.
    reply = plane.client.heartbeat(m.Heartbeat(CHIEF, m.NodeState.RUNNING))
    assert reply.command is m.Command.STOP


def test_unsigned_requests_get_unauthenticated(control_chief_worker):
    plane = control_chief_worker
    body = m.encode(register_msg(CHIEF))
    error = rpc_error(plane.address, "Register", body)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "not signed" in error.details()
    # A signature made for another method does not carry over.
    metadata = auth.sign(plane.secret, method_path("Heartbeat"), body)
    assert rpc_error(plane.address, "Register", body, metadata).code() \
        is grpc.StatusCode.UNAUTHENTICATED
    assert plane.state.registered == set()


def test_a_replayed_request_is_refused(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    body = m.encode(m.Heartbeat(CHIEF, m.NodeState.RUNNING))
    metadata = auth.sign(plane.secret, method_path("Heartbeat"), body)
    first = m.decode(raw_call(plane.address, "Heartbeat", body, metadata), m.HeartbeatReply)
    assert first.command is m.Command.CONTINUE
    error = rpc_error(plane.address, "Heartbeat", body, metadata)
    assert error.code() is grpc.StatusCode.UNAUTHENTICATED
    assert "replayed" in error.details()


def test_after_hostile_traffic_the_service_still_serves(control_chief_worker):
    plane = control_chief_worker
    body = m.encode(register_msg(CHIEF))
    rpc_error(plane.address, "Register", body)
    rpc_error(plane.address, "Register", b"{", auth.sign(auth.new_secret(),
                                                          method_path("Register"), b"{"))
    metadata = auth.sign(plane.secret, method_path("Register"), body)
    rpc_error(plane.address, "Register", body + b" ", metadata)
    assert plane.service.rejected == 3
    assert plane.state.failures == []
    assert plane.state.registered == set()
    assert plane.client.register(register_msg(CHIEF)).accepted
    assert plane.client.register(register_msg(WORKER)).accepted
    assert plane.state.registered == {CHIEF, WORKER}


def test_an_unknown_method_is_unimplemented(control_chief_worker):
    plane = control_chief_worker
    with grpc.insecure_channel(plane.address) as channel:
        with pytest.raises(grpc.RpcError) as info:
            channel.unary_unary("/tfos.Control/Shutdown")(b"", timeout=5)
    assert info.value.code() is grpc.StatusCode.UNIMPLEMENTED


def test_an_oversized_request_is_refused_by_the_transport(control_chief_worker):
    plane = control_chief_worker
    with pytest.raises(DriverUnreachable, match="RESOURCE_EXHAUSTED"):
        plane.client.logs(m.LogLines(CHIEF, ["x" * (m.MAX_MESSAGE_BYTES + 10)]))
    assert plane.log.getvalue() == ""


def test_an_unreachable_driver_raises_driver_unreachable_with_advice():
    from tfos.executor.process import reserved_port
    with reserved_port(HOST) as port:  # bound, never listening: connection refused
        with ControlClient(f"{HOST}:{port}", auth.new_secret(), timeout=1) as client:
            with pytest.raises(DriverUnreachable) as info:
                client.heartbeat(m.Heartbeat(0, m.NodeState.RUNNING))
    assert "UNAVAILABLE" in str(info.value) or "DEADLINE_EXCEEDED" in str(info.value)
    assert "spark.driver.host" in str(info.value)


# -- registration rules -------------------------------------------------------------------------

def test_a_tf_version_mismatch_is_refused_and_recorded_as_a_failure(control_chief_worker):
    plane = control_chief_worker
    reply = plane.client.register(register_msg(WORKER, tf_version="1.15.5"))
    assert not reply.accepted
    assert "TensorFlow 1.15.5" in reply.reason
    assert f"TensorFlow {tensorflow_version()}" in reply.reason
    assert plane.state.registered == set()
    (failure,) = plane.state.failures
    assert isinstance(failure, NodeFailed)
    assert failure.node == "worker:0@127.0.0.1"
    assert "1.15.5" in failure.reason and tensorflow_version() in failure.reason
    assert plane.state.stop_requested


def test_a_python_version_mismatch_is_refused(control_chief_worker):
    plane = control_chief_worker
    reply = plane.client.register(register_msg(CHIEF, python_version="2.7"))
    assert not reply.accepted
    assert "Python 2.7" in reply.reason and f"Python {python_version()}" in reply.reason


def test_a_second_registration_of_the_same_node_is_refused(control_chief_worker):
    plane = control_chief_worker
    assert plane.client.register(register_msg(CHIEF)).accepted
    reply = plane.client.register(register_msg(CHIEF, pid=9999))
    assert not reply.accepted
    assert "re-ran the node task" in reply.reason
    assert len(plane.state.failures) == 1
    assert plane.state.stop_requested


def test_a_retried_task_attempt_is_refused(control_chief_worker):
    plane = control_chief_worker
    reply = plane.client.register(register_msg(WORKER, attempt=1))
    assert not reply.accepted and "barrier stage retry" in reply.reason
    assert plane.state.registered == set()


def test_an_unknown_node_id_is_refused_without_failing_the_cluster(control_chief_worker):
    plane = control_chief_worker
    reply = plane.client.register(register_msg(5))
    assert not reply.accepted and "node id 5 is not part of this cluster" in reply.reason
    assert not plane.state.failures


def test_registration_after_a_stop_is_refused(control_chief_worker):
    plane = control_chief_worker
    plane.state.request_stop()
    reply = plane.client.register(register_msg(CHIEF))
    assert not reply.accepted and "already stopping" in reply.reason


# -- node status ------------------------------------------------------------------------------

def test_exit_code_1_records_a_node_failure_with_the_log_tail(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(WORKER))
    tail = ["Traceback (most recent call last):", '  File "train.py", line 3', "ValueError: bad"]
    status = m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=1, log_tail=tail)
    assert plane.client.status(status).ok
    (failure,) = plane.state.failures
    assert (failure.node, failure.host, failure.exit_code) == ("worker:0@127.0.0.1", HOST, 1)
    assert failure.log_tail == tuple(tail)
    assert "exited with code 1" in failure.reason
    assert "ValueError: bad" in str(failure)
    assert plane.state.stop_requested
    assert plane.state.nodes[WORKER].exit_code == 1


def test_a_failure_without_a_tail_reports_the_forwarded_lines(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(WORKER))
    plane.client.logs(m.LogLines(WORKER, ["last words"]))
    plane.client.status(m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=3))
    assert plane.state.failures[0].log_tail == ("last words",)


def test_killed_on_the_drivers_order_is_not_a_failure(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    plane.client.register(register_msg(WORKER))
    plane.state.request_stop()
    for node_id, code in ((CHIEF, -9), (WORKER, -15)):
        plane.client.status(m.NodeStatus(node_id, m.NodeState.EXITED, exit_code=code,
                                         reason="stopped by the driver", stopped=True))
    assert not plane.state.failures
    assert plane.state.nodes[CHIEF].exit_code == -9
    plane.state.wait_finished(timeout=1)


def test_killed_without_a_stop_is_a_failure_naming_the_signal(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=-9))
    (failure,) = plane.state.failures
    assert "killed by SIGKILL" in failure.reason and failure.exit_code == -9


def test_exit_status_is_final(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=0))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.RUNNING))
    plane.client.heartbeat(m.Heartbeat(CHIEF, m.NodeState.RUNNING))
    assert plane.state.nodes[CHIEF].state is m.NodeState.EXITED
    assert not plane.state.failures


def test_status_of_an_unregistered_node_is_ignored(control_chief_worker):
    plane = control_chief_worker
    status = m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=1)
    assert plane.client.status(status) == m.Ack(False)
    assert not plane.state.failures


# -- waits ------------------------------------------------------------------------------------

def test_wait_registered_returns_once_every_node_registered(control_chief_worker):
    plane = control_chief_worker
    with futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(plane.state.wait_registered, 10)
        plane.client.register(register_msg(WORKER))
        assert not waiting.done()
        plane.client.register(register_msg(CHIEF))
        waiting.result(timeout=5)


def test_wait_registered_times_out_naming_the_missing_roles(control_plane):
    plane = control_plane(ClusterConfig(num_executors=4, num_ps=1, master_node="chief"))
    plane.client.register(register_msg(0))
    plane.client.register(register_msg(2))
    with pytest.raises(ReservationTimeout) as info:
        plane.state.wait_registered(timeout=0.3)
    message = str(info.value)
    assert "2 of 4 nodes never started (chief:0, worker:1)" in message
    assert "reservation_timeout=0.3s" in message


def test_wait_registered_stops_waiting_when_the_job_ends(control_chief_worker):
    plane = control_chief_worker
    with futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(plane.state.wait_registered, 30)
        plane.state.end_job(None)
        with pytest.raises(ReservationTimeout, match="Spark node job ended"):
            waiting.result(timeout=5)


def test_wait_registered_raises_cluster_failed_on_a_refused_node(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF, tf_version="0.1"))
    with pytest.raises(ClusterFailed, match="while starting"):
        plane.state.wait_registered(timeout=5)


def test_wait_finished_raises_cluster_failed_when_a_node_fails(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    plane.client.register(register_msg(WORKER))
    with futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(plane.state.wait_finished, 30)
        plane.client.status(m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=2,
                                         log_tail=["boom"]))
        with pytest.raises(ClusterFailed) as info:
            waiting.result(timeout=5)
    assert "worker:0@127.0.0.1" in str(info.value)
    assert [f.node for f in info.value.failures] == ["worker:0@127.0.0.1"]


def test_wait_finished_returns_when_nodes_exited_or_only_serve(control_plane):
    plane = control_plane(ClusterConfig(num_executors=2, num_ps=1))
    plane.client.register(register_msg(0))
    plane.client.register(register_msg(1))
    plane.client.status(m.NodeStatus(0, m.NodeState.SERVING))
    with futures.ThreadPoolExecutor(1) as pool:
        waiting = pool.submit(plane.state.wait_finished, 30)
        plane.client.status(m.NodeStatus(1, m.NodeState.RUNNING))
        assert not waiting.done()
        plane.client.status(m.NodeStatus(1, m.NodeState.EXITED, exit_code=0))
        waiting.result(timeout=5)


def test_wait_finished_times_out_naming_the_running_nodes(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(CHIEF))
    plane.client.register(register_msg(WORKER))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=0))
    with pytest.raises(ShutdownTimeout, match=r"nodes worker:0@127.0.0.1 were still running"):
        plane.state.wait_finished(timeout=0.2)


def test_check_liveness_declares_a_silent_node_lost(control_plane):
    clock = FakeClock()
    failed = threading.Event()
    plane = control_plane(ClusterConfig(num_executors=2, master_node="chief",
                                        heartbeat_timeout=20.0),
                          clock=clock, on_failure=failed.set)
    plane.client.register(register_msg(CHIEF))
    plane.client.register(register_msg(WORKER))
    plane.client.logs(m.LogLines(WORKER, ["step 1"]))
    clock.now += 15
    plane.client.heartbeat(m.Heartbeat(CHIEF, m.NodeState.RUNNING))
    plane.state.check_liveness()
    assert not plane.state.failures
    clock.now += 10  # worker silent for 25 s, chief for 10 s
    plane.state.check_liveness()
    (failure,) = plane.state.failures
    assert failure.node == "worker:0@127.0.0.1"
    assert "sent nothing for 25s" in failure.reason
    assert failure.log_tail == ("step 1",)
    assert plane.state.nodes[WORKER].state is m.NodeState.EXITED
    assert plane.state.nodes[CHIEF].state is m.NodeState.RUNNING
    assert failed.is_set() and plane.state.stop_requested
    # Declared once, not on every later check.
    clock.now += 100
    plane.state.check_liveness()
    assert [f.node for f in plane.state.failures] == ["worker:0@127.0.0.1", "chief:0@127.0.0.1"]


def test_check_liveness_ignores_exited_and_unregistered_nodes(control_plane):
    clock = FakeClock()
    plane = control_plane(ClusterConfig(num_executors=2, master_node="chief"), clock=clock)
    plane.client.register(register_msg(CHIEF))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=0))
    clock.now += 1000
    plane.state.check_liveness()
    assert not plane.state.failures


# -- restarts (max_restarts) ---------------------------------------------------------------------

def test_a_failure_with_restarts_left_waits_for_the_restart_instead_of_raising(control_plane):
    calls = []
    plane = control_plane(ClusterConfig(num_executors=2, master_node="chief", max_restarts=1),
                          on_failure=lambda: calls.append("failure"))
    state = plane.state
    for node in (CHIEF, WORKER):
        plane.client.register(register_msg(node))
    plane.client.status(m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=-9))
    assert calls == ["failure"] and state.restarting and state.restarts_left == 0
    # The other node stops as ordered; shutdown's wait must not raise, nor return.
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=-15, stopped=True))
    waiter = threading.Thread(target=state.wait_finished, args=(30,))
    waiter.start()
    waiter.join(0.5)
    assert waiter.is_alive(), "wait_finished returned while the cluster was restarting"

    state.begin_restart()   # the driver relaunches: a fresh set of nodes registers
    assert state.restart_count == 1 and not state.failures and not state.stop_requested
    assert [f.node for f in state.past_failures[0]] == ["worker:0@127.0.0.1"]
    for node in (CHIEF, WORKER):
        assert plane.client.register(register_msg(node)).accepted
        plane.client.status(m.NodeStatus(node, m.NodeState.EXITED, exit_code=0))
    waiter.join(10)
    assert not waiter.is_alive()

    # With no restart left, the next failure is raised.
    state.begin_restart()
    plane.client.register(register_msg(WORKER))
    plane.client.status(m.NodeStatus(WORKER, m.NodeState.EXITED, exit_code=1))
    assert not state.restarting
    with pytest.raises(ClusterFailed, match="worker:0@127.0.0.1"):
        state.wait_finished(5)


def test_a_restart_that_cannot_happen_raises_its_reason(control_plane):
    plane = control_plane(ClusterConfig(num_executors=2, master_node="chief", max_restarts=3))
    plane.client.register(register_msg(CHIEF))
    plane.client.status(m.NodeStatus(CHIEF, m.NodeState.EXITED, exit_code=3))
    assert plane.state.restarting
    plane.state.give_up_restart(NodeFailed("cluster restart", "local", "slots never came back"))
    with pytest.raises(ClusterFailed, match="slots never came back"):
        plane.state.wait_finished(5)


def test_a_feed_task_learns_why_a_node_is_gone_once_the_driver_knows(control_chief_worker):
    plane = control_chief_worker
    for node_id in (CHIEF, WORKER):
        plane.client.register(register_msg(node_id))
    tail = ["Traceback (most recent call last):", "RuntimeError: boom in map_fun"]
    # The query waits for the node's fate, which arrives while it waits.
    threading.Timer(0.3, plane.client.status, [m.NodeStatus(
        WORKER, m.NodeState.EXITED, exit_code=1, log_tail=tail)]).start()
    fate = plane.client.node_fate(m.NodeFateQuery(WORKER, 5.0))
    assert fate.failure.startswith("node worker:0@127.0.0.1 on host 127.0.0.1 failed")
    assert "RuntimeError: boom in map_fun" in fate.failure
    # Another node's query gets the cluster's root cause; an unknown node nothing.
    assert "boom in map_fun" in plane.client.node_fate(m.NodeFateQuery(CHIEF, 5.0)).failure
    assert plane.client.node_fate(m.NodeFateQuery(7, 5.0)) == m.NodeFate("")


def test_fate_queries_are_bounded_and_few_wait_at_once(control_chief_worker):
    plane = control_chief_worker
    plane.client.register(register_msg(WORKER))
    started = time.monotonic()
    assert plane.state.node_fate(m.NodeFateQuery(WORKER, 0.3)) == m.NodeFate("")
    assert 0.25 < time.monotonic() - started < 3
    waiters = [threading.Thread(target=plane.state.node_fate,
                                args=(m.NodeFateQuery(WORKER, 2.0),)) for _ in range(3)]
    for waiter in waiters:
        waiter.start()
    time.sleep(0.2)  # let the three take the waiting places (a test's pause, not a poll)
    started = time.monotonic()
    assert plane.state.node_fate(m.NodeFateQuery(WORKER, 2.0)) == m.NodeFate("")
    assert time.monotonic() - started < 0.5    # no place left: answered at once
    for waiter in waiters:
        waiter.join(5)
