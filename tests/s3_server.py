"""A real S3 server for tests: moto's standalone server on 127.0.0.1, on a port of its own.

``local_s3()`` starts it in a thread of this process (werkzeug, the S3 REST protocol over
HTTP), points the standard AWS variables of ``os.environ`` at it for as long as it runs (so
s3fs, boto3 and the Spark executors and TF nodes started meanwhile find it), and creates a
bucket in an empty store. Test modules take the ``s3`` fixture with
``from s3_server import s3  # noqa: F401``.
"""
from __future__ import annotations

import contextlib
import logging
import os
import urllib.request
from dataclasses import dataclass
from typing import Iterator

import pytest

BUCKET = "tfos-test"


@dataclass(frozen=True)
class LocalS3:
    """A running server: its endpoint, the variables that reach it, and a fresh bucket."""

    endpoint: str
    env: dict[str, str]
    bucket: str

    def uri(self, key: str = "", scheme: str = "s3") -> str:
        return f"{scheme}://{self.bucket}/{key}"

    def filesystem(self):
        """An s3fs filesystem of this server (not cached: the tests' own handle)."""
        import s3fs
        return s3fs.S3FileSystem(endpoint_url=self.endpoint, key="testing", secret="testing",
                                 skip_instance_cache=True, use_listings_cache=False)


@contextlib.contextmanager
def local_s3(bucket: str = BUCKET) -> Iterator[LocalS3]:
    from moto.server import ThreadedMotoServer
    logging.getLogger("werkzeug").setLevel(logging.WARNING)   # one line per request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_ENDPOINT_URL": endpoint, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}   # never ask a cloud's metadata service
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        # moto keeps its buckets in module state that every server of a process shares: start
        # from none, whatever an earlier server left.
        urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset",
                                                      method="POST"), timeout=30).close()
        s3 = LocalS3(endpoint, env, bucket)
        s3.filesystem().mkdir(bucket)
        yield s3
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        server.stop()


@pytest.fixture(scope="module")
def s3() -> Iterator[LocalS3]:
    """moto's S3 server on 127.0.0.1 with the bucket ``tfos-test``, for one test module (each
    module that imports the fixture has its own; the variables are restored after it)."""
    with local_s3() as server:
        yield server
