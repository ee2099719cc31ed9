"""Mutual authentication of a new connection (both ends; run before any frame is read).

Both sides prove that they hold the cluster's secret without sending it, on fixed-size
records (so a peer cannot make us buffer more than 80 bytes before it is authenticated)::

    connector -> listener   HELLO  magic, version, nonce_c                  (48 bytes)
    listener  -> connector  HELLO  magic, version, nonce_l, mac_l          (80 bytes)
    connector -> listener   PROOF  mac_c                                   (32 bytes)
    listener  -> connector  VERDICT 1 (accepted) or 0 (refused)           (1 byte)

with ``mac_l = HMAC-SHA256(secret, "tfos-comm-1 listener" | nonce_c | nonce_l)`` and ``mac_c``
the same with "connector" and the nonces swapped. Fresh 32-byte nonces from ``secrets`` on
both sides stop replays; the role labels stop a peer from reflecting one side's proof back;
MACs are compared with ``hmac.compare_digest``. The whole exchange has one deadline. A failure
is AuthFailed on the side that detects it; the other side sees the refusal or the closed
connection and raises AuthFailed too.

This authenticates, it does not encrypt: as with Spark's own ``spark.authenticate`` without
``spark.network.crypto``, the data that follows is readable on the wire.
"""
from __future__ import annotations

import hashlib
import hmac
import secrets
import struct

from rdma._io import Channel, Deadline
from rdma.errors import AuthFailed, CommClosed, CommTimeout

MAGIC = b"TFOSAUTH"
VERSION = 1
NONCE_SIZE = 32
MAC_SIZE = 32
MIN_SECRET = 16
_HELLO_C = struct.Struct(f"<8sB7x{NONCE_SIZE}s")
_HELLO_L = struct.Struct(f"<8sB7x{NONCE_SIZE}s{MAC_SIZE}s")
_ACCEPTED, _REFUSED = b"\x01", b"\x00"


def check_secret(secret) -> bytes:
    if not isinstance(secret, (bytes, bytearray)):
        raise TypeError(f"the comm secret must be bytes, not {type(secret).__name__} "
                        "(use the cluster's secret, e.g. secrets.token_bytes(32))")
    if len(secret) < MIN_SECRET:
        raise ValueError(f"the comm secret has {len(secret)} bytes; use at least {MIN_SECRET} "
                         "random bytes (e.g. secrets.token_bytes(32))")
    return bytes(secret)


def _mac(secret: bytes, role: bytes, first: bytes, second: bytes) -> bytes:
    return hmac.new(secret, b"tfos-comm-1 " + role + b"|" + first + second,
                    hashlib.sha256).digest()


def _check_hello(magic: bytes, version: int, who: str) -> None:
    if magic != MAGIC:
        raise AuthFailed(f"{who} did not start with a tfos handshake (got {magic!r}): it is "
                         "not a tfos comm, or it speaks another protocol on this port")
    if version != VERSION:
        raise AuthFailed(f"{who} speaks handshake version {version}, this side {VERSION}: run "
                         "the same tfos version on both ends")


def connector_handshake(chan: Channel, secret: bytes, deadline: Deadline) -> None:
    """Run by the connecting side. AuthFailed if either side's proof fails; CommTimeout if the
    listener does not answer in time."""
    who = f"listener {chan.peer}"
    nonce_c = secrets.token_bytes(NONCE_SIZE)
    try:
        chan.send([_HELLO_C.pack(MAGIC, VERSION, nonce_c)], deadline, "handshake with")
        magic, version, nonce_l, mac_l = _HELLO_L.unpack(
            chan.recv_exact(_HELLO_L.size, deadline, "handshake with"))
        _check_hello(magic, version, who)
        if not hmac.compare_digest(mac_l, _mac(secret, b"listener", nonce_c, nonce_l)):
            raise AuthFailed(f"{who} failed to prove the cluster secret: the two sides use "
                             "different secrets (different clusters?)")
        chan.send([_mac(secret, b"connector", nonce_l, nonce_c)], deadline, "handshake with")
        verdict = chan.recv_exact(1, deadline, "handshake with")
    except CommClosed as error:
        raise AuthFailed(f"{who} closed the connection during the handshake: it refused our "
                         f"proof (different secret?) or is shutting down ({error})") from None
    except CommTimeout as error:
        raise CommTimeout(f"{error}: the handshake got no answer; is the listener accepting "
                          "connections (its process alive, not overloaded)?") from None
    if verdict != _ACCEPTED:
        raise AuthFailed(f"{who} refused our proof of the cluster secret: the two sides use "
                         "different secrets (different clusters?)")


def listener_handshake(chan: Channel, secret: bytes, deadline: Deadline) -> None:
    """Run by the accepting side; every failure, timeouts included, is AuthFailed."""
    who = f"connection from {chan.peer}"
    try:
        magic, version, nonce_c = _HELLO_C.unpack(
            chan.recv_exact(_HELLO_C.size, deadline, "handshake from"))
        _check_hello(magic, version, who)
        nonce_l = secrets.token_bytes(NONCE_SIZE)
        chan.send([_HELLO_L.pack(MAGIC, VERSION, nonce_l,
                                 _mac(secret, b"listener", nonce_c, nonce_l))],
                  deadline, "handshake with")
        mac_c = chan.recv_exact(MAC_SIZE, deadline, "handshake from")
        if not hmac.compare_digest(mac_c, _mac(secret, b"connector", nonce_l, nonce_c)):
            _refuse(chan, deadline)
            raise AuthFailed(f"{who} failed to prove the cluster secret: the two sides use "
                             "different secrets (different clusters?)")
        chan.send([_ACCEPTED], deadline, "handshake with")
    except CommClosed as error:
        raise AuthFailed(f"{who} closed the connection during the handshake (a peer with a "
                         f"different secret, a port scan, or a crash): {error}") from None
    except CommTimeout as error:
        raise AuthFailed(f"{who} did not complete the handshake in time: {error}") from None


def _refuse(chan: Channel, deadline: Deadline) -> None:
    try:
        chan.send([_REFUSED], deadline, "handshake with")
    except (CommClosed, CommTimeout):
        pass
