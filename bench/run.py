"""Run the flower-practices benchmarks and print a results table (see bench/README.md).

    python bench/run.py                      # everything, ~8 minutes on 2 cores
    python bench/run.py --only stream --events 200000 --rate 5000
    python bench/run.py --only memory,render,cardinality --json results.json
    python bench/run.py --only http          # /metrics and /healthz under 1/10/1000 scrapers

Stream subjects (``--subjects``): floor = raw pub/sub read + the two JSON decodes, a =
bare celery Receiver, b = exporter (direct Redis path), b_kombu = exporter on Celery's
generic receiver, c = Flower, d = Flower + plugin; each ``--group`` (1: one event per
message, 24: workers' grouped bodies) is a stream of its own, with the ratios the issue-15
targets name. ``sustained``: the exporter alone on a fast grouped stream.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import inproc  # noqa: E402
from bench.http_bench import bench_http, print_http  # noqa: E402
from bench.stream_bench import bench_stream, bench_sustained  # noqa: E402


def ratio(subjects: dict, key: str, ref: str) -> str:
    if key not in subjects or ref not in subjects:
        return "n/a"
    return f"{subjects[key]['cpu_us_per_event'] / subjects[ref]['cpu_us_per_event']:.2f}x"


def print_stream(result: dict) -> None:
    subjects = result["subjects"]
    print(f"\n## Event stream ({result.get('broker', 'redis')}): {result['events']} events "
          f"in {result['messages']} messages "
          f"(group {result['group']}) at {result['rate']:.0f} events/s, "
          f"{result.get('burst', 'n/a')} per publish "
          f"(published in {result['publish_seconds']:.1f} s)\n")
    print("| subject | CPU µs/event | vs (a) | peak RSS MiB | idle CPU % |")
    print("|---|---:|---:|---:|---:|")
    for key, s in subjects.items():
        print(f"| ({key}) {s['label']} | {s['cpu_us_per_event']:.1f} | "
              f"{ratio(subjects, key, 'a')} | {s['peak_rss_mib']:.1f} | "
              f"{s['idle_cpu_percent']:.2f} |")
    print(f"\n(d) vs (c) CPU: {ratio(subjects, 'd', 'c')}")
    for key, s in subjects.items():
        if "events_seen" in s:
            expected = f" of {s['events_expected']}" if "events_expected" in s else ""
            print(f"({key}) events received = {s['events_seen']}{expected}")
    if "lost" in result:
        print(f"subjects that lost events: {result['lost'] or 'none'}")
    print_targets(result)


#: (subject, reference, most allowed for group 1, for grouped bodies): issue 15's targets
#: (Redis streams)
TARGETS = (("b", "a", 0.45, 0.5), ("b", "floor", 2.0, 2.0), ("b_kombu", "a", None, None),
           ("b_kombu", "floor", None, None), ("d", "c", 1.05, 1.05))
#: issue 18's targets for RabbitMQ streams (no floor subject there)
AMQP_TARGETS = (("b", "a", 0.6, 0.6), ("b_kombu", "a", None, None), ("d", "c", 1.05, 1.05))


def print_targets(result: dict) -> None:
    subjects = result["subjects"]
    print("\n| ratio | measured | target | met |\n|---|---:|---:|---|")
    targets = AMQP_TARGETS if result.get("broker") == "rabbitmq" else TARGETS
    for key, ref, single, grouped in targets:
        if key not in subjects or ref not in subjects:
            continue
        value = subjects[key]["cpu_us_per_event"] / subjects[ref]["cpu_us_per_event"]
        target = single if result["group"] <= 1 else grouped
        verdict = "-" if target is None else ("yes" if value <= target else "**no**")
        shown = "-" if target is None else f"<= {target:.2f}x"
        print(f"| ({key}) / ({ref}) | {value:.2f}x | {shown} | {verdict} |")


def print_sustained(result: dict) -> None:
    """One core keeps up with ``target_rate`` when the exporter's CPU per event is within
    a core's budget and it counted every event. The lag after the last publish is wall
    time: on a shared machine it also measures how long the exporter waited for a core."""
    lag = result["lag_seconds"]
    capacity = 1e6 / result["cpu_us_per_event"]
    met = lag is not None and capacity >= result["target_rate"]
    print(f"\n## Sustained: exporter alone, {result['events']} events in bodies of "
          f"{result['group']}, published at {result['published_rate']:.0f} events/s for "
          f"{result['publish_seconds']:.1f} s: {result['cpu_us_per_event']:.1f} µs/event, "
          f"so one core handles {capacity:.0f} events/s; "
          f"{result['cpu_share_while_publishing']:.0%} of one core while publishing; "
          + ("had NOT counted every event 60 s later" if lag is None else
             f"every event counted {lag:.2f} s after the last publish")
          + f" (target >= {result['target_rate']:.0f} events/s on one core: "
          + ("met" if met else "NOT met") + ")")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only",
                        default="stream,sustained,ingest,memory,render,cardinality,http",
                        help="comma-separated benchmarks to run (default: all)")
    parser.add_argument("--subjects", default="floor,a,b,b_kombu,c,d",
                        help="stream subjects (default: floor,a,b,b_kombu,c,d)")
    parser.add_argument("--events", type=int, default=100_000,
                        help="events in the stream benchmark (default 100000)")
    parser.add_argument("--rate", type=float, default=2000.0,
                        help="events published per second (default 2000)")
    parser.add_argument("--burst", type=int, default=None,
                        help="messages published between two pacing sleeps (Redis: per "
                             "pipeline; default 250 on Redis, 100 on RabbitMQ); 1 = each "
                             "message on its own, paced, as workers publish")
    parser.add_argument("--group", default="1,24",
                        help="comma-separated: buffer each worker's task events into list "
                             "bodies of up to N events, as Celery workers do (1: one event "
                             "per message; default 1,24: one stream each)")
    parser.add_argument("--sustained-rate", type=float, default=60_000.0,
                        help="events/s of the sustained benchmark (default 60000)")
    parser.add_argument("--sustained-events", type=int, default=300_000,
                        help="events in the sustained benchmark (default 300000)")
    parser.add_argument("--idle-seconds", type=float, default=5.0,
                        help="seconds of idle CPU measured per subject (default 5)")
    parser.add_argument("--broker", default="redis", choices=("redis", "rabbitmq"),
                        help="broker carrying the stream (rabbitmq: bench/amqp_stream_bench.py,"
                             " a fresh vhost on --amqp-url)")
    parser.add_argument("--amqp-url", default=None,
                        help="RabbitMQ for --broker rabbitmq (default amqp://guest:guest@"
                             "127.0.0.1:5672)")
    parser.add_argument("--redis-url", default=None,
                        help="use this Redis instead of a private redis-server")
    parser.add_argument("--tasks", type=int, default=2_000_000,
                        help="tasks fed in the memory benchmark (default 2000000)")
    parser.add_argument("--unfinished-every", type=int, default=0,
                        help="memory benchmark: every Nth task never finishes, its record "
                             "kept in flight (default 0: every task finishes)")
    parser.add_argument("--series", type=int, default=10_000,
                        help="series in the render benchmark (default 10000)")
    parser.add_argument("--renders", type=int, default=20,
                        help="renders timed in the render benchmark (default 20)")
    parser.add_argument("--scrapers", default="1,10,1000",
                        help="concurrent scrapers per level of the http benchmark")
    parser.add_argument("--scrape-seconds", type=float, default=5.0,
                        help="seconds each http level lasts (default 5)")
    parser.add_argument("--json", default=None, help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.burst is not None and args.burst < 1:
        parser.error("--burst must be at least 1")
    only = set(args.only.split(","))
    results: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                     "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}

    if "stream" in only:
        results["stream"] = []
        for group in (int(g) for g in args.group.split(",")):
            print(f"stream benchmark (group {group})...", file=sys.stderr)
            if args.broker == "rabbitmq":
                from bench.amqp_stream_bench import bench_amqp_stream

                # the floor reads Redis pub/sub: there is no AMQP floor subject
                which = [k for k in args.subjects.split(",") if k != "floor"]
                stream = bench_amqp_stream(which, args.events, args.rate,
                                           args.idle_seconds, args.amqp_url, group,
                                           args.burst or 100)
            else:
                stream = bench_stream(args.subjects.split(","), args.events, args.rate,
                                      args.idle_seconds, args.redis_url, group,
                                      args.burst or 250)
            stream["loadavg_after"] = Path("/proc/loadavg").read_text().split()[:3]
            results["stream"].append(stream)
            print_stream(stream)
    if "sustained" in only:
        print("sustained benchmark...", file=sys.stderr)
        results["sustained"] = bench_sustained(args.sustained_rate, args.sustained_events,
                                               redis_url=args.redis_url)
        print_sustained(results["sustained"])
    if "ingest" in only:
        results["ingest"] = []
        for group in (int(g) for g in args.group.split(",")):
            print(f"ingest benchmark (group {group})...", file=sys.stderr)
            ingest = inproc.bench_ingest(group)
            results["ingest"].append(ingest)
            print(f"\n## In-process, group {group} ({ingest['events']} events in "
                  f"{ingest['messages']} messages): CPU µs/event, best of 3\n")
            print("| step | µs/event |\n|---|---:|")
            for key, value in ingest["cpu_us_per_event"].items():
                print(f"| {key} | {value:.2f} |")
    if "memory" in only:
        print("memory benchmark...", file=sys.stderr)
        m = results["memory"] = inproc.bench_memory(args.tasks, min(100_000, args.tasks // 10),
                                                    args.unfinished_every)
        leak = "target within 10%" if not args.unfinished_every else \
            "grows by the in-flight records, kept 6 h: no target"
        unfinished = (f"every {args.unfinished_every}th task never finishing"
                      if args.unfinished_every else "every task finishing")
        print(f"\n## Memory ({unfinished}): RSS {m['rss_mib_at_checkpoint']:.1f} MiB after "
              f"{m['checkpoint']} tasks (the caps full), {m['rss_mib_at_half']:.1f} MiB after "
              f"{args.tasks // 2}, {m['rss_mib_at_end']:.1f} MiB after {m['tasks']}: growth "
              f"over the second half {m['growth_percent']:+.1f}% ({leak}); engine alone "
              f"{m['engine_cpu_us_per_event']:.2f} µs/event in-process")
        if "steady_to_early" in m:
            print(f"CPU per event with every cap full (last {m['checkpoint']} tasks) vs the "
                  f"first {m['checkpoint']}: {m['late_us_per_event']:.2f} / "
                  f"{m['early_us_per_event']:.2f} µs = {m['steady_to_early']:.2f}x "
                  f"(target <= 1.2x: "
                  f"{'met' if m['steady_to_early'] <= 1.2 else 'NOT met'})")
    if "render" in only:
        print("render benchmark...", file=sys.stderr)
        r = results["render"] = inproc.bench_render(args.series, args.renders)
        m = r["metrics"]
        print(f"\n## /metrics render: {r['series']} series, {r['bytes']} bytes, {args.renders} "
              f"renders as the exporter runs them: median {m['median_ms']:.1f} ms, worst "
              f"{m['max_ms']:.1f} ms (target: worst < 50 ms: "
              f"{'met' if m['max_ms'] < 50 else 'NOT met'}); OpenMetrics median "
              f"{r['openmetrics']['median_ms']:.1f} ms, worst {r['openmetrics']['max_ms']:.1f} ms; "
              f"render_text with the cyclic GC on: median {r['render_text']['median_ms']:.1f} ms, "
              f"worst {r['render_text']['max_ms']:.1f} ms; engine lock held per render: median "
              f"{r['lock_hold']['median_ms']:.1f} ms, worst {r['lock_hold']['max_ms']:.1f} ms; "
              f"prometheus_client.generate_latest on the same registry: median "
              f"{r['generate_latest']['median_ms']:.1f} ms")
    if "cardinality" in only:
        print("cardinality benchmark...", file=sys.stderr)
        defaults = {"max_workers": 1000, "max_task_names": 500, "max_queues": 200}
        results["cardinality"] = [inproc.bench_cardinality(),
                                  inproc.bench_cardinality(caps=defaults)]
        for c in results["cardinality"]:
            print(f"\n## Cardinality: {c['workers']} workers x {c['task_names']} task names "
                  f"x {c['queues']} queues ({c['tasks']} tasks, every name in every queue), "
                  f"caps {c['caps']}: {c['series']} series, /metrics {c['render_ms']:.0f} ms; "
                  f"distinct label values {c['distinct_label_values']}; "
                  f"flower_practices_label_overflow_total {c['overflow_counted']}")
    if "http" in only:
        print("http benchmark...", file=sys.stderr)
        results["http"] = bench_http([int(n) for n in args.scrapers.split(",")],
                                     ["identity", "prometheus"], args.scrape_seconds,
                                     redis_url=args.redis_url)
        print_http(results["http"])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
