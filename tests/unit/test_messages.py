"""The typed control messages and their JSON wire form (``tfos.core.messages``).

Whatever bytes arrive, ``decode`` returns the expected message or raises ProtocolError.
"""
from __future__ import annotations

import dataclasses
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfos.core import messages as m
from tfos.core.errors import ProtocolError

SAMPLES = [
    m.Register(node_id=3, attempt=0, host="10.1.2.3", tf_port=40123, pid=4242,
               python_version="3.11", tf_version="2.21.0"),
    m.RegisterReply(accepted=False, reason="versions differ: é ✓"),
    m.RegisterReply(accepted=True),
    m.Heartbeat(node_id=1, state=m.NodeState.SERVING),
    m.HeartbeatReply(command=m.Command.STOP),
    m.LogLines(node_id=0, lines=["plain", "", "ünïcödé \u2603", "tab\there", 'quote " \\']),
    m.NodeStatus(node_id=2, state=m.NodeState.EXITED, exit_code=-9, reason="killed",
                 stopped=True, log_tail=["Traceback (most recent call last):", "ValueError: x"]),
    m.NodeStatus(node_id=2, state=m.NodeState.RUNNING),
    m.ServiceUrl(node_id=0, name="tensorboard", url="http://h:6006/"),
    m.Ack(ok=False),
    m.Ack(),
]
CLASSES = [m.Register, m.RegisterReply, m.Heartbeat, m.HeartbeatReply, m.LogLines,
           m.NodeStatus, m.ServiceUrl, m.Ack]


def wire(type_name: str, body, v=m.PROTOCOL_VERSION) -> bytes:
    return json.dumps({"v": v, "type": type_name, "body": body}).encode()


def body_of(message) -> dict:
    return json.loads(m.encode(message))["body"]


def test_every_class_has_a_sample():
    assert {type(s) for s in SAMPLES} == set(CLASSES)


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: type(s).__name__)
def test_round_trip(message):
    decoded = m.decode(m.encode(message), type(message))
    assert decoded == message
    assert type(decoded) is type(message)
    for field in dataclasses.fields(message):
        value = getattr(decoded, field.name)
        assert type(value) is type(getattr(message, field.name)), field.name


def test_wire_form_is_a_versioned_envelope_of_plain_json():
    data = m.encode(m.Heartbeat(node_id=1, state=m.NodeState.RUNNING))
    assert json.loads(data) == {"v": 1, "type": "Heartbeat",
                                "body": {"node_id": 1, "state": "running", "progress": None}}


def test_progress_travels_with_heartbeats():
    progress = m.Progress({"input": m.FeedProgress(records=1200, epoch=2)}, epoch=1, step=40,
                          metrics={"loss": 0.25})
    sent = m.Heartbeat(node_id=1, state=m.NodeState.RUNNING, progress=progress)
    assert m.decode(m.encode(sent), m.Heartbeat) == sent
    with pytest.raises(ProtocolError, match="records must be int"):
        m.decode(wire("Heartbeat", {"node_id": 1, "state": "running", "progress": {
            "feeds": {"input": {"records": "many", "epoch": 0}}}}), m.Heartbeat)


def test_omitted_fields_with_defaults_take_them():
    status = m.decode(wire("NodeStatus", {"node_id": 1, "state": "exited"}), m.NodeStatus)
    assert status == m.NodeStatus(node_id=1, state=m.NodeState.EXITED, exit_code=None,
                                  reason="", stopped=False, log_tail=[])
    assert m.decode(wire("Ack", {}), m.Ack) == m.Ack(True)


def test_int_is_accepted_where_optional_int_is_null():
    status = m.decode(wire("NodeStatus", {"node_id": 1, "state": "exited", "exit_code": None}),
                      m.NodeStatus)
    assert status.exit_code is None


REGISTER = body_of(SAMPLES[0])


