"""What the proxy tells about itself: counters and gauges, the access log record, the
stats pages (HTML, Prometheus, JSON), log lines that come in floods.

May import: errors.
"""
