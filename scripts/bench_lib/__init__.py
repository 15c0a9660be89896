"""Helpers for scripts/bench.py: the origin and the proxies, clients, wrk, the table, CPU and peak RSS.

They build on the traffic kit in tests/kit (/proc readers, waits, free ports, resets),
so the repo root must be on sys.path (the scripts put it there). Rules: every byte
stays on 127.0.0.1; every loop is bounded by a count and a deadline; whatever is
started here is stopped here, by its PID. Standard library only, like the kit, so the
bench itself needs nothing installed (the proxy under test needs its own dependencies).
"""
