"""The network: sockets read and written under deadlines (stream), the dialer with its
lookups, the client connection, handshakes with parent proxies, the handler threads.

May import: errors, wire, observe, settings.
"""
