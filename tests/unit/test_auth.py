"""Request signatures of the control plane (``tfos.core.auth``): forgeries, replays, stale requests."""
from __future__ import annotations

import time

import pytest

from tfos.core import auth
from tfos.core.errors import AuthenticationError

METHOD = "/tfos.Control/Register"
BODY = b'{"v":1,"type":"Register","body":{}}'


class FakeClock:
    def __init__(self, now: float | None = None):
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def secret() -> bytes:
    return auth.new_secret()


def test_new_secrets_are_random_and_long(secret):
    assert len(secret) == auth.SECRET_BYTES == 32
    assert auth.new_secret() != secret


def test_a_signed_request_verifies(secret):
    metadata = auth.sign(secret, METHOD, BODY)
    assert {k for k, _ in metadata} == {auth.TS_KEY, auth.NONCE_KEY, auth.SIG_KEY}
    auth.Verifier(secret).verify(METHOD, BODY, metadata)


def test_verify_ignores_unrelated_metadata(secret):
    metadata = (("user-agent", "grpc-python"), *auth.sign(secret, METHOD, BODY),
                ("x-other", "1"))
    auth.Verifier(secret).verify(METHOD, BODY, metadata)


def test_each_signature_uses_a_fresh_nonce(secret):
    nonces = {dict(auth.sign(secret, METHOD, BODY))[auth.NONCE_KEY] for _ in range(50)}
    assert len(nonces) == 50


@pytest.mark.parametrize("method, body", [
    (METHOD, BODY + b" "),
    (METHOD, b""),
    ("/tfos.Control/Heartbeat", BODY),
])
def test_a_changed_body_or_method_fails(secret, method, body):
    metadata = auth.sign(secret, METHOD, BODY)
    with pytest.raises(AuthenticationError, match="bad signature"):
        auth.Verifier(secret).verify(method, body, metadata)


def test_a_different_secret_fails(secret):
    metadata = auth.sign(auth.new_secret(), METHOD, BODY)
    with pytest.raises(AuthenticationError, match="wrong cluster secret"):
        auth.Verifier(secret).verify(METHOD, BODY, metadata)


@pytest.mark.parametrize("key", [auth.TS_KEY, auth.NONCE_KEY])
def test_a_changed_timestamp_or_nonce_fails(secret, key):
    metadata = dict(auth.sign(secret, METHOD, BODY))
    metadata[key] = metadata[key][:-1] + ("1" if metadata[key][-1] != "1" else "2")
    with pytest.raises(AuthenticationError, match="bad signature"):
        auth.Verifier(secret).verify(METHOD, BODY, tuple(metadata.items()))


def test_fields_cannot_be_shifted_between_method_and_nonce(secret):
    """The length prefixes keep (method, ts, nonce) from being re-split into other values."""
    ts, nonce = "1700000000000", "ab"
    good = auth._digest(secret, "/m", ts, nonce, b"")
    assert auth._digest(secret, "/ma", ts, "b", b"") != good
    assert auth._digest(secret, "/m", ts + "a", "b", b"") != good


def test_a_replay_of_the_same_metadata_is_refused(secret):
    verifier = auth.Verifier(secret)
    metadata = auth.sign(secret, METHOD, BODY)
    verifier.verify(METHOD, BODY, metadata)
    with pytest.raises(AuthenticationError, match="replayed"):
        verifier.verify(METHOD, BODY, metadata)
    # A fresh signature of the very same request is fine.
    verifier.verify(METHOD, BODY, auth.sign(secret, METHOD, BODY))


def test_a_replay_stays_refused_until_its_timestamp_is_stale(secret):
    clock = FakeClock()
    verifier = auth.Verifier(secret, window_s=60, clock=clock)
    metadata = auth.sign(secret, METHOD, BODY)
    signed_at = int(dict(metadata)[auth.TS_KEY]) / 1000
    clock.now = signed_at
    verifier.verify(METHOD, BODY, metadata)
    for later in (1, 30, 59.9):
        clock.now = signed_at + later
        with pytest.raises(AuthenticationError, match="replayed"):
            verifier.verify(METHOD, BODY, metadata)
    clock.now = signed_at + 200
    with pytest.raises(AuthenticationError, match="freshness window"):
        verifier.verify(METHOD, BODY, metadata)


