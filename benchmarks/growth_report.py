"""The "How cost grows" part of the report: tables, the year-of-traffic reading, growth.png.

Reads what growth.py wrote (results/tmp/growth.json); report.py calls it.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

# With the 24 h TTL the table holds a day of keys, plus what the purge schedule
# leaves: expired rows wait up to one interval for the next purge (hourly here).
TTL_S = 86_400
PURGE_INTERVAL_S = 3_600
RATES = [10, 100, 1000]


def _mb(value: float) -> str:
    if value >= 1024**3:
        return f"{value / 1024**3:.1f} GB"
    return f"{value / 1024**2:.0f} MB"


def _size(size: int) -> str:
    return f"{size // 1024**2} MB" if size >= 1024**2 else f"{size // 1024} KB"


def _results_table(first_column: str, points: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One row per configuration per point; ratios and CPU ratios to that point's baseline."""
    lines = [
        f"| {first_column} | configuration | req/s | ratio | ratios per round | p99 ms "
        "| CPU ms/req (app + db + Redis) | CPU ratio |",
        "|---|---|---:|---:|---|---:|---:|---:|",
    ]
    for point, results in points:
        base_cpu = next((r["cpu_ms"] for r in results.values() if r["mode"] is None), None)
        for r in results.values():
            cpu_ratio = f"{base_cpu / r['cpu_ms']:.2f}" if base_cpu and r["cpu_ms"] else "-"
            lines.append(
                f"| {point} | {r['label']} | {r['rps']:.0f} | {r['ratio']:.2f} "
                f"| {' '.join(f'{x:.2f}' for x in r['ratios'])} | {r['p99_ms']:.1f} "
                f"| {r['app_cpu_ms']:.2f} + {r['db_cpu_ms']:.2f} "
                f"+ {r.get('redis_cpu_ms', 0):.2f} | {cpu_ratio} |"
            )
    return lines


def _first(point: dict[str, Any]) -> dict[str, float]:
    """What a first request costs at one rows point: its ratio, and CPU beyond the baseline."""
    results = point["results"]
    ours, base = results["ours-db-first"], results["baseline"]
    return {
        "rows": point["rows"],
        "ratio": ours["ratio"],
        "extra_cpu_ms": ours["cpu_ms"] - base["cpu_ms"],
        "p99_ms": ours["p99_ms"],
    }


def estimate(points: list[dict[str, float]], rows: float, field: str) -> tuple[float, bool]:
    """``field`` at ``rows`` from the measured points, and whether it is extrapolated.

    Between points: linear in rows. Beyond the last: a B-tree's cost grows with
    its depth, the logarithm of its size, so the slope per decade of the last two
    points (when both hold rows) carries on; otherwise their linear slope.
    """
    ordered = sorted(points, key=lambda p: p["rows"])
    if len(ordered) == 1:
        return ordered[0][field], rows != ordered[0]["rows"]
    for a, b in itertools.pairwise(ordered):
        if rows <= b["rows"]:
            if rows < a["rows"] or b["rows"] == a["rows"]:
                return a[field], rows < a["rows"]
            share = (rows - a["rows"]) / (b["rows"] - a["rows"])
            return a[field] + share * (b[field] - a[field]), False
    a, b = ordered[-2], ordered[-1]
    if a["rows"] > 0:
        per_decade = (b[field] - a[field]) / math.log10(b["rows"] / a["rows"])
        return b[field] + per_decade * math.log10(rows / b["rows"]), True
    return b[field] + (b[field] - a[field]) / (b["rows"] - a["rows"]) * (rows - b["rows"]), True


