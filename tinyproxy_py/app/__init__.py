"""Programs built on the proxy: the command line (click lives here alone), the
supervisor of --workers, the pytest plugin.

May import: anything in the package; nothing imports it (but __main__).
"""