@pytest.mark.parametrize("data, expected, fragment", [
    (wire("Register", REGISTER, v=2), m.Register, "protocol version 2"),
    (wire("Register", REGISTER, v="1"), m.Register, "protocol version '1'"),
    (wire("Register", REGISTER, v=None), m.Register, "protocol version None"),
    (wire("Heartbeat", REGISTER), m.Register, "expected a Register message, got 'Heartbeat'"),
    (wire("register", REGISTER), m.Register, "got 'register'"),
    (wire("Register", {**REGISTER, "extra": 1}), m.Register, "no fields ['extra']"),
    (wire("Register", {k: v for k, v in REGISTER.items() if k != "pid"}), m.Register,
     "lacks field 'pid'"),
    (wire("Register", {**REGISTER, "node_id": True}), m.Register,
     "Register.node_id must be int, got bool"),
    (wire("Register", {**REGISTER, "tf_port": "40123"}), m.Register,
     "Register.tf_port must be int, got str"),
    (wire("Register", {**REGISTER, "pid": 1.0}), m.Register, "Register.pid must be int"),
    (wire("Register", {**REGISTER, "host": 7}), m.Register, "Register.host must be str"),
    (wire("RegisterReply", {"accepted": 1}), m.RegisterReply,
     "RegisterReply.accepted must be bool, got int"),
    (wire("Heartbeat", {"node_id": 0, "state": "dancing"}), m.Heartbeat,
     "Heartbeat.state='dancing' is not one of"),
    (wire("HeartbeatReply", {"command": "STOP"}), m.HeartbeatReply, "command='STOP'"),
    (wire("LogLines", {"node_id": 0, "lines": "one line"}), m.LogLines,
     "LogLines.lines must be a list"),
    (wire("LogLines", {"node_id": 0, "lines": ["ok", 3]}), m.LogLines,
     "LogLines.lines[] must be str, got int"),
    (wire("NodeStatus", {"node_id": 0, "state": "exited", "exit_code": "1"}), m.NodeStatus,
     "NodeStatus.exit_code must be int"),
    (wire("NodeStatus", {"node_id": 0, "state": "exited", "exit_code": False}), m.NodeStatus,
     "NodeStatus.exit_code must be int, got bool"),
    (wire("Ack", []), m.Ack, "body must be an object"),
    (json.dumps({"v": 1, "type": "Ack"}).encode(), m.Ack, "keys v, type, body"),
    (json.dumps({"v": 1, "type": "Ack", "body": {}, "x": 0}).encode(), m.Ack, "keys v, type"),
    (b"[1, 2]", m.Ack, "envelope must be an object"),
    (b"null", m.Ack, "envelope must be an object"),
    (b"{not json", m.Ack, "not UTF-8 JSON"),
    (b"", m.Ack, "not UTF-8 JSON"),
    (b'{"v": 1, "type": "Ack", "body": {"ok": "\xff"}}', m.Ack, "not UTF-8 JSON"),
    (b"\xfe\xff\x00{", m.Ack, "not UTF-8 JSON"),
    (wire("LogLines", {"node_id": 0, "lines": ["ok", "\ud800"]}), m.LogLines,
     "LogLines.lines[] is not valid Unicode"),
    (wire("ServiceUrl", {"node_id": 0, "name": "x\udfff", "url": ""}), m.ServiceUrl,
     "ServiceUrl.name is not valid Unicode"),
])
def test_decode_rejects(data, expected, fragment):
    with pytest.raises(ProtocolError) as info:
        m.decode(data, expected)
    assert fragment in str(info.value)


def test_decode_rejects_oversized_messages_before_parsing():
    line = "x" * 1000
    data = m.encode(m.LogLines(0, [line] * (m.MAX_MESSAGE_BYTES // 1000 + 1)))
    assert len(data) > m.MAX_MESSAGE_BYTES
    with pytest.raises(ProtocolError, match=f"exceeds {m.MAX_MESSAGE_BYTES}"):
        m.decode(data, m.LogLines)
    # Not even parsed: an oversized blob of garbage gets the same answer.
    with pytest.raises(ProtocolError, match="exceeds"):
        m.decode(b"\xff" * (m.MAX_MESSAGE_BYTES + 1), m.Ack)


def test_a_message_just_under_the_limit_is_accepted():
    overhead = len(m.encode(m.LogLines(0, [""])))
    data = m.encode(m.LogLines(0, ["y" * (m.MAX_MESSAGE_BYTES - overhead)]))
    assert len(data) == m.MAX_MESSAGE_BYTES
    assert m.decode(data, m.LogLines).lines[0] == "y" * (m.MAX_MESSAGE_BYTES - overhead)


@pytest.mark.parametrize("v", [True, 1.0])
def test_decode_rejects_a_version_that_is_only_equal_to_1(v):
    with pytest.raises(ProtocolError, match="protocol version"):
        m.decode(wire("Ack", {}, v=v), m.Ack)


def test_deeply_nested_json_raises_protocol_error():
    with pytest.raises(ProtocolError):
        m.decode(b"[" * 200_000, m.Ack)


def test_huge_integer_literal_raises_protocol_error():
    with pytest.raises(ProtocolError):
        m.decode(b'{"v":1,"type":"Heartbeat","body":{"node_id":' + b"9" * 5000
                 + b',"state":"running"}}', m.Heartbeat)


# -- properties ------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True)
    | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)

FIELD_NAMES = sorted({f.name for cls in CLASSES for f in dataclasses.fields(cls)})
FIELD_VALUES = st.one_of(json_values, st.sampled_from(
    [s.value for s in m.NodeState] + [c.value for c in m.Command]),
    st.lists(st.text(max_size=10), max_size=3))
bodies = st.dictionaries(st.sampled_from(FIELD_NAMES) | st.text(max_size=8), FIELD_VALUES,
                         max_size=8)


def decodes_or_protocol_error(data: bytes, cls: type) -> None:
    try:
        result = m.decode(data, cls)
    except ProtocolError:
        return
    assert type(result) is cls
    # What decode accepted must be a well-typed message: it re-encodes and round-trips.
    assert m.decode(m.encode(result), cls) == result


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), cls=st.sampled_from(CLASSES))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data, cls):
    decodes_or_protocol_error(data, cls)


@settings(max_examples=150, deadline=None)
@given(value=json_values, cls=st.sampled_from(CLASSES))
def test_arbitrary_json_values_decode_or_raise_protocol_error(value, cls):
    decodes_or_protocol_error(json.dumps(value).encode(), cls)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=bodies, cls=st.sampled_from(CLASSES),
       type_name=st.sampled_from([c.__name__ for c in CLASSES]),
       v=st.sampled_from([1, 1, 1, 0, 2, "1", None]))
def test_arbitrary_envelopes_decode_or_raise_protocol_error(body, cls, type_name, v):
    decodes_or_protocol_error(wire(type_name, body, v=v), cls)


@settings(max_examples=200, deadline=None)
@given(message=st.sampled_from(SAMPLES), data=st.data())
def test_mutating_one_field_of_a_valid_message_decodes_or_raises_protocol_error(message, data):
    body = body_of(message)
    name = data.draw(st.sampled_from(sorted(body)))
    body[name] = data.draw(FIELD_VALUES)
    decodes_or_protocol_error(wire(type(message).__name__, body), type(message))
