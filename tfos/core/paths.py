"""Path helpers shared by the driver and the TF nodes (pure, no Spark or TF import)."""
from __future__ import annotations

import getpass
import posixpath
from urllib.parse import urlsplit


def absolute_path(path: str, default_fs: str, working_dir: str) -> str:
    """Qualifies ``path`` the way TensorFlowOnSpark's ``hdfs_path`` does.

    A path with a scheme is returned as is. Otherwise, on a distributed default filesystem
    (``hdfs://nn:8020``) an absolute path is prefixed with it and a relative one lands under
    ``/user/<user>/``; on the local filesystem an absolute path gets ``file://`` and a relative
    one is resolved against ``working_dir`` (the node's working directory).
    """
    if urlsplit(path).scheme:
        return path
    fs = default_fs.rstrip("/")
    if not fs or fs.startswith("file:"):
        full = path if posixpath.isabs(path) else posixpath.join(working_dir, path)
        return "file://" + posixpath.normpath(full)
    if posixpath.isabs(path):
        return fs + path
    return f"{fs}/user/{getpass.getuser()}/{path}"
