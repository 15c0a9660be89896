"""The server: ProxyServer (listeners, lifecycle, stats snapshot), the handler that
serves one client connection, and the runtime a reload swaps whole.

May import: every layer below (errors, wire, observe, settings, net, tunnel, origin).
"""
