"""Helpers for scripts/bench.py: /proc readings, the origin and the proxies, clients, wrk, the table.

Rules: every byte stays on 127.0.0.1; every loop is bounded by a count and a deadline;
whatever is started here is stopped here, by its PID. Standard library only, so the
bench itself needs nothing installed (the proxy under test needs its own dependencies).
"""
