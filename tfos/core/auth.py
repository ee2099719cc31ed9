"""Per-cluster secrets and request signatures (driver verifies, executor tasks sign).

Every control request carries, as gRPC metadata, a timestamp, a random nonce and an
HMAC-SHA256 over (method, timestamp, nonce, body) keyed with the cluster's secret. The driver
rejects a bad signature, a timestamp outside the freshness window, and any nonce already seen
within that window (a replay).
"""
from __future__ import annotations

import collections
import hashlib
import hmac
import secrets
import threading
import time

from tfos.core.errors import AuthenticationError

TS_KEY = "tfos-ts"
NONCE_KEY = "tfos-nonce"
SIG_KEY = "tfos-sig"
SECRET_BYTES = 32


def new_secret() -> bytes:
    return secrets.token_bytes(SECRET_BYTES)


def _digest(secret: bytes, method: str, ts: str, nonce: str, body: bytes) -> str:
    mac = hmac.new(secret, digestmod=hashlib.sha256)
    for part in (method.encode(), ts.encode(), nonce.encode()):
        mac.update(len(part).to_bytes(4, "big"))
        mac.update(part)
    mac.update(body)
    return mac.hexdigest()


def sign(secret: bytes, method: str, body: bytes) -> tuple[tuple[str, str], ...]:
    """The metadata that proves knowledge of ``secret`` for this one request."""
    ts = str(time.time_ns() // 1_000_000)
    nonce = secrets.token_hex(16)
    return ((TS_KEY, ts), (NONCE_KEY, nonce), (SIG_KEY, _digest(secret, method, ts, nonce, body)))


class Verifier:
    """Checks request signatures and remembers nonces for ``window_s`` to refuse replays."""

    def __init__(self, secret: bytes, window_s: float = 60.0, clock=time.time):
        self._secret = secret
        self._window_ms = int(window_s * 1000)
        self._clock = clock
        self._seen: set[str] = set()
        self._arrivals: collections.deque[tuple[int, str]] = collections.deque()
        self._lock = threading.Lock()

    def verify(self, method: str, body: bytes, metadata) -> None:
        """Returns if ``metadata`` signs (method, body) freshly; AuthenticationError otherwise,
        whatever the metadata holds."""
        meta = {k: v for k, v in metadata if k in (TS_KEY, NONCE_KEY, SIG_KEY)}
        if len(meta) != 3:
            raise AuthenticationError(f"{method}: request is not signed")
        ts, nonce, sig = meta[TS_KEY], meta[NONCE_KEY], meta[SIG_KEY]
        # Only what sign() writes can verify: decimal milliseconds, a hex nonce, a hex digest.
        # Checking the form first keeps odd values (non-ASCII, huge, not text) out of the MAC.
        if not (_form(ts, _TS_DIGITS, "0123456789") and _form(nonce, _NONCE_HEX, _HEX)
                and _form(sig, _SIG_HEX, _HEX)):
            raise AuthenticationError(f"{method}: malformed signature metadata")
        expected = _digest(self._secret, method, ts, nonce, body)
        if not hmac.compare_digest(sig, expected):
            raise AuthenticationError(f"{method}: bad signature (wrong cluster secret?)")
        now_ms = int(self._clock() * 1000)
        if abs(now_ms - int(ts)) > self._window_ms:
            raise AuthenticationError(f"{method}: timestamp outside the freshness window "
                                      "(clock skew between driver and executor?)")
        with self._lock:
            while self._arrivals and now_ms - self._arrivals[0][0] > 2 * self._window_ms:
                self._seen.discard(self._arrivals.popleft()[1])
            if nonce in self._seen:
                raise AuthenticationError(f"{method}: replayed request")
            self._seen.add(nonce)
            self._arrivals.append((now_ms, nonce))


_HEX = "0123456789abcdef"
_TS_DIGITS = range(1, 20)
_NONCE_HEX = range(32, 33)
_SIG_HEX = range(64, 65)


def _form(value, lengths: range, alphabet: str) -> bool:
    return (isinstance(value, str) and len(value) in lengths
            and all(c in alphabet for c in value))
