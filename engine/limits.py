"""Per-fragment resource limits at a node: time, memory, result size and scan size.

A node runs each fragment inside a :func:`scope` that carries the fragment's limits:

* a wall-clock **deadline** (the node's ``[limits] query_seconds``, or sooner when the caller's
  own deadline passes or the call is cancelled: nobody computes for a coordinator that has gone);
  DuckDB statements are interrupted when it passes (:func:`watch`), and the genotype kernels
  check it between variant chunks (:func:`check`);
* a **memory** budget: the genotype paths estimate what they will allocate before allocating it
  (:func:`reserve`), and DuckDB's own ``memory_limit`` bounds everything it runs;
* a cap on the **groups** one partial may hold and on the **genotypes** one fragment may scan.

Exceeding one raises :class:`ResourceLimitError`, which names the limit and what to change; it
never carries data. Outside a scope (direct library use, tests) nothing is limited.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from .errors import GenofedError


class ResourceLimitError(GenofedError):
    """A fragment would exceed one of the node's resource limits (``rule`` names which)."""

    def __init__(self, message: str, rule: str):
        super().__init__(message)
        self.rule = rule


@dataclass
class Limits:
    """One fragment's limits (None: unlimited)."""

    deadline: float | None = None  # time.monotonic() value
    seconds: float | None = None  # the node's limit, for messages
    memory_bytes: int | None = None
    max_rows: int | None = None
    max_scan: int | None = None
    cancelled: Callable[[], bool] | None = None  # the caller hung up

    def expired(self) -> str | None:
        """Why this fragment must stop now ("time_limit", "cancelled"), or None."""
        if self.cancelled is not None:
            try:
                if self.cancelled():
                    return "cancelled"
            except Exception:  # noqa: BLE001 - a dead call context counts as cancelled
                return "cancelled"
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return "time_limit"
        return None


_current: contextvars.ContextVar[Limits | None] = contextvars.ContextVar("genofed_limits", default=None)


@contextlib.contextmanager
def scope(limits: Limits) -> Iterator[Limits]:
    """Run the enclosed fragment under ``limits`` (this thread and its context only)."""
    token = _current.set(limits)
    try:
        yield limits
    finally:
        _current.reset(token)


def current() -> Limits | None:
    return _current.get()


def _stop_error(why: str, lim: Limits) -> ResourceLimitError:
    if why == "cancelled":
        return ResourceLimitError("the caller cancelled the query (it timed out or disconnected); the node stopped working on it",
                                  "cancelled")
    secs = f"{lim.seconds:g} s" if lim.seconds is not None else "the caller's timeout"
    return ResourceLimitError(
        f"the fragment ran past this node's time limit ({secs}) and was stopped; narrow it (fewer variants or "
        "groups) or ask the data steward to raise [limits] query_seconds", "time_limit")


def check() -> None:
    """Raise :class:`ResourceLimitError` if the current fragment is past its deadline or cancelled."""
    lim = _current.get()
    if lim is None:
        return
    why = lim.expired()
    if why is not None:
        raise _stop_error(why, lim)


def reserve(nbytes: float, what: str) -> None:
    """Refuse, before allocating, a step that would need more than the fragment's memory budget."""
    lim = _current.get()
    if lim is None or lim.memory_bytes is None or nbytes <= lim.memory_bytes:
        return
    raise ResourceLimitError(
        f"{what} would need about {_mib(nbytes)} of memory, more than this node's per-query limit of "
        f"{_mib(lim.memory_bytes)}; narrow the query (fewer variants or groups) or ask the data steward to raise "
        "[limits] memory_mb", "memory_limit")


def check_rows(n: int, what: str = "the fragment") -> None:
    """Refuse a partial with more groups than the node releases in one answer."""
    lim = _current.get()
    if lim is None or lim.max_rows is None or n <= lim.max_rows:
        return
    raise ResourceLimitError(
        f"{what} would return more than {lim.max_rows:,} groups, this node's limit for one answer; aggregate "
        "over fewer keys or restrict the variants (WHERE chrom/pos), or ask the data steward to raise "
        "[limits] max_result_rows", "result_limit")


def check_scan(genotypes: int) -> None:
    """Refuse a fragment that would scan more genotypes (samples × variants) than the policy allows."""
    lim = _current.get()
    if lim is None or lim.max_scan is None or genotypes <= lim.max_scan:
        return
    raise ResourceLimitError(
        f"the query would scan about {genotypes:.3g} genotypes, more than this node's limit of {lim.max_scan:.3g} "
        "for one query; restrict the variants with a WHERE on chrom, pos or variant_id, or ask the data "
        "steward to raise [limits] max_scan_genotypes", "scan_limit")


def row_cap() -> int | None:
    """The current fragment's group cap (None: unlimited)."""
    lim = _current.get()
    return None if lim is None else lim.max_rows


@contextlib.contextmanager
def watch(cursor: Any, poll: float = 0.1) -> Iterator[None]:
    """Interrupt ``cursor`` (a DuckDB connection) when the current fragment's deadline passes or
    its caller cancels; the interruption surfaces as :class:`ResourceLimitError`."""
    lim = _current.get()
    if lim is None or (lim.deadline is None and lim.cancelled is None):
        yield
        return
    done = threading.Event()
    fired: list[str] = []

    def watchdog() -> None:
        while not done.wait(poll):
            why = lim.expired()
            if why is not None:
                fired.append(why)
                try:
                    cursor.interrupt()
                except Exception:  # noqa: BLE001 - the statement may have just finished
                    pass
                return

    t = threading.Thread(target=watchdog, name="genofed-deadline", daemon=True)
    t.start()
    try:
        yield
    except Exception:
        if fired:
            raise _stop_error(fired[0], lim) from None
        raise
    finally:
        done.set()
        t.join()  # the watchdog reads the call's context: it must be gone before the call returns
    if fired:  # interrupted between statements: the result may be incomplete
        raise _stop_error(fired[0], lim)


def _mib(n: float) -> str:
    if n >= 1 << 30:
        return f"{n / (1 << 30):.1f} GiB"
    return f"{n / (1 << 20):.0f} MiB"
