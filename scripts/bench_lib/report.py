"""The tables: one row per figure, one column per subject, ratios against direct.

Values are medians over the rounds; a ratio is the median of the proxy's values over
the median of direct's, and after/before (with --before) tinyproxy-py's median over the
before tree's. The detail table has every figure, the targets of issue 9 (they apply
to tinyproxy-py) and a verdict that says by how much each is met or missed. The
comparison table has the figures a user would choose a proxy by, the peers first, each
cell "value (ratio x)", and footnotes where a cell is missing or needs a caveat. Both are
Markdown, to paste into docs/performance.md as printed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .scenarios import Record

PY = "tinyproxy-py"
PY2 = "tinyproxy-py --workers 2"
PY_BEFORE = "tinyproxy-py (before)"  # --before: another source tree, e.g. main before a change
BARE = "bare threaded shape"  # scripts/floor.py's least thread-per-connection proxy
C = "tinyproxy"
DIRECT = "direct"

# A verdict: (met, detail). `met` is None when there is nothing to judge.
Verdict = tuple[bool | None, str]


@dataclass(frozen=True)
class Target:
    text: str
    judge: Callable[[Record, str], Verdict]  # (record, subject) -> verdict


@dataclass(frozen=True)
class Row:
    key: str
    label: str
    digits: int = 0
    ratio: bool = False  # show x direct next to each proxy
    target: Target | None = None
    subject: str = PY  # whose value the target judges


def at_least_ratio(key: str, minimum: float, also: float | None = None) -> Target:
    """proxy / direct >= minimum (and, if given, the weaker copy-path bound `also`)."""
    text = f">= {minimum:g}x direct" + (f" (copy path >= {also:g}x)" if also else "")

    def judge(record: Record, subject: str) -> Verdict:
        value, direct = record.median(subject, key), record.median(DIRECT, key)
        if value is None or not direct:
            return None, "not measured"
        ratio = value / direct
        if ratio >= minimum:
            return True, f"met: {ratio:.3f}x"
        verdict = f"missed: {ratio:.3f}x is {ratio / minimum:.0%} of {minimum:g}x"
        if also is not None:
            verdict += f"; copy-path {also:g}x {'met' if ratio >= also else 'missed'}"
        return False, verdict

    return Target(text, judge)


def at_most(key: str, maximum: float, unit: str) -> Target:
    def judge(record: Record, subject: str) -> Verdict:
        value = record.median(subject, key)
        if value is None:
            return None, "not measured"
        if value <= maximum:
            return True, f"met: {value:.3g} {unit}"
        return False, f"missed: {value:.3g} {unit}, {value - maximum:.3g} {unit} over"

    return Target(f"<= {maximum:g} {unit}", judge)


def at_least_other(key: str, other: str) -> Target:
    def judge(record: Record, subject: str) -> Verdict:
        value, theirs = record.median(subject, key), record.median(other, key)
        if value is None or theirs is None:
            return None, f"not measured ({other} missing?)"
        met = value >= theirs
        return met, f"{'met' if met else 'missed'}: {value / theirs:.2f}x {other}"

    return Target(f">= {other}", judge)


def not_implemented(text: str) -> Target:
    return Target(text, lambda record, subject: (None, "not implemented (no --workers option)"))


TARGET_CONNECTIONS = 8  # issue 9 set the targets of a and b at 8 wrk connections


def rows(connections: Sequence[int]) -> list[Row]:
    """The detail table's rows: a and b once per wrk connection count, then c-g."""
    found: list[Row] = []
    for n in connections:
        found += _keepalive_rows(n, judged=n == TARGET_CONNECTIONS)
    for n in connections:
        found += _new_connection_rows(n, judged=n == TARGET_CONNECTIONS)
    return found + list(OTHER_ROWS)


def _keepalive_rows(n: int, judged: bool) -> list[Row]:
    def ratio(size: str, minimum: float, metric: str = "rps") -> Target | None:
        return at_least_ratio(f"a_{size}_c{n}_{metric}", minimum) if judged else None

    at = f"a. keep-alive {{}}, {n} conns"
    return [
        Row(f"a_100_c{n}_rps", f"{at.format('100 B')}, req/s", ratio=True, target=ratio("100", 0.05)),
        Row(f"a_100_c{n}_p50", f"{at.format('100 B')}, p50 ms", 2),
        Row(f"a_100_c{n}_p99", f"{at.format('100 B')}, p99 ms", 2),
        Row(f"a_100_c{n}_cpu", f"{at.format('100 B')}, proxy CPU %"),
        Row(f"a_16k_c{n}_rps", f"{at.format('16 KiB')}, req/s", ratio=True, target=ratio("16k", 0.05)),
        Row(f"a_16k_c{n}_p50", f"{at.format('16 KiB')}, p50 ms", 2),
        Row(f"a_16k_c{n}_p99", f"{at.format('16 KiB')}, p99 ms", 2),
        Row(f"a_1m_c{n}_mibs", f"{at.format('1 MiB')}, MiB/s", ratio=True, target=ratio("1m", 0.3, "mibs")),
        Row(f"a_100_c{n}_rps", f"{at.format('100 B')}, req/s, --workers 2", ratio=True,
            target=ratio("100", 0.10), subject=PY2),
        Row(f"a_16k_c{n}_rps", f"{at.format('16 KiB')}, req/s, --workers 2", ratio=True,
            target=ratio("16k", 0.10), subject=PY2),
    ]  # fmt: skip


