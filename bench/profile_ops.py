#!/usr/bin/python3
"""Per-operator self time of kd-bench and its Python twin, side by side, from their --profile traces.

    build/bench/kd-bench --workload w2 --steps 4 --profile /tmp/w2-cpp.json
    /usr/bin/python3 bench/python/kd_bench.py --workload w2 --steps 4 --profile /tmp/w2-py.json
    bench/profile_ops.py --steps 4 /tmp/w2-cpp.json /tmp/w2-py.json [--top 25]

Both traces come from LibTorch's legacy profiler (Chrome trace, one "X" event per operator call,
nested by time on each thread). An operator's self time is its duration less that of the calls
directly inside it, so the column sums to the profiled time of the steps. Times are ms per step.
The profiler's own overhead (a few µs per call) is in every figure, on both sides alike.
"""
import argparse
import collections
import json


def self_times(path):
    """{operator name: (self µs summed over the trace, calls)}."""
    with open(path) as f:
        events = [e for e in json.load(f) if e.get("ph") == "X"]
    by_thread = collections.defaultdict(list)
    for e in events:
        by_thread[e["tid"]].append(e)
    total = collections.defaultdict(float)
    calls = collections.Counter()
    for thread_events in by_thread.values():
        # Parents first at equal start times (longer first), then a stack of open calls.
        thread_events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack = []  # [event, µs taken by direct children]
        for e in thread_events:
            while stack and e["ts"] >= stack[-1][0]["ts"] + stack[-1][0]["dur"]:
                done, children = stack.pop()
                total[done["name"]] += done["dur"] - children
            if stack:
                stack[-1][1] += e["dur"]
            stack.append([e, 0.0])
            calls[e["name"]] += 1
        while stack:
            done, children = stack.pop()
            total[done["name"]] += done["dur"] - children
    return {name: (total[name], calls[name]) for name in total}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("traces", nargs="+", help="one or more --profile traces (first: the reference column)")
    ap.add_argument("--steps", type=int, required=True, help="the timed steps the traces cover")
    ap.add_argument("--labels", help="comma-separated column names (default: C++, Python, ...)")
    ap.add_argument("--top", type=int, default=25, help="operators shown, by the largest self time in any column")
    args = ap.parse_args()
    labels = args.labels.split(",") if args.labels else ["C++", "Python", "3rd", "4th"][: len(args.traces)]
    columns = [self_times(p) for p in args.traces]
    names = set().union(*columns)
    ms = lambda col, n: col.get(n, (0.0, 0))[0] / 1e3 / args.steps
    ranked = sorted(names, key=lambda n: -max(ms(c, n) for c in columns))
    width = max(len(n) for n in ranked[: args.top] + ["operator"])
    header = f"{'operator':<{width}}" + "".join(f"  {l + ' ms':>10}  {'calls':>6}" for l in labels)
    print(header)
    print("-" * len(header))
    for n in ranked[: args.top]:
        print(f"{n:<{width}}" + "".join(f"  {ms(c, n):>10.1f}  {c.get(n, (0, 0))[1] // args.steps:>6}" for c in columns))
    rest = ranked[args.top:]
    print(f"{'(all others)':<{width}}" + "".join(f"  {sum(ms(c, n) for n in rest):>10.1f}  {'':>6}" for c in columns))
    print(f"{'total':<{width}}" + "".join(f"  {sum(ms(c, n) for n in names):>10.1f}  {'':>6}" for c in columns))


if __name__ == "__main__":
    main()
