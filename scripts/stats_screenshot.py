#!/usr/bin/env python3
"""Render docs/img/stats-page.png again: the stats page of a proxy with some traffic on it
(requests of each status class, a refusal, a tunnel open and one closed), in headless
Chromium. Loopback only; the proxy refuses every target but loopback, since Chromium
reaches for outside hosts on its own. Needs chromium (apt-get install chromium).

Usage: python3 scripts/stats_screenshot.py [--out docs/img/stats-page.png]
"""

from __future__ import annotations

import argparse
import socket
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the package and tests.kit

from tests.kit.browser import CHROMIUM, SKIP_REASON, chromium  # noqa: E402
from tests.kit.clients import open_tunnel  # noqa: E402
from tests.kit.origins import OriginServer  # noqa: E402
from tests.kit.responses import get  # noqa: E402
from tests.support import client_env  # noqa: E402
from tinyproxy_py import Config, ProxyServer  # noqa: E402

STATS = "http://tinyproxy-py.stats/"


def traffic(proxy: ProxyServer, origin: OriginServer) -> socket.socket:
    """Requests of each kind; returns a tunnel left open for the picture."""
    for path in ("/bytes/2000", "/bytes/70000", "/status/404", "/status/503", "/bytes/10"):
        get(proxy.address, origin.url(path))
    get(proxy.address, "http://example.invalid/")  # refused: not loopback (the host filter)
    closed, _ = open_tunnel(proxy.address, f"127.0.0.1:{origin.port}")
    closed.close()
    tunnel, _ = open_tunnel(proxy.address, f"127.0.0.1:{origin.port}")
    return tunnel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "img" / "stats-page.png")
    args = parser.parse_args()
    if CHROMIUM is None:
        parser.error(SKIP_REASON)
    config = Config(port=0, filter_hosts=("127.0.0.1", "localhost"), filter_mode="allow", http_ports=("any",))
    origin = OriginServer()
    try:
        # Every name but loopback's is refused by the host filter before any lookup.
        with ProxyServer(config) as proxy, tempfile.TemporaryDirectory() as tmp:
            tunnel = traffic(proxy, origin)
            try:
                profile = Path(tmp) / "profile"
                dom = chromium(proxy.url, STATS, profile, args.out, size="1200,1700", env=client_env())
            finally:
                tunnel.close()
    finally:
        origin.stop()
    if "Recently closed tunnels" not in dom.stdout or not args.out.exists():
        print(dom.stderr[-2000:], file=sys.stderr)
        return 1
    print(f"wrote {args.out.relative_to(REPO) if args.out.is_relative_to(REPO) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
