"""`python -m tinyproxy_py` runs the command line."""

from .app.cli import main

main(prog_name="tinyproxy-py")
