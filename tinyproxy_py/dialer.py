"""Opening a TCP connection towards an origin, a CONNECT target or a parent proxy.

One place turns the ways a connect fails into the ProxyError a client should see, so a
timeout, a name that does not resolve and a refusal read alike wherever they happen.
Imports: errors.
"""

from __future__ import annotations

import socket

from .errors import BadGateway, Cause, GatewayTimeout

# (timeout, unresolvable, refused or unreachable): causes for the access log and stats.
ORIGIN_CAUSES = (Cause.CONNECT_TIMEOUT, Cause.DNS, Cause.REFUSED)


def dial(
    address: tuple[str, int],
    timeout: float,
    *,
    name: str = "",
    causes: tuple[Cause, Cause, Cause] = ORIGIN_CAUSES,
) -> socket.socket:
    """A connected socket with TCP_NODELAY, or the ProxyError the client should see.

    `name` is how errors call the peer (default host:port): a parent's, with its
    password masked, never the raw error text.
    """
    host, port = address
    name = name or f"{host}:{port}"
    timed_out, unresolvable, refused = causes
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except TimeoutError as exc:
        raise GatewayTimeout(f"connecting to {name} timed out", cause=timed_out) from exc
    except socket.gaierror as exc:
        raise BadGateway(f"cannot resolve {name}", cause=unresolvable) from exc
    except OSError as exc:
        raise BadGateway(f"cannot connect to {name}", cause=refused) from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock
