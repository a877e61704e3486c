"""Shared record set and comparison for the Python client scripts.

Every script produces the same deterministic record set (``make_records``) to
partition 0 of a fresh topic, reads it back and calls ``compare``. The set has
null and empty keys, null and empty values, binary and large values, repeated
header keys, headers with empty and null values, non-ASCII header keys, and
explicit CreateTime timestamps, so a broker that drops or rewrites any field
shows up as a diff.
"""

import sys
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple

N_RECORDS = 1000

Header = Tuple[str, Optional[bytes]]


class Rec(NamedTuple):
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[Header]
    timestamp: int


class Got(NamedTuple):
    offset: int
    key: Optional[bytes]
    value: Optional[bytes]
    headers: List[Header]
    timestamp: int


def make_records(n: int = N_RECORDS, null_header_values: bool = True) -> List[Rec]:
    """The record set. `null_header_values=False` for clients that cannot send a header with a
    null value (kafka-python rejects it in send()); those headers then carry b"null" instead.
    No record has both a null key and a null value (aiokafka refuses to send one)."""
    # A minute in the past: well inside any broker's timestamp acceptance window.
    base_ts = int(time.time() * 1000) - 60_000
    recs = []
    for i in range(n):
        if i % 50 == 7:
            key = None
        elif i % 97 == 0:
            key = b""
        else:
            key = f"key-{i}".encode()

        if i % 13 == 5 and key is not None:
            value = None
        elif i % 17 == 3:
            value = b""
        elif i % 100 == 42:
            value = (f"large-{i}-".encode() + bytes(range(256))) * 80  # ~21 KB
        elif i % 250 == 1:
            value = bytes(range(256)) * 4  # not valid UTF-8
        else:
            value = f"value-{i}-".encode() + b"abc" * (i % 10)

        kind = i % 4
        if kind == 0:
            headers: List[Header] = []
        elif kind == 1:
            headers = [("trace", f"t{i}".encode())]
        elif kind == 2:
            headers = [("h", b"a"), ("h", b"b"), ("empty", b""), ("null", None)]
        else:
            headers = [("\u00fcn\u00ef", "\u2713".encode()), ("null", None)]

        if not null_header_values:
            headers = [(k, b"null" if v is None else v) for k, v in headers]
        recs.append(Rec(key, value, headers, base_ts + i))
    return recs


def split(recs: Sequence[Rec], parts: int) -> List[Sequence[Rec]]:
    """Contiguous chunks, one per producer phase (codec), order preserved."""
    size = (len(recs) + parts - 1) // parts
    return [recs[i : i + size] for i in range(0, len(recs), size)]


def _short(v, limit: int = 60) -> str:
    r = repr(v)
    return r if len(r) <= limit else r[:limit] + f"...({len(v)} bytes)"


def compare(expected: Sequence[Rec], got: Sequence[Got], first_offset: int = 0) -> List[str]:
    """Return a list of human-readable differences (empty when identical)."""
    diffs: List[str] = []
    if len(got) != len(expected):
        diffs.append(f"record count: expected {len(expected)}, got {len(got)}")
    for i, (e, g) in enumerate(zip(expected, got)):
        want_off = first_offset + i
        if g.offset != want_off:
            diffs.append(f"record #{i}: offset expected {want_off}, got {g.offset}")
        if g.key != e.key:
            diffs.append(f"record #{i} (offset {g.offset}): key expected {_short(e.key)}, got {_short(g.key)}")
        if g.value != e.value:
            diffs.append(
                f"record #{i} (offset {g.offset}): value expected {_short(e.value)}, got {_short(g.value)}"
            )
        if list(g.headers) != list(e.headers):
            diffs.append(f"record #{i} (offset {g.offset}): headers expected {e.headers!r}, got {list(g.headers)!r}")
        if g.timestamp != e.timestamp:
            diffs.append(f"record #{i} (offset {g.offset}): timestamp expected {e.timestamp}, got {g.timestamp}")
    return diffs


def report(client: str, diffs: List[str]) -> None:
    """Print the outcome and exit: 0 when there is no difference, 1 otherwise."""
    if diffs:
        print(f"FAIL {client}: {len(diffs)} difference(s)", file=sys.stderr)
        for d in diffs[:50]:
            print("  " + d, file=sys.stderr)
        if len(diffs) > 50:
            print(f"  ... and {len(diffs) - 50} more", file=sys.stderr)
        sys.exit(1)
    print(f"OK {client}")
    sys.exit(0)


def fail(client: str, msg: str) -> None:
    print(f"FAIL {client}: {msg}", file=sys.stderr)
    sys.exit(1)


def check(client: str, cond: bool, msg: str) -> None:
    if not cond:
        fail(client, msg)


def arm_timeout(client: str, seconds: int, diffs: List[str]) -> None:
    """Hard per-script deadline, independent of the caller's timeout. On expiry it prints the
    differences found so far, so a hang late in the script does not hide earlier findings."""
    import os
    import signal

    def on_alarm(_sig, _frame):
        print(f"FAIL {client}: script timeout after {seconds}s; differences so far:", file=sys.stderr)
        for d in diffs[:50]:
            print("  " + d, file=sys.stderr)
        sys.stderr.flush()
        os._exit(2)

    signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
