"""A TLS listener's side of TLS: the server context, built from the certificate files and
replaced whole when they are reread (SIGHUP), and the handshake every connection to that
listener goes through before its first request.

Imported only when a TLS listener is configured: ssl costs a proxy without one ~12 MiB.
"""

from __future__ import annotations

import logging
import ssl

from ..net.clientconn import ClientConnection
from ..observe.quietlog import EpisodeLog
from ..observe.stats import Stats

log = logging.getLogger(__name__)
# One line per failed handshake, but a flood of them (a scanner, 500 at once) is an episode.
_failures = EpisodeLog(log, logging.INFO, interval=1.0)


def server_context(cert: str, key: str | None) -> ssl.SSLContext:
    """TLS 1.2 or later, HTTP/1.1 by ALPN, and no renegotiation: a write that has to read
    first would wait for the wrong event in the tunnel hub. Raises OSError (ssl.SSLError
    is one) naming the files."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_NO_RENEGOTIATION
    context.set_alpn_protocols(["http/1.1"])
    try:
        context.load_cert_chain(cert, key)
    except OSError as exc:  # names no file ("[SSL] PEM lib", "No such file or directory")
        files = f"{cert} and {key}" if key else cert
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot use {files} as a PEM certificate chain and key: {reason}") from exc
    return context


class ServerTLS:
    """The certificate pair a TLS listener presents; reload() swaps it for new handshakes
    (open connections keep theirs). `serve --workers` loads it before forking: a worker
    that replaces a dead one starts with it, whatever the files hold at that moment."""

    def __init__(self, cert: str, key: str | None) -> None:
        self.context = server_context(cert, key)

    def reload(self, cert: str, key: str | None) -> None:
        """Reread the files; on an error (OSError) the running pair stays."""
        self.context = server_context(cert, key)  # one assignment: a handshake sees either

    def handshake(self, client: ClientConnection, peer: str, deadline: float, stats: Stats) -> bool:
        """Whether `client` completed its handshake by `deadline` (monotonic). A failure is
        counted by cause and logged once; the caller closes the connection."""
        try:
            client.start_tls(self.context, deadline)
        except OSError as exc:
            cause, detail = failure_cause(exc)
            stats.count(f"tls_handshakes.{cause}")
            _failures("TLS handshake with %s failed (%s): %s", peer, cause, detail)
            return False
        stats.count("tls_handshakes.ok")
        return True


def failure_cause(exc: OSError) -> tuple[str, str]:
    """A bounded word for the metrics and the detail for the log line."""
    if isinstance(exc, TimeoutError):
        return "timeout", "not complete within --header-timeout"
    if isinstance(exc, (ssl.SSLEOFError, ssl.SSLZeroReturnError)):
        return "closed", "the client closed the connection"
    if isinstance(exc, ssl.SSLError):
        return "refused", exc.reason or str(exc)  # garbage, no shared version or cipher, ...
    return "reset", exc.strerror or str(exc)
