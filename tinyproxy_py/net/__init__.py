"""The network: the one I/O seam (stream: every socket read and write, plain or TLS, and
what a socket failure tells the client), the dialer with its lookups, the client
connection, handshakes with parent proxies, the handler threads.

May import: errors, wire, observe, settings.
"""
