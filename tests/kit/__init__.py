"""One traffic kit for the wire tests and for scripts/ (soak, tunnel measurements, bench).

Rules: standard library only, so a script needs nothing installed to use it; every
socket is on loopback; every wait has a deadline. Modules, each with one job:

  waits     the two named timeouts, wait_until, steady
  procfs    /proc readers: open fds, threads, RSS, who listens on a port
  clients   raw client sockets: request bytes, heads, exact reads, CONNECT tunnels, resets
  responses responses parsed by http.client over a raw socket
  servers   scripted loopback listeners, silent ports, free ports
  origins   a real HTTP/1.1 origin (http.server) with test routes
  faults    scripted targets that echo, flood, reset and stall
  traffic   the exchange mix and the worker threads that run it (short soak, soak.py)
"""
