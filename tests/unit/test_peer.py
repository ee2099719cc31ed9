"""rdma.peer: the one place that picks the scheme for a peer and formats its addresses."""
from __future__ import annotations

import pytest

import rdma
from rdma import peer

SECRET = b"p" * 32
MiB = 1 << 20


def test_a_server_listens_for_both_kinds_of_peer_and_advertises_where_it_is(tmp_path):
    uris = peer.listen_uris("127.0.0.1", str(tmp_path / "s.sock"))
    assert uris == ["tcp://127.0.0.1:0", f"shm://{tmp_path}/s.sock"]
    assert peer.listen_uris("::1") == ["tcp://[::1]:0"]
    # Bound to every interface: peers are told the host's own address, not the wildcard.
    assert peer.advertise("tcp://0.0.0.0:4100", "10.1.2.3") == "tcp://10.1.2.3:4100"
    assert peer.advertise("tcp://[::]:4100", "fe80::1") == "tcp://[fe80::1]:4100"
    assert peer.advertise("tcp://10.1.2.3:4100", "10.1.2.3") == "tcp://10.1.2.3:4100"
    assert peer.advertise(f"shm://{tmp_path}/s.sock", "h") == \
        f"shm://{tmp_path}/s.sock#{peer.host_key()}"


def test_receive_bytes_size_only_the_schemes_that_own_their_buffers():
    assert peer.buffer_options("shm:///x.sock", MiB) == {"capacity": MiB}
    assert peer.buffer_options("tcp://h:1", MiB) == {}
    assert peer.buffer_options("shm:///x.sock", None) == {}


@pytest.mark.parametrize("same_host, scheme", [(True, "shm"), (False, "tcp")])
def test_connect_takes_the_scheme_choose_picks_and_carries_messages(tmp_path, same_host, scheme):
    listeners = [peer.listen(uri, SECRET, receive_bytes=MiB)
                 for uri in peer.listen_uris("127.0.0.1", str(tmp_path / "s.sock"))]
    try:
        advertised = [peer.advertise(listener.address, "127.0.0.1") for listener in listeners]
        with peer.connect(advertised, SECRET, timeout=10, receive_bytes=MiB,
                          same_host=same_host) as client:
            (listener,) = [li for li in listeners if li.address.startswith(scheme)]
            with listener.accept(timeout=10) as server:
                client.send([b"hello ", b"peer"])
                assert bytes(server.recv(timeout=10)) == b"hello peer"
            assert type(client).__module__ == f"rdma.{scheme}"
    finally:
        for listener in listeners:
            listener.close()


def test_no_reachable_address_is_a_connect_failure_naming_them():
    with pytest.raises(rdma.ConnectFailed, match="shm:///nowhere.sock#other-host"):
        peer.choose(["shm:///nowhere.sock#other-host"])
