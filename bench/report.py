"""Markdown tables from the benchmarks' JSON (what docs/performance.md shows).

    .venv/bin/python bench/report.py fires.json [knee.json ...] lateness.json failover.json

Each file is recognised by its "benchmark" key; runs of several fires.json files are shown in
one table per file.
"""

from __future__ import annotations

import json
import sys


def _n(x, digits=0) -> str:
    if x is None:
        return "-"
    if isinstance(x, float) and digits:
        return f"{x:,.{digits}f}"
    return f"{round(x):,}"


def _ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:,.1f}" if x < 100 else f"{round(x):,}"


def fires(data: dict) -> str:
    out = ["| members | schedules | asked/s | fires/s | dup | miss | misfired | pending at stop "
           "(oldest) | lateness p50 / p99 / max ms | CPU % per member | RSS MB per member "
           "| PostgreSQL CPU % | machine CPU % |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lat = r["lateness_ms"]
        pm = r["per_member"].values()
        pending = _n(r["pending_at_stop"] + r["not_started"])
        if r.get("oldest_pending_age_s"):
            pending += f" ({r['oldest_pending_age_s']:.0f} s)"
        out.append(
            f"| {r['members']} | {_n(r['schedules'])} | {_n(r['requested_fires_per_s'])} "
            f"| {_n(r['achieved_fires_per_s'])} | {r['duplicates']} | {r['missed']} "
            f"| {_n(r['misfired'])} | {pending} "
            f"| {_ms(lat['p50'])} / {_ms(lat['p99'])} / {_ms(lat['max'])} "
            f"| {' / '.join(_n(m['cpu_pct']) for m in pm)} "
            f"| {' / '.join(_n(m['rss_mb_max']) for m in pm)} "
            f"| {_n(r['postgres_cpu_pct'])} | {_n(r['machine_cpu_pct'])} |")
    return "\n".join(out)


def lateness(data: dict) -> str:
    out = ["| workers | anchors | fires/s | dup | miss | p50 ms | p99 ms | max ms | member CPU % "
           "| PostgreSQL CPU % | target p99 < 20 ms |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in data["runs"]:
        lat = r["lateness_ms"]
        out.append(
            f"| {r['workers']} | {r['anchors']} | {_n(r['achieved_fires_per_s'])} "
            f"| {r['duplicates']} | {r['missed']} | {_ms(lat['p50'])} | {_ms(lat['p99'])} "
            f"| {_ms(lat['max'])} | {_n(r['per_member']['m1']['cpu_pct'])} "
            f"| {_n(r['postgres_cpu_pct'])} | {'met' if lat['p99'] < 20 else '**missed**'} |")
    return "\n".join(out)


def failover(data: dict) -> str:
    out = ["| cluster | signal | fail-over median / max s | runs s | longest gap median / max s "
           "| dup | miss | misfired | recovery runs | fenced tasks | target |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in data["scenarios"]:
        m = s["summary"]
        f = m["failover_s"]
        kill = s["how"] == "kill"
        met = f["max"] < s["target_s"] if kill else f["max"] <= s["target_s"]
        out.append(
            f"| {s['cluster']} | {'kill -9' if kill else 'SIGSTOP 15 s'} "
            f"| {f['median']:.2f} / {f['max']:.2f} | {', '.join(f'{x:.2f}' for x in f['all'])} "
            f"| {m['max_gap_s']['median']:.2f} / {m['max_gap_s']['max']:.2f} "
            f"| {m['duplicates']} | {m['missed']} | {m['misfired']} | {m['recovery_runs']} "
            f"| {m['fencing_violations']} "
            f"| {'<' if kill else '≤'} {s['target_s']:g} s: {'met' if met else '**missed**'} |")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    for path in argv:
        data = json.load(open(path))  # noqa: SIM115
        kind = data.get("benchmark")
        m = data.get("machine", {})
        print(f"<!-- {path}: commit {m.get('tree', {}).get('commit')}, "
              f"modified {m.get('tree', {}).get('modified')}, DEBUG {m.get('members_DEBUG')}, "
              f"prototypes {m.get('prototypes') or '-'} -->")
        print({"fires": fires, "lateness": lateness, "failover": failover}[kind](data))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
