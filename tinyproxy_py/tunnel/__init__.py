"""The tunnel hub: one selectors loop that moves the bytes of every CONNECT tunnel and
upgraded connection, and closes both sockets of each when it ends.

May import: errors, wire, observe, settings, net.
"""