def _new_connection_rows(n: int, judged: bool) -> list[Row]:
    target = at_least_other(f"b_c{n}_rps", C) if judged else None
    return [
        Row(f"b_c{n}_rps", f"b. new connection per request, {n} conns, req/s", ratio=True, target=target),
        Row(f"b_c{n}_cpu", f"b. new connection per request, {n} conns, proxy CPU %"),
    ]


OTHER_ROWS: tuple[Row, ...] = (
    Row(
        "c_1_mibs",
        "c. CONNECT bulk, 1 stream, MiB/s",
        ratio=True,
        target=at_least_ratio("c_1_mibs", 0.55, 0.35),
    ),
    Row("c_1_cpu", "c. CONNECT bulk, 1 stream, proxy CPU %"),
    Row(
        "c_8_mibs",
        "c. CONNECT bulk, 8 streams, MiB/s",
        ratio=True,
        target=at_least_ratio("c_8_mibs", 0.6, 0.35),
    ),
    Row("c_8_peak", "c. peak RSS during 8 streams, MiB", 1, target=at_most("c_8_peak", 48, "MiB")),
    Row(
        "d_plain_tps",
        "d. CONNECT+GET+close, plain, /s",
        ratio=True,
        target=at_least_ratio("d_plain_tps", 0.7),
    ),
    Row("d_tls_tps", "d. CONNECT+GET+close, TLS, /s", ratio=True, target=at_least_ratio("d_tls_tps", 0.7)),
    Row("e_rss", "e. idle tunnel: RSS KiB each", 2, target=at_most("e_rss", 2, "KiB")),
    Row("e_threads", "e. idle tunnel: threads each", 3, target=at_most("e_threads", 0, "threads")),
    Row("e_fds", "e. idle tunnel: fds each", 3, target=at_most("e_fds", 2, "fds")),
    Row("e_fds_left", "e. after close: fds vs baseline", target=at_most("e_fds_left", 0, "fds")),
    Row(
        "e_threads_left",
        "e. after close: threads vs baseline",
        target=at_most("e_threads_left", 0, "threads"),
    ),
    Row("e_rss_left", "e. after close: RSS vs baseline, MiB", 1),
    Row("f_fds_left", "f. 500 aborts: fds vs baseline", target=at_most("f_fds_left", 0, "fds")),
    Row(
        "f_threads_left", "f. 500 aborts: threads vs baseline", target=at_most("f_threads_left", 0, "threads")
    ),
    Row("f_settle", "f. 500 aborts: seconds to settle", 1),
    Row("g_tunnel", "g. slow reader, tunnel: RSS growth MiB", 2, target=at_most("g_tunnel", 1, "MiB")),
    Row("g_plain", "g. slow reader, plain: RSS growth MiB", 2, target=at_most("g_plain", 1, "MiB")),
    Row("idle_rss", "idle process at start: RSS MiB", 1, target=at_most("idle_rss", 25, "MiB")),
    Row("idle_anon", "idle process at start: private (anon) MiB", 1),
)


def render(record: Record, subjects: Sequence[str], aborts: int, connections: Sequence[int]) -> str:
    """The Markdown table: direct, each proxy (with x direct where it means something), target."""
    proxies = [s for s in subjects if s not in (DIRECT, PY2)]
    head = ["figure", DIRECT]
    for name in proxies:
        head += [name, "x"] + (
            ["after/before"] if name == PY_BEFORE else ["ours/bare"] if name == BARE else []
        )
    head += ["target (tinyproxy-py)", "verdict"]
    lines = [_line(head), _line(["---"] + ["---:"] * (len(head) - 3) + ["---", "---"])]
    for row in rows(connections):
        if row.subject == PY2 and PY2 not in subjects:
            lines.append(_line([row.label, *[""] * (len(head) - 3), row.target.text if row.target else "",
                                "not implemented (no --workers option)"]))  # fmt: skip
            continue
        lines.append(_line(_cells(record, row, proxies, aborts)))
    return "\n".join(lines)


