"""Headless Chromium with the flags that keep it quiet and on this machine: the test
suite's browser, and scripts/stats_screenshot.py's."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SKIP_REASON = "chromium is not installed (apt-get install chromium)"


def chromium(
    proxy_url: str, url: str, profile: Path, screenshot: Path, *, size: str = "1200,900", env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """Load `url` through the proxy at `proxy_url` (loopback too), save a screenshot and
    return the page's DOM as stdout. The proxy must refuse every target but loopback:
    Chromium reaches for outside hosts even with its background features off."""
    assert CHROMIUM is not None, SKIP_REASON
    return subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",  # a TLS listener's test CA is not in its store
            f"--user-data-dir={profile}",
            f"--proxy-server={proxy_url}",
            "--proxy-bypass-list=<-loopback>",
            f"--window-size={size}",
            f"--screenshot={screenshot}",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
    )
