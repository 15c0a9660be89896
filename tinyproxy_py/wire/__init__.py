"""The wire protocol, sans I/O: HTTP/1 request and response heads, chunked bodies, the
PROXY protocol header. Bytes in, values or a ProxyError out; nothing here knows a socket.

May import: errors.
"""
