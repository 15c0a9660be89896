"""The version, in a module of its own: the package face and the server both name it."""

__version__ = "0.1.0"
