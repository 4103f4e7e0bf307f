"""Start a Flower SuperNode with a shorter idle poll.

Flower 1.41's SuperNode sleeps 3 s whenever it finds no message for it, and 0.5 s while it waits
for its ClientApp's reply (``flwr/supernode/start_client_internal.py``). Every SecAgg+ round is
four messages per node, so on a loopback federation most of a round is spent asleep
(benchmarks/RESULTS.md, federated learning). This wrapper runs the unchanged
``flower-supernode`` with those sleeps capped at ``--poll-interval`` seconds:

    python -m genofed.federated.flowerproc supernode 0.1 --insecure --superlink 127.0.0.1:9092 ...

A shorter poll costs one HTTP request to the SuperLink per interval per node while idle.
"""

from __future__ import annotations

import sys
import time as _time
import types


def _capped_time(interval: float) -> types.ModuleType:
    shim = types.ModuleType("time")
    for name in dir(_time):
        if not name.startswith("__"):
            setattr(shim, name, getattr(_time, name))

    def sleep(seconds: float) -> None:
        _time.sleep(min(seconds, interval))

    shim.sleep = sleep  # type: ignore[attr-defined]
    return shim


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "supernode":
        raise SystemExit("usage: python -m genofed.federated.flowerproc supernode POLL_SECONDS [flower-supernode arguments]")
    interval = float(argv[1])
    import flwr.supernode.start_client_internal as sci

    sci.time = _capped_time(interval)  # type: ignore[attr-defined]
    from flwr.supernode.cli.flower_supernode import flower_supernode

    sys.argv = ["flower-supernode", *argv[2:]]
    flower_supernode()


if __name__ == "__main__":
    main()
