"""The origin lives in tests/kit/origins.py; these names stay for imports not yet moved."""

from .kit.origins import OriginServer, pattern_bytes, running_origin

__all__ = ["OriginServer", "pattern_bytes", "running_origin"]
