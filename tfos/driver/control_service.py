"""The driver's control service: a gRPC server the node tasks report to (driver side).

One service per cluster, on an ephemeral port of the advertised address (every interface only
with ``bind_all``: ClusterConfig.bind_all_interfaces). Methods are unary;
requests and replies are the typed JSON messages of ``tfos.core.messages``. Every request must be
signed with the cluster's secret (``tfos.core.auth``); a bad or replayed signature is refused with
UNAUTHENTICATED and a malformed body with INVALID_ARGUMENT, and the service keeps serving.
"""
from __future__ import annotations

import logging
import threading
from concurrent import futures

import grpc

from tfos.core import auth
from tfos.core import messages as m
from tfos.core.errors import AuthenticationError, NodeFailed, ProtocolError
from tfos.core.runtime import listen_host
from tfos.driver.cluster_state import ClusterState

logger = logging.getLogger(__name__)

class ControlService:
    """Serves ``state`` on ``host`` (the address executors are told; with ``bind_all`` it
    listens on every interface); use as a context manager, or ``start``/``stop``."""

    def __init__(self, state: ClusterState, secret: bytes, host: str, max_workers: int = 8,
                 bind_all: bool = False):
        self.state = state
        self.host = host
        self._verifier = auth.Verifier(secret)
        # grpc's server.stop() leaves the pool it was given running: stop() shuts it down, else
        # its idle threads live on until a cyclic GC collects this service (a few per cluster).
        self._pool = futures.ThreadPoolExecutor(max_workers=max_workers,
                                                thread_name_prefix="tfos-control")
        self._server = grpc.server(
            self._pool,
            options=[("grpc.max_receive_message_length", m.MAX_MESSAGE_BYTES),
                     ("grpc.so_reuseport", 0)])
        handlers = {name: grpc.unary_unary_rpc_method_handler(
                        self._handler(name, req, getattr(state, attr)),
                        response_serializer=m.encode)
                    for name, (req, _reply, attr) in m.METHODS.items()}
        self._server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(m.SERVICE, handlers),))
        self.bind_host = listen_host(host, bind_all)
        bind = f"[{self.bind_host}]:0" if ":" in self.bind_host else f"{self.bind_host}:0"
        try:    # grpcio raises RuntimeError for an address it cannot bind (older ones return 0)
            self.port = self._server.add_insecure_port(bind)
        except RuntimeError:
            self.port = 0
        if self.port == 0:
            raise OSError(f"control service could not bind to {self.bind_host}: set driver_host "
                          "to an address of this machine that the executors can reach (or, "
                          "behind NAT, bind_all_interfaces=True)")
        self.rejected = 0
        self._rejected_lock = threading.Lock()

    def rekey(self, secret: bytes) -> None:
        """Serves only requests signed with ``secret`` from now on (a restarted cluster's nodes):
        whatever a previous run's node task may still send is refused."""
        self._verifier = auth.Verifier(secret)

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _handler(self, name: str, request_type: type, handle):
        path = m.method_path(name)

        def serve(body: bytes, context: grpc.ServicerContext):
            try:
                self._verifier.verify(path, body, context.invocation_metadata())
            except AuthenticationError as exc:
                self._reject(context, grpc.StatusCode.UNAUTHENTICATED, exc)
            try:
                request = m.decode(body, request_type)
            except ProtocolError as exc:
                # Signed with the cluster's secret, so it comes from one of our own node tasks:
                # the driver and that executor run different tfos code.
                self.state.fail(NodeFailed(
                    f"node task at {context.peer()}", context.peer(),
                    f"sent a {name} message the driver cannot read ({exc}): the driver and the "
                    "executors run different tfos versions; install the same one everywhere"))
                self._reject(context, grpc.StatusCode.INVALID_ARGUMENT, exc)
            return handle(request)

        return serve

    def _reject(self, context, code, exc) -> None:
        with self._rejected_lock:
            self.rejected += 1
        logger.warning("control service refused a request from %s: %s", context.peer(), exc)
        context.abort(code, str(exc))

    def start(self) -> "ControlService":
        self._server.start()
        logger.info("control service listening on %s", self.address)
        return self

    def stop(self, grace: float = 1.0) -> None:
        self._server.stop(grace).wait(grace + 1)
        self._pool.shutdown(wait=False)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
