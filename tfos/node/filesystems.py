"""Where a node's files live: a URI to an fsspec filesystem and a path on it (TF node).

Used by ``tfos.node.files``. Schemes: a local path or ``file://``; ``s3://`` and ``s3a://``
(Hadoop's name for the same bucket and key) through s3fs; ``hdfs://`` through pyarrow's
``HadoopFileSystem``; any other scheme fsspec knows (``gs://`` with gcsfs installed...).

S3 is configured by the standard AWS variables of the node's environment: credentials
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_SESSION_TOKEN``, or botocore's own
chain: profile, instance role), endpoint (``AWS_ENDPOINT_URL_S3``, else ``AWS_ENDPOINT_URL``:
MinIO, Ceph, a local test server) and region (``AWS_REGION``, else ``AWS_DEFAULT_REGION``).
They are read on every call and handed to s3fs explicitly, so a changed environment takes
effect and botocore versions without endpoint variables work too.

HDFS goes through libhdfs, the JNI client Hadoop itself ships: it speaks whatever the cluster
speaks (Kerberos, HA namenodes, encryption zones, ``core-site.xml``). It needs a Hadoop
installation on the host; ``hadoop_environment`` derives what libhdfs needs from it.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from typing import Any, Iterator, Mapping
from urllib.parse import urlsplit

from tfos.core.errors import ConfigError, TfosError

S3_SCHEMES = ("s3", "s3a", "s3n")
HADOOP_CLASSPATH_TIMEOUT = 60.0
_EXECUTOR_ENV = ("in the executors' environment (spark.executorEnv.NAME=value, or "
                 "TFCluster.run(..., env={...}))")


@dataclass(frozen=True)
class Place:
    """A URI resolved: its filesystem, its path there, and how to name that filesystem's
    paths as the user wrote them (``prefix``: ``"s3a://"``, ``"hdfs://nn:8020"``, ``""``)."""

    fs: Any
    path: str
    prefix: str
    scheme: str

    @property
    def local(self) -> bool:
        return self.scheme in ("", "file")

    def uri(self, path: str) -> str:
        return self.prefix + path

    def check_container(self) -> None:
        """Raises ConfigError when the bucket of an S3 path does not exist."""
        if self.scheme in S3_SCHEMES:
            bucket = self.path.split("/", 1)[0]
            if not self.fs.exists(bucket):
                raise ConfigError(f"{self.uri(self.path)}: there is no bucket {bucket!r} at "
                                  f"{_endpoint(os.environ)}: check the bucket's name, and "
                                  "AWS_ENDPOINT_URL when the data is not on AWS")


def locate(uri: str) -> Place:
    """The filesystem and path of ``uri`` (a local path, or ``scheme://...``)."""
    parts = urlsplit(uri)
    scheme = parts.scheme.lower() if "://" in uri else ""
    with errors_named(uri, "reach"):
        if scheme in ("", "file"):
            import fsspec
            path = parts.path if scheme else uri
            return Place(fsspec.filesystem("file"), path, "file://" if scheme else "", scheme)
        if scheme in S3_SCHEMES:
            return Place(_s3(), parts.netloc + parts.path, f"{scheme}://", scheme)
        if scheme == "hdfs":
            return Place(_hdfs(uri, parts), parts.path or "/", f"hdfs://{parts.netloc}", scheme)
        import fsspec
        fs = fsspec.filesystem(scheme)
        return Place(fs, fs._strip_protocol(uri), f"{scheme}://", scheme)


@contextlib.contextmanager
def errors_named(uri: str, action: str) -> Iterator[None]:
    """Turns the errors a user can fix (missing file or bucket, missing package, missing or
    refused credentials, unreachable endpoint) into a ConfigError naming ``uri`` and the fix;
    every other error passes unchanged."""
    try:
        yield
    except TfosError:
        raise
    except Exception as err:
        advice = _advice(err, uri)
        if advice is None:
            raise
        raise ConfigError(f"cannot {action} {uri}: {advice}") from err


@contextlib.contextmanager
def opened(uri: str, buffer_size: int) -> Iterator[Any]:
    """``uri`` open for reading, fetched ``buffer_size`` bytes a request, its errors named."""
    place = locate(uri)
    with errors_named(uri, "read"), place.fs.open(place.path, "rb",
                                                  block_size=buffer_size) as stream:
        yield stream


def _advice(err: Exception, uri: str) -> str | None:
    name = type(err).__name__
    if isinstance(err, ImportError):
        package = "s3fs" if urlsplit(uri).scheme.lower() in S3_SCHEMES else err.name or "?"
        return (f"{err} (package {package!r} missing from {sys.executable}): "
                f"pip install {package}, on every host")
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return (f"no AWS credentials ({err}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
                f"{_EXECUTOR_ENV}, or give the hosts an instance role")
    if name in ("EndpointConnectionError", "ConnectTimeoutError"):
        return (f"the S3 endpoint does not answer ({err}): check AWS_ENDPOINT_URL "
                f"({_endpoint(os.environ)}) and that this host reaches it")
    if isinstance(err, FileNotFoundError):
        return "no such file, directory or bucket: check the path"
    if isinstance(err, PermissionError):
        return (f"access denied ({err}): check the credentials (AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY) and what they may read and write")
    return None


def _endpoint(environ: Mapping[str, str]) -> str:
    return environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL") or "AWS"


# -- S3 ---------------------------------------------------------------------------------------
def s3_options(environ: Mapping[str, str]) -> dict[str, Any]:
    """s3fs's arguments from the AWS variables of ``environ`` (none given: botocore's chain)."""
    options: dict[str, Any] = {"use_listings_cache": False}  # files written since are seen
    key, secret = environ.get("AWS_ACCESS_KEY_ID"), environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        options.update(key=key, secret=secret, token=environ.get("AWS_SESSION_TOKEN"))
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["endpoint_url"] = endpoint
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        options["client_kwargs"] = {"region_name": region}
    return options


def _s3():
    import fsspec
    return fsspec.filesystem("s3", **s3_options(os.environ))   # fsspec caches instances


# -- HDFS -------------------------------------------------------------------------------------
def _hdfs(uri: str, parts):
    """pyarrow's HadoopFileSystem (through fsspec) for the namenode of ``uri``. What libhdfs
    needs is put into this process's environment first: the JVM it starts reads it there."""
    os.environ.update(hadoop_environment(os.environ, uri))
    import fsspec
    try:
        return fsspec.filesystem("hdfs", host=parts.hostname or "default", port=parts.port or 0,
                                 user=parts.username)
    except OSError as err:
        raise ConfigError(
            f"cannot reach {uri}: pyarrow's HadoopFileSystem failed ({err}). Check that the "
            f"namenode {parts.netloc or '(fs.defaultFS of core-site.xml)'} is up and reachable, "
            "and that CLASSPATH, ARROW_LIBHDFS_DIR and JAVA_HOME point at a working Hadoop "
            "client and JDK") from err


def hadoop_environment(environ: Mapping[str, str], uri: str = "hdfs://") -> dict[str, str]:
    """The variables libhdfs still needs, derived from the Hadoop and Java installations
    ``environ`` points at; raises ConfigError naming what is missing.

    ``CLASSPATH``: Hadoop's jars, from ``$HADOOP_HOME/bin/hadoop classpath --glob`` (the JVM
    libhdfs starts expands no wildcards). ``ARROW_LIBHDFS_DIR``: ``$HADOOP_HOME/lib/native``,
    where pyarrow looks for libhdfs.so. ``JAVA_HOME``: from ``java`` on PATH, where pyarrow
    looks for libjvm.so. Variables already set are kept. ``LD_LIBRARY_PATH`` is not needed:
    pyarrow loads libjvm by full path before libhdfs, and a running process does not re-read
    it anyway. HADOOP_HOME is found from ``hadoop`` on PATH when unset.
    """
    found: dict[str, str] = {}
    home = environ.get("HADOOP_HOME") or _installation("hadoop", environ)
    if not environ.get("CLASSPATH") or not environ.get("ARROW_LIBHDFS_DIR"):
        if not home:
            raise ConfigError(
                f"{uri}: reading HDFS needs a Hadoop client on this host (pyarrow's "
                "HadoopFileSystem runs Hadoop's own libhdfs and jars in a JVM) and none was "
                f"found: set HADOOP_HOME to a Hadoop installation {_EXECUTOR_ENV}, or put its "
                "bin/hadoop on PATH (or set CLASSPATH and ARROW_LIBHDFS_DIR yourself)")
        if not os.path.isdir(home):
            raise ConfigError(f"{uri}: HADOOP_HOME={home} is not a directory")
    if not environ.get("CLASSPATH"):
        found["CLASSPATH"] = _hadoop_classpath(home, uri)
    native = environ.get("ARROW_LIBHDFS_DIR") or os.path.join(home, "lib", "native")
    if not os.path.isfile(os.path.join(native, "libhdfs.so")):
        raise ConfigError(f"{uri}: no libhdfs.so in {native}: use a Hadoop binary "
                          "distribution (it ships lib/native/libhdfs.so), or point "
                          "ARROW_LIBHDFS_DIR at the directory holding it")
    if not environ.get("ARROW_LIBHDFS_DIR"):
        found["ARROW_LIBHDFS_DIR"] = native
    java_home = environ.get("JAVA_HOME") or _installation("java", environ)
    if not java_home:
        raise ConfigError(f"{uri}: libhdfs runs in a JVM and no Java was found: set JAVA_HOME "
                          f"{_EXECUTOR_ENV}, or put java on PATH")
    if not environ.get("JAVA_HOME"):
        found["JAVA_HOME"] = java_home
    return found


def _installation(command: str, environ: Mapping[str, str]) -> str | None:
    """The installation directory of ``command`` on PATH (``<home>/bin/<command>``)."""
    path = shutil.which(command, path=environ.get("PATH", os.defpath))
    return os.path.dirname(os.path.dirname(os.path.realpath(path))) if path else None


def _hadoop_classpath(home: str, uri: str) -> str:
    hadoop = os.path.join(home, "bin", "hadoop")
    try:
        out = subprocess.run([hadoop, "classpath", "--glob"], capture_output=True, text=True,
                             timeout=HADOOP_CLASSPATH_TIMEOUT, check=True)
    except (OSError, subprocess.SubprocessError) as err:
        detail = getattr(err, "stderr", "") or ""
        raise ConfigError(f"{uri}: `{hadoop} classpath --glob` failed ({err}; "
                          f"{detail.strip()[-500:]}): check HADOOP_HOME, or set CLASSPATH "
                          "to Hadoop's jars yourself") from err
    return out.stdout.strip()
