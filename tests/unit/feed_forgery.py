"""Feed messages a correct peer would never send, for the security and fuzz tests."""
import json
import struct

from tfos.core import feed_codec
from tfos.core import feed_messages as fm


def forge(type_name, body, columns=None, version=fm.VERSION) -> list:
    """A feed message of any ``type_name``, ``body`` and version; its columns are real."""
    parts = feed_codec.encode(fm.Ok(), columns)
    raw = bytes(parts[0])
    (length,) = struct.unpack_from("<I", raw)
    header = {**json.loads(raw[4:4 + length]), "v": version, "type": type_name, "body": body}
    text = json.dumps(header).encode()
    prefix = struct.pack("<I", len(text)) + text
    return [prefix + bytes(-len(prefix) % feed_codec.ALIGN), *parts[1:]]


def kind_of(message) -> str:
    """"done", "error", "ok" or "results": what a node answered."""
    answer, _ = feed_codec.decode(message)
    return type(answer).__name__.lower()
