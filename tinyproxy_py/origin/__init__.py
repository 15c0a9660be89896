"""The origin side of a plain request: the exchange (send the request, relay the
response), the connection pool, and urllib3 behind it.

May import: errors, wire, observe, settings, net, tunnel.
"""
