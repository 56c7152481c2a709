"""Per-event cost in CPU instructions, counted by valgrind's callgrind: repeatable anywhere.

Timings move with the machine (other jobs, frequency scaling, another VM: the ratios in
the README moved by up to 20 % between VMs); instruction counts do not: callgrind counts
the same for the same code, interpreter and input whatever else the machine runs. This
is the measure to compare two versions of the hot path with, on a busy machine too. It
is not a measure of time across different kinds of code: orjson and hiredis run many
instructions per cycle, the interpreter few, so the floor's share of the instructions is
larger than its share of the CPU seconds (compare a subject with itself, version to
version; the time ratios are bench/run.py's).

Each subject runs in a child process under callgrind, collecting only inside the measured
call (``--toggle-collect`` on the C function that calls it), on two stream lengths; the
per-event figure is ``(I(long) - I(short)) / (long - short)``, so that warm-up (caches
filling, the interpreter specialising) cancels out. The stream is bench/events.py's, made
deterministic (task ids from a seeded generator, ``PYTHONHASHSEED=0``), as the Redis wire
carries it (bench/inproc.py's ingest benchmark, in CPU seconds, is its timed twin).

Subjects:

- ``floor``: hiredis' RESP reader and the two JSON decodes per message (bench/floor.py);
- ``exporter``: the direct Redis path as the exporter wires it (RESP, ``EventDecoder``
  into ``Engine.observe_many``, every rule on);
- ``engine``: ``Engine.observe_many`` alone on decoded events, one message's per call;
- ``flower``: Flower's ``EventsState.event`` alone;
- ``flower_plugin``: the same with the plugin's tap feeding the engine in batches.

Usage: ``python bench/instructions.py [--group 24] [--events 8000] [--subjects ...]``
(valgrind from Debian's ``valgrind`` package; about a minute per subject).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SUBJECTS = ("floor", "exporter", "engine", "flower", "flower_plugin")
#: the C function the measured call runs inside (``sorted(key=...)``): collection is on
#: only within it
_TOGGLE = "list_sort_impl"


def _stream(n_events: int, group: int) -> list[tuple[str, bytes, int]]:
    """The encoded messages of a deterministic ``n_events`` stream."""
    import random
    import uuid

    rng = random.Random(0)
    uuid.uuid4 = lambda: uuid.UUID(int=rng.getrandbits(128), version=4)
    from bench.events import encode, stream

    return encode(stream(n_events, start=1_700_000_000.0, rate=4000), 0, group)


def _child(subject: str, n_events: int, group: int) -> None:
    """Prepare ``subject`` on the stream, then run it inside :data:`_TOGGLE`."""
    import types
    from binascii import a2b_base64

    import orjson
    from celery import Celery

    from bench.inproc import _wire, read_wire
    from flower_practices.config import Settings
    from flower_practices.engine import Engine
    from flower_practices.events.fast_redis import EventDecoder
    from flower_practices.events.status import StreamStatus

    wire = _wire(_stream(n_events, group))
    app = Celery("bench", broker="redis://127.0.0.1:6379/0", set_as_current=False)

    messages: list[list[dict]] = []
    read_wire(wire, EventDecoder(app, None, StreamStatus(),  # type: ignore[arg-type]
                      lambda events: messages.append([dict(e) for e in events])).feed)
    run: object
    if subject == "floor":
        loads = orjson.loads
        run = lambda: read_wire(wire, lambda p: loads(a2b_base64(loads(p)["body"])))  # noqa: E731
    elif subject == "exporter":
        engine = Engine(Settings())
        decoder = EventDecoder(app, engine.observe, engine.stream_status,
                               engine.observe_many)
        run = lambda: read_wire(wire, decoder.feed)  # noqa: E731
    elif subject == "engine":
        observe_many = Engine(Settings()).observe_many

        def run() -> None:
            for events in messages:
                observe_many(events)
    else:
        from flower.events import EventsState

        from flower_practices.flower_plugin.plugin import flush_tap, tap_state

        holder = types.SimpleNamespace(state=EventsState(max_tasks_in_memory=10_000))
        if subject == "flower_plugin":
            engine = Engine(Settings())
            holder.io_loop = types.SimpleNamespace(call_later=lambda *a: None)
            tap_state(holder, engine.observe, engine.stream_status, engine.observe_many)
        handle = holder.state.event
        events = [e for batch in messages for e in batch]

        def run() -> None:
            for i, ev in enumerate(events):
                handle(ev)
                if i % 200 == 199 and subject == "flower_plugin":
                    flush_tap(holder)  # the plugin's tap flushes per IOLoop tick
    sorted([0], key=lambda _: run())  # collected: the call to run() inside list_sort_impl


def _instructions(subject: str, n_events: int, group: int) -> int:
    out = ROOT / f".callgrind.{subject}.{n_events}.out"
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--collect-atstart=no",
         f"--toggle-collect={_TOGGLE}", f"--callgrind-out-file={out}",
         sys.executable, __file__, "--child", subject, "--events", str(n_events),
         "--group", str(group)],
        capture_output=True, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}, check=False)
    out.unlink(missing_ok=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"{subject}: callgrind failed ({proc.returncode}):\n"
                           f"{proc.stderr[-2000:]}")
    return int(found.group(1))


def measure(subjects: list[str], n_events: int, group: int) -> dict[str, float]:
    """Instructions per event of each subject (two lengths: ``n_events`` and 3x)."""
    out: dict[str, float] = {}
    for subject in subjects:
        short = _instructions(subject, n_events, group)
        long = _instructions(subject, 3 * n_events, group)
        out[subject] = (long - short) / (2 * n_events)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--subjects", default=",".join(SUBJECTS))
    parser.add_argument("--events", type=int, default=8000)
    parser.add_argument("--group", type=int, default=24)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args.child, args.events, args.group)
        return 0
    subjects = [s for s in args.subjects.split(",") if s]
    unknown = sorted(set(subjects) - set(SUBJECTS))
    if unknown:
        parser.error(f"unknown subjects {unknown}; known: {', '.join(SUBJECTS)}")
    result = measure(subjects, args.events, args.group)
    print(f"## Instructions per event (callgrind), group {args.group}, "
          f"{args.events} and {3 * args.events} events\n")
    print("| subject | instructions/event |")
    print("|---|---:|")
    for subject, value in result.items():
        print(f"| {subject} | {value:,.0f} |")
    if "flower" in result and "flower_plugin" in result:
        print(f"\nFlower + plugin / Flower: {result['flower_plugin'] / result['flower']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