def _cells(record: Record, row: Row, proxies: Sequence[str], aborts: int) -> list[str]:
    label = row.label.replace("500 aborts", f"{aborts} aborts")
    direct = record.median(DIRECT, row.key)
    cells = [label, _number(direct, row.digits)]
    for name in proxies:
        if row.subject != PY and name != PY:
            cells += [""] * (3 if name in (PY_BEFORE, BARE) else 2)  # a row about one variant of tinyproxy-py
            continue
        subject = row.subject if name == PY else name
        value = record.median(subject, row.key)
        cells.append(_number(value, row.digits))
        cells.append(f"{value / direct:.3f}" if row.ratio and value is not None and direct else "")
        if name in (PY_BEFORE, BARE):  # tinyproxy-py over it, measured in the same run
            ours = record.median(PY, row.key)
            cells.append(f"{ours / value:.3f}" if ours is not None and value else "")
    if row.target is None:
        return [*cells, "", ""]
    _, verdict = row.target.judge(record, row.subject)
    return [*cells, row.target.text, verdict]


def verdicts(
    record: Record, subjects: Sequence[str], connections: Sequence[int]
) -> list[tuple[str, bool | None, str]]:
    """(row label, met, detail) for every row with a target."""
    found: list[tuple[str, bool | None, str]] = []
    for row in rows(connections):
        if row.target is None:
            continue
        if row.subject == PY2 and PY2 not in subjects:
            found.append((row.label, None, "not implemented"))
            continue
        met, detail = row.target.judge(record, row.subject)
        found.append((row.label, met, detail))
    return found


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return "-"
    if digits == 0:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def _line(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


# --- the comparison table ---

OURS = (PY, PY_BEFORE, PY2)
TIMES = "\N{MULTIPLICATION SIGN}"
HEADERS = {PY2: "`--workers 2`", DIRECT: "direct (no proxy)"}


def compare_rows(connections: Sequence[int]) -> list[tuple[str, str, bool]]:
    """(key, label, with a ratio against direct): what a user would choose a proxy by."""
    found = [
        (f"b_c{n}_rps", f"new connection per 100 B request, {n} conns, req/s", True) for n in connections
    ]
    found += [
        ("d_plain_tps", "CONNECT + GET + close, tunnels/s", True),
        ("d_tls_tps", "CONNECT + TLS GET + close, tunnels/s", True),
    ]
    for n in connections:
        found += [
            (f"a_100_c{n}_rps", f"keep-alive 100 B, {n} conns, req/s", True),
            (f"a_100_c{n}_p99", f"keep-alive 100 B, {n} conns, p99 ms", False),
        ]
    return [
        *found,
        ("c_1_mibs", "CONNECT bulk, 1 stream, MiB/s", True),
        ("c_8_mibs", "CONNECT bulk, 8 streams, MiB/s", True),
    ]


class Footnotes:
    """Numbered once per distinct text, in the order they are first cited."""

    def __init__(self) -> None:
        self.texts: dict[str, int] = {}

    def cite(self, text: str | None) -> str:
        if not text:
            return ""
        number = self.texts.setdefault(text, len(self.texts) + 1)
        return f" [{number}]"

    def lines(self) -> list[str]:
        return [f"[{number}] {text}" for text, number in self.texts.items()]


def render_compare(
    record: Record,
    subjects: Sequence[str],
    connections: Sequence[int],
    labels: dict[str, str],
    caveats: dict[str, str],
) -> str:
    """Rows: figures; columns: the peers, then tinyproxy-py's variants, then direct.

    `labels` names a column (with its version), `caveats` footnotes it. A row nobody
    measured (--only) is left out.
    """
    columns = [s for s in subjects if s not in (DIRECT, *OURS)]
    columns += [s for s in OURS if s in subjects] + [DIRECT]
    notes = Footnotes()
    head = [""] + [labels.get(s, HEADERS.get(s, s)) + notes.cite(caveats.get(s)) for s in columns]
    lines = [_line(head), _line(["---"] * len(head))]
    for key, label, ratio in compare_rows(connections):
        if all(record.median(s, key) is None for s in columns):
            continue
        direct = record.median(DIRECT, key) if ratio else None
        cells = [_compare_cell(record, s, key, None if s == DIRECT else direct, notes) for s in columns]
        lines.append(_line([label, *cells]))
    return "\n".join([*lines, "", *notes.lines()])


def _compare_cell(record: Record, subject: str, key: str, direct: float | None, notes: Footnotes) -> str:
    """The value and its ratio to direct, or "-"; a footnote marker if the record has one."""
    value = record.median(subject, key)
    why = record.footnote_for(subject, key)
    mark = notes.cite(f"{subject}: {why}" if why else None)
    if value is None:
        return "-" + mark
    text = f"{value:,.0f}" if value >= 100 else f"{value:.3g}"
    if direct:
        ratio = value / direct
        text += f" ({ratio:.2f}{TIMES})" if ratio >= 0.1 else f" ({ratio:.2g}{TIMES})"
    return text + mark