def year_reading(growth: dict[str, Any]) -> list[str]:
    """What a user at 10, 100 and 1,000 first requests/s should expect, from the measured points."""
    rows_points = [p for p in growth.get("rows", []) if "ours-db-first" in p["results"]]
    sized = [p for p in rows_points if p.get("bytes_per_row")]
    if not rows_points or not sized:
        return []
    largest = max(sized, key=lambda p: p["rows"])
    per_row = largest["bytes_per_row"]
    measured = [_first(p) for p in rows_points]
    purge = growth.get("purge") or {}
    purge_rate = None
    if purge.get("purge", {}).get("wall_s"):
        purge_rate = purge["rows_expired"] / purge["purge"]["wall_s"]
    held_s = TTL_S + PURGE_INTERVAL_S
    per_key = next(
        (p["redis_bytes_per_key"] for p in reversed(rows_points) if p.get("redis_bytes_per_key")),
        None,
    )
    lines = [
        "### What a year of traffic costs",
        "",
        f"With the 24 h TTL the table holds about one day of keys: rate x 86,400, plus up "
        f"to an hour's worth more that an hourly purge has not yet deleted, so a year of "
        f"traffic costs no more table than a day of it; what a year adds is 365 times the "
        f"daily writes and purge time below. Bytes per row: {per_row} (table, "
        f"TOAST and indexes over {largest['rows']:,} rows, measured above). Per-request "
        f"cost: the first request's ratio to the undecorated view and its CPU beyond the "
        f"baseline's, read off the measured points (linear between them; beyond the "
        f"largest, extended by the last two points' slope per decade of rows, marked *). "
        + (
            f"Redis holds exactly a day (its keys expire by themselves), at the measured "
            f"{per_key} bytes per key. "
            if per_key
            else ""
        )
        + (
            f"Purge: the measured {purge['rows_expired']:,}-row purge deleted "
            f"{purge_rate:,.0f} rows/s."
            if purge_rate
            else ""
        ),
        "",
        "| first requests/s | rows held | table + indexes on disk | first-request ratio "
        "| store CPU ms/req | record bytes written per day | daily purge time "
        "| or on Redis: memory |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for rate in RATES:
        held = rate * held_s
        ratio, far = estimate(measured, held, "ratio")
        cpu, _ = estimate(measured, held, "extra_cpu_ms")
        mark = "*" if far else ""
        purge_time = f"{rate * TTL_S / purge_rate:.0f} s" if purge_rate else "-"
        lines.append(
            f"| {rate:,} | {held:,} | {_mb(held * per_row)} | {ratio:.2f}{mark} "
            f"| {cpu:.2f}{mark} | {_mb(rate * TTL_S * per_row)} | {purge_time} "
            f"| {_mb(rate * TTL_S * per_key) if per_key else '-'} |"
        )
    return lines


def _purge_lines(purge: dict[str, Any]) -> list[str]:
    p, before, during = purge["purge"], purge["claims_before"], purge["claims_during"]
    return [
        "| expired rows | live rows | fill s | bytes per row | purge wall s | peak RSS MB "
        "| batches | claims p50 / p99 ms before | during | claim errors | expired left "
        "| live kept |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|",
        f"| {purge['rows_expired']:,} | {purge['rows_live']:,} | {purge.get('fill_s', '-')} "
        f"| {purge.get('bytes_per_row', '-')} | {p['wall_s']} | {p['peak_rss_mb']} "
        f"| {p['batches']} | {before['p50_ms']} / {before['p99_ms']} "
        f"| {during['p50_ms']} / {during['p99_ms']} | {len(purge['claim_errors'])} "
        f"| {purge['expired_left']} | {purge['live_left']:,} |",
    ]


def render_growth(growth: dict[str, Any] | None) -> list[str]:
    if not growth:
        return []
    s = growth.get("settings", {})
    lines = [
        "## How cost grows",
        "",
        f"growth.py: {s.get('rounds', '?')} round(s) of {s.get('duration_s', '?')} s per "
        f"configuration, a baseline run between every two, ratio = rate over the mean of the "
        f"baseline runs just before and after, medians over the rounds; every run checked "
        f"(only 2xx, one row per first request, none per replay). Its own database, "
        f"dropped and created anew; the HTTP part took {growth.get('http_seconds', '?')} s, "
        f"all of it {growth.get('seconds', '?')} s.",
        "",
    ]
    if growth.get("carried_over"):
        lines[2:2] = [
            f"Measured on {growth.get('measured_at', 'an earlier day')} by an earlier full "
            "run: this run skipped it (`benchmarks/run --growth-only` measures it anew).",
            "",
        ]
    rows = growth.get("rows", [])
    if rows:
        lines += [
            "### Live records in the table (database store)",
            "",
            "| live records filled | rows counted after the runs | table + indexes "
            "| bytes per row | heap / indexes | fill s | Redis keys filled "
            "| Redis bytes per key (value) |",
            "|---:|---:|---:|---:|---|---:|---:|---:|",
        ]
        for p in rows:
            redis = "- | -"
            if p.get("redis_keys"):
                redis = (
                    f"{p['redis_keys']:,} | {p.get('redis_bytes_per_key') or '-'} "
                    f"({p['redis_value_bytes']})"
                )
            lines.append(
                f"| {p['live_rows']:,} | {p['rows']:,} | {_mb(p['total_bytes'])} "
                f"| {p['bytes_per_row'] or '-'} | {_mb(p['heap_bytes'])} / "
                f"{_mb(p['index_bytes'])} | {p['fill_s'] if p['fill_s'] is not None else '-'} "
                f"| {redis} |"
            )
        lines += [
            "",
            "Redis runs at the points up to its filled keys (each key a copy of a record "
            "that the store wrote); the bytes per key are Redis's `used_memory` growth "
            "over the keys added, on a Redis that others share.",
        ]
        lines += [
            "",
            *_results_table("live records", [(f"{p['live_rows']:,}", p["results"]) for p in rows]),
            "",
        ]
    if growth.get("bodies"):
        lines += [
            "### Response body size",
            "",
            "Each against the undecorated view answering the same body.",
            "",
            *_results_table(
                "body",
                [(_size(p["bytes"]), p["results"]) for p in growth["bodies"]],
            ),
            "",
        ]
    if growth.get("connections"):
        lines += [
            "### Concurrent connections (wrk -c; 2 sync gunicorn workers per server)",
            "",
            *_results_table(
                "connections",
                [(str(p["connections"]), p["results"]) for p in growth["connections"]],
            ),
            "",
        ]
    problems = [
        f"{name}: {problem}"
        for part in ("rows", "bodies", "connections")
        for p in growth.get(part, [])
        for name, r in p["results"].items()
        for problem in r["problems"]
    ]
    if problems:
        lines += ["Problems seen during the runs:", "", *[f"- {x}" for x in problems], ""]
    if growth.get("purge"):
        lines += [
            f"### Purge of {growth['purge']['rows_expired']:,} expired rows",
            "",
            "purge.py in a database of its own, with 2 threads claiming keys through the "
            "real store meanwhile.",
            "",
            *_purge_lines(growth["purge"]),
            "",
        ]
    reading = year_reading(growth)
    if reading:
        lines += [*reading, ""]
    lines += ["![how cost grows](growth.png)", ""]
    return lines


def render_growth_chart(growth: dict[str, Any] | None, path: Path) -> None:
    if not growth:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    parts = [
        ("live records", [(f"{p['live_rows']:,}", p["results"]) for p in growth.get("rows", [])]),
        (
            "response body",
            [
                (
                    _size(p["bytes"]),
                    {k.rsplit("-", 1)[0]: v for k, v in p["results"].items()},
                )
                for p in growth.get("bodies", [])
            ],
        ),
        (
            "connections",
            [(str(p["connections"]), p["results"]) for p in growth.get("connections", [])],
        ),
    ]
    parts = [(title, points) for title, points in parts if points]
    if not parts:
        return
    fig, axes = plt.subplots(2, len(parts), figsize=(4.2 * len(parts), 6.4), squeeze=False)
    styles = {
        "ours-db-first": ("#2b6cb0", "-"),
        "ours-db-replay": ("#2b6cb0", "--"),
        "ours-redis-first": ("#c53030", "-"),
        "ours-redis-replay": ("#c53030", "--"),
    }
    for column, (title, points) in enumerate(parts):
        xs = list(range(len(points)))
        labels = [label for label, _ in points]
        top, bottom = axes[0][column], axes[1][column]
        for name, (colour, line) in styles.items():
            if not all(name in results for _, results in points):
                continue
            top.plot(
                xs,
                [r[name]["ratio"] for _, r in points],
                color=colour,
                linestyle=line,
                marker="o",
                label=name.removeprefix("ours-"),
            )
            bottom.plot(
                xs,
                [r[name]["p99_ms"] for _, r in points],
                color=colour,
                linestyle=line,
                marker="o",
                label=name.removeprefix("ours-"),
            )
        base = [next(r for r in results.values() if r["mode"] is None) for _, results in points]
        bottom.plot(xs, [b["p99_ms"] for b in base], color="#9e9e9e", marker="o", label="baseline")
        top.axhline(1.0, color="black", linewidth=0.8)
        top.set_title(f"by {title}", fontsize=9)
        top.set_ylabel("throughput / undecorated view", fontsize=8)
        bottom.set_ylabel("p99 latency, ms", fontsize=8)
        bottom.set_yscale("log")
        for ax in (top, bottom):
            ax.set_xticks(xs, labels, fontsize=8)
            ax.tick_params(axis="y", labelsize=8)
        top.legend(fontsize=7)
    fig.suptitle("django-idempotency: how cost grows (medians of rounds)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
