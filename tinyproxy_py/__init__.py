"""tinyproxy-py: a small, fast, leak-free forward HTTP/HTTPS proxy.

Embedding: ``with ProxyServer(Config(port=0)) as proxy: ... proxy.url``.
Everything inside this package imports relatively, so the folder can be vendored
under another name; only ``cli`` needs click.
"""

from __future__ import annotations

import logging

__version__ = "0.1.0"

from .config import Config
from .errors import ProxyError
from .server import ProxyServer

__all__ = ["Config", "ProxyError", "ProxyServer", "__version__"]

logging.getLogger(__name__).addHandler(logging.NullHandler())
