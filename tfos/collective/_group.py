"""The collective group of this process (``tfos.collective.init`` sets it), shared by the
package's modules."""
from __future__ import annotations

import threading

from tfos.core.errors import ConfigError

lock = threading.Lock()
state: dict = {}
joined = threading.Event()


def group():
    """The group ``init`` joined, or ConfigError saying to call it."""
    current = state.get("group")
    if current is None:
        raise ConfigError("tfos.collective is not initialised: call tfos.collective.init(ctx) "
                          "first, in main_fun")
    return current
