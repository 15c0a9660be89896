"""Chunked bodies (RFC 9112 §7.1), decoded from either peer: the size lines, extensions
and trailers are checked and dropped, the data comes out one piece per feed.
"""

from __future__ import annotations

import re

from ..errors import BadRequest, HeadTooLarge, ProxyError
from .grammar import TOKEN, parse_field

# chunk = chunk-size [ chunk-ext ] CRLF; chunk-ext = *( BWS ";" BWS name [ BWS "=" BWS value ] ),
# value = token / quoted-string (RFC 9112 §7.1.1). Anything else is refused, not skipped.
_CHUNK_LINE = re.compile(rb"([0-9A-Fa-f]+)(.*)", re.DOTALL)
_QUOTED = rb'"(?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t \x21-\x7e\x80-\xff])*"'
_CHUNK_EXT = re.compile(
    rb"(?:[ \t]*;[ \t]*%s(?:[ \t]*=[ \t]*(?:%s|%s))?)*" % (TOKEN.pattern, TOKEN.pattern, _QUOTED)
)


class ChunkedDecoder:
    """Decode a chunked body fed in arbitrary pieces.

    `feed` returns the data decoded from what it was given, as one piece (the proxy
    re-frames a body per read, never per chunk); once `done`, `unused` holds the bytes that
    follow the body (they belong to the next pipelined request, or make an origin's
    connection unfit for reuse). The same decoder reads clients' and origins' bodies:
    `error` is what a framing fault raises (400 for a client, 502 for an origin),
    `too_large` what a trailer section over its bound raises.

    The buffer is consumed by offset and compacted once per feed: a piece holding
    thousands of tiny chunks costs one pass, not a copy per chunk. `max_overhead`, if
    given, bounds the framing: once it exceeds that many bytes it may not outweigh the
    data (1-byte chunks cost a chunk's work per byte, which a client could use to burn
    the proxy's CPU at line rate).
    """

    MAX_SIZE_DIGITS = 16

    def __init__(
        self,
        max_line: int = 4096,
        max_trailer: int = 16384,
        error: type[ProxyError] = BadRequest,
        too_large: type[ProxyError] = HeadTooLarge,
        max_overhead: int | None = None,
    ) -> None:
        self._buf = bytearray()
        self._remaining = 0
        self._state = _SIZE
        self._trailer_bytes = 0
        self._max_line = max_line
        self._max_trailer = max_trailer
        self._error = error
        self._too_large = too_large
        self._max_overhead = max_overhead
        self.framing = 0  # bytes of size lines and chunk ends so far
        self.payload = 0  # bytes of chunk data so far
        self.done = False
        self.unused = b""

    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        buf = self._buf
        buf += data
        spans: list[memoryview] = []
        with memoryview(buf) as view:
            pos = self._decode(buf, view, spans)
            out = b"".join(spans)
            spans.clear()  # every export of the view released before the buffer shrinks
        del buf[:pos]
        if self.done:
            self.unused += bytes(buf)  # bytes fed after the end belong to what follows
            buf.clear()
        return out

    def _decode(self, buf: bytearray, view: memoryview, spans: list[memoryview]) -> int:
        """Decode from the front of `buf`, adding data to `spans`; the offset reached."""
        pos, size = 0, len(buf)
        while not self.done:
            if self._state == _SIZE:
                simple = _SIMPLE_SIZE_LINE.match(buf, pos)  # most lines: hex digits only
                if simple is not None:
                    self._remaining = int(simple.group(1), 16)
                    self.framing += simple.end() - pos
                    pos = simple.end()
                    self._state = _DATA if self._remaining else _TRAILER
                    self._check_overhead()
                    continue
            elif self._state == _DATA:
                taken = min(self._remaining, size - pos)
                if not taken:
                    break
                spans.append(view[pos : pos + taken])
                pos += taken
                self._remaining -= taken
                self.payload += taken
                if not self._remaining:
                    self._state = _DATA_END
                continue
            elif self._state == _DATA_END and buf.startswith(b"\r\n", pos):
                pos += 2
                self.framing += 2
                self._state = _SIZE
                continue
            end = self._line_end(buf, pos)
            if end < 0:
                break
            line, pos = bytes(view[pos:end]), end + 2
            self._line(line)
        return pos

    def _line_end(self, buf: bytearray, pos: int) -> int:
        """Where the line at `pos` ends (its CR), or -1 if it is not complete yet."""
        end = buf.find(b"\r\n", pos, pos + self._max_line + 2)
        if end < 0:
            if len(buf) - pos > self._max_line + 1:
                raise self._error("chunk line too long")
            if buf.find(b"\n", pos) >= 0 or buf.find(b"\r", pos, len(buf) - 1) >= 0:
                raise self._error("bare CR or LF in chunked framing")
        return end

    def _line(self, line: bytes) -> None:
        """One complete line of framing (without its CRLF), in the current state."""
        if b"\r" in line or b"\n" in line:
            raise self._error("bare CR or LF in chunked framing")
        self.framing += len(line) + 2
        if self._state == _SIZE:
            self._remaining = self._parse_size(line)
            self._state = _DATA if self._remaining else _TRAILER
            self._check_overhead()
        elif self._state == _DATA_END:
            if line:
                raise self._error("chunk data longer than its size")
            self._state = _SIZE
        else:
            self._trailer_line(line)

    def _check_overhead(self) -> None:
        limit = self._max_overhead
        if limit is not None and self.framing > limit and self.framing > self.payload + self._remaining:
            raise self._error(f"chunked framing outweighs its data ({self.framing} framing bytes)")

    def _parse_size(self, line: bytes) -> int:
        match = _CHUNK_LINE.fullmatch(line)
        if match is None or len(match.group(1)) > self.MAX_SIZE_DIGITS:
            raise self._error("invalid chunk size")
        if match.group(2) and not _CHUNK_EXT.fullmatch(match.group(2)):
            raise self._error("malformed chunk extension")
        return int(match.group(1), 16)

    def _trailer_line(self, line: bytes) -> None:
        if not line:
            self.done = True
            return
        self._trailer_bytes += len(line) + 2
        if self._trailer_bytes > self._max_trailer:
            raise self._too_large(f"trailer section larger than {self._max_trailer} bytes")
        try:
            parse_field(line)
        except BadRequest as exc:
            raise self._error(f"trailer: {exc.message}") from None


_SIZE, _DATA, _DATA_END, _TRAILER = "size", "data", "data-end", "trailer"
_SIMPLE_SIZE_LINE = re.compile(rb"([0-9A-Fa-f]{1,16})\r\n")  # no extension: the fast path
