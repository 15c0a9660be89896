"""tinyproxy-py: a small, fast, leak-free forward HTTP/HTTPS proxy.

Embedding: ``with ProxyServer(Config(port=0)) as proxy: ... proxy.url``. The names
below are the public face (docs/embedding.md lists them); every module under the layer
folders is internal and may change. Everything inside this package imports relatively,
so the folder can be vendored under another name; only ``app.cli`` needs click.
"""

from __future__ import annotations

import logging

from .errors import Cause, ProxyError
from .observe.accesslog import AccessRecord
from .observe.stats import Stats
from .server.proxy import ProxyServer
from .settings.config import Config, SettingError
from .settings.faults import FaultError, FaultHandle, Faults
from .version import __version__

__all__ = [
    "AccessRecord",
    "Cause",
    "Config",
    "FaultError",
    "FaultHandle",
    "Faults",
    "ProxyError",
    "ProxyServer",
    "SettingError",
    "Stats",
    "__version__",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())