@pytest.mark.parametrize("skew_s", [-61.0, 61.0, 3600.0])
def test_a_timestamp_outside_the_window_is_refused(secret, skew_s):
    metadata = auth.sign(secret, METHOD, BODY)
    signed_at = int(dict(metadata)[auth.TS_KEY]) / 1000
    verifier = auth.Verifier(secret, window_s=60, clock=FakeClock(signed_at + skew_s))
    with pytest.raises(AuthenticationError, match="freshness window"):
        verifier.verify(METHOD, BODY, metadata)


@pytest.mark.parametrize("skew_s", [-59.0, 0.0, 59.0])
def test_a_timestamp_inside_the_window_is_accepted(secret, skew_s):
    metadata = auth.sign(secret, METHOD, BODY)
    signed_at = int(dict(metadata)[auth.TS_KEY]) / 1000
    auth.Verifier(secret, window_s=60, clock=FakeClock(signed_at + skew_s)).verify(
        METHOD, BODY, metadata)


@pytest.mark.parametrize("ts, nonce", [
    ("-5", "00" * 16), ("٣" * 13, "00" * 16), ("9" * 5000, "00" * 16),
    ("1700000000000", "ÿ" * 32), ("1700000000000", "\ud800" * 32), ("1700000000000", "AB" * 16),
])
def test_a_signed_request_with_malformed_fields_is_refused(secret, ts, nonce):
    """Only the form sign() writes is taken, even when the MAC over it is right (the
    non-ASCII and 5000-digit values used to raise TypeError/ValueError, not a refusal)."""
    try:
        sig = auth._digest(secret, METHOD, ts, nonce, BODY)
    except UnicodeEncodeError:
        sig = "0" * 64
    metadata = ((auth.TS_KEY, ts), (auth.NONCE_KEY, nonce), (auth.SIG_KEY, sig))
    with pytest.raises(AuthenticationError, match="malformed signature metadata"):
        auth.Verifier(secret).verify(METHOD, BODY, metadata)


@pytest.mark.parametrize("sig", ["é" * 64, "0" * 63, "0" * 65, b"0" * 64, None, 7, "G" * 64])
def test_a_signature_of_the_wrong_form_is_refused(secret, sig):
    metadata = tuple((k, sig if k == auth.SIG_KEY else v)
                     for k, v in auth.sign(secret, METHOD, BODY))
    with pytest.raises(AuthenticationError, match="malformed signature metadata"):
        auth.Verifier(secret).verify(METHOD, BODY, metadata)


@pytest.mark.parametrize("missing", [auth.TS_KEY, auth.NONCE_KEY, auth.SIG_KEY])
def test_missing_metadata_is_refused(secret, missing):
    metadata = tuple((k, v) for k, v in auth.sign(secret, METHOD, BODY) if k != missing)
    with pytest.raises(AuthenticationError, match="not signed"):
        auth.Verifier(secret).verify(METHOD, BODY, metadata)


def test_no_metadata_at_all_is_refused(secret):
    with pytest.raises(AuthenticationError, match=f"{METHOD}: request is not signed"):
        auth.Verifier(secret).verify(METHOD, BODY, ())


def test_a_refused_forgery_does_not_burn_the_genuine_nonce(secret):
    """A forged request reusing a genuine nonce must not make the genuine one look replayed."""
    verifier = auth.Verifier(secret)
    genuine = auth.sign(secret, METHOD, BODY)
    forged = tuple((k, "0" * 64 if k == auth.SIG_KEY else v) for k, v in genuine)
    with pytest.raises(AuthenticationError, match="bad signature"):
        verifier.verify(METHOD, BODY, forged)
    verifier.verify(METHOD, BODY, genuine)
