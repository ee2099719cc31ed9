"""Client of the driver's control service (executor side: the node task).

Signs every request with the cluster's secret and decodes every reply into its typed message.
A driver that cannot be reached raises a ``DriverUnreachable`` naming the address and what to
check.
"""
from __future__ import annotations

import grpc

from tfos.core import auth
from tfos.core import messages as m
from tfos.core.errors import DriverUnreachable


class ControlClient:
    def __init__(self, address: str, secret: bytes, timeout: float = 10.0):
        self.address = address
        self._secret = secret
        self._timeout = timeout
        self._channel = grpc.insecure_channel(
            address, options=[("grpc.max_receive_message_length", m.MAX_MESSAGE_BYTES)])
        self._calls = {name: self._channel.unary_unary(m.method_path(name))
                       for name in m.METHODS}

    def call(self, name: str, message):
        _request, reply_type, _ = m.METHODS[name]
        body = m.encode(message)
        metadata = auth.sign(self._secret, m.method_path(name), body)
        try:
            reply = self._calls[name](body, metadata=metadata, timeout=self._timeout)
        except grpc.RpcError as exc:
            raise DriverUnreachable(
                f"{name} to the driver's control service at {self.address} failed: "
                f"{exc.code().name}: {exc.details()}. Check that executors can reach the driver "
                "(spark.driver.host, or TFCluster.run(driver_host=...)) and that the driver is "
                "still running") from None
        return m.decode(reply, reply_type)

    def register(self, msg: m.Register) -> m.RegisterReply:
        return self.call("Register", msg)

    def heartbeat(self, msg: m.Heartbeat) -> m.HeartbeatReply:
        return self.call("Heartbeat", msg)

    def logs(self, msg: m.LogLines) -> m.Ack:
        return self.call("Logs", msg)

    def status(self, msg: m.NodeStatus) -> m.Ack:
        return self.call("Status", msg)

    def service_url(self, msg: m.ServiceUrl) -> m.Ack:
        return self.call("ServiceUrl", msg)

    def feed_terminated(self, msg: m.FeedTerminated) -> m.Ack:
        return self.call("FeedTerminated", msg)

    def feed_data_rejected(self, msg: m.FeedDataRejected) -> m.Ack:
        return self.call("FeedDataRejected", msg)

    def node_fate(self, msg: m.NodeFateQuery) -> m.NodeFate:
        return self.call("NodeFate", msg)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
