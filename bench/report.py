"""Write bench.pipeline's result as report.json, report.md and latency.svg (a latency CDF per
offered load, drawn here as plain SVG: no plotting library needed).

Everything reads the result dict only, so a partial run (one with "error") still gives a
report of what was measured.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

COLOURS = ("#1b6ca8", "#d1495b", "#2e8b57", "#8e6c8a", "#e08e0b", "#444444")

CAVEATS = (
    "The load generator, the offer consumer, Postgres, the broker and the three services all "
    "share this machine's cores; the CPU table shows who used what in each phase.",
    "The web+db baseline and intake alone run last, with matching and notifications stopped "
    "and intake's outbox drained first, so neither shares the cores with the services "
    "downstream of intake; the broker "
    "baseline runs on the whole stack, idle. Intake with the pipeline runs while matching "
    "and notifications process the needs it makes.",
    "Embedded infrastructure: Tansu keeps topics in memory; Postgres runs with its defaults "
    "(fsync on). One broker, no replication, nothing tuned.",
    "Percentiles are nearest-rank over the needs whose offer arrived; a load that was not kept "
    "up has latencies that grow with time, so they depend on the duration.",
    "Latency floor = web+db pXX + 2 x broker hop pXX at the same offered load (a need's HTTP "
    "write and its two broker hops); adding percentiles is an approximation, not a bound.",
)


def write_report(result: dict[str, Any], out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = [out_dir / "report.json", out_dir / "report.md", out_dir / "latency.svg"]
    paths[0].write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    paths[1].write_text(render_markdown(result))
    paths[2].write_text(render_svg(result))
    return paths


# --- markdown --------------------------------------------------------------------------------


def _n(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "yes" if value else "**no**"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _x(value: Any) -> str:
    if value is None:
        return "n/a"
    return f"{value:.3f}x" if value < 0.1 else f"{value:.2f}x"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def render_markdown(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    s = result.get("settings", {})
    lines = [f"# {result.get('title', 'refnet pipeline benchmark')}", ""]
    if "error" in result:
        lines += [f"**The run failed:** `{result['error']}`; what was measured is below.", ""]
    lines += [
        f"`{result.get('command', 'make bench')}` (bench/pipeline.py; method and caveats in its "
        f"docstring and [bench/README.md](../../bench/README.md)). Total run time: "
        f"**{_n(result.get('elapsed_seconds'), 0)} s**.",
        "",
        "## Machine",
        "",
        *_table(
            ["", ""],
            [
                ["CPU", f"{m.get('cpu_model')} ({m.get('arch')})"],
                ["cores", _n(m.get("cores"))],
                ["RAM", f"{_n(m.get('ram_gib'))} GiB"],
                ["Python", str(m.get("python"))],
                ["OS", str(m.get("os"))],
                ["date (UTC)", str(m.get("date"))],
                ["git describe", f"`{m.get('git_describe')}`"],
                [
                    "load average (1, 5, 15 min)",
                    f"{m.get('load_average')} at start, {m.get('load_average_end')} at end",
                ],
            ],
        ),
        "",
    ]
    stack = result.get("stack")
    if stack:
        lines += [
            f"Stack: Postgres {stack['postgres']}, broker {stack['broker']} (Tansu), "
            f"{stack['services']}; started in {_n(stack['start_seconds'])} s. Load generator: "
            f"`{s.get('client')}` client, {s.get('connections')} keep-alive connections.",
            "",
        ]
    lines += _summary_section(result)
    lines += _broker_section(result.get("broker"))
    lines += _webdb_section(result.get("webdb"), s)
    lines += _intake_section(result.get("intake_alone"), result.get("intake"))
    lines += _e2e_section(result.get("end_to_end"), s)
    lines += _cpu_section(result)
    lines += ["## Caveats", "", *(f"- {c}" for c in CAVEATS), ""]
    lines += ["## Settings", "", "```json", json.dumps(s, indent=2), "```", ""]
    return "\n".join(lines)


def _summary_section(result: dict[str, Any]) -> list[str]:
    summary = result.get("summary")
    if not summary:
        return []
    goal = result.get("intake_alone", {}).get("goal", 0.5)
    rows = [
        [
            "bare broker: consume-produce-commit loop (messages/s)",
            _n(summary["broker_loop_per_s"]),
            "",
        ],
        ["bare web+db: FastAPI + one INSERT (requests/s)", _n(summary["webdb_per_s"]), ""],
        [
            "intake JSON API submissions (requests/s), downstream stopped as for web+db",
            _n(summary["intake_per_s"]),
            f"{_x(summary['intake_to_webdb'])} of web+db (goal >= {goal:g}x: "
            f"{'met' if summary['intake_goal_met'] else '**not met**'})",
        ],
        [
            "intake JSON API submissions (requests/s), with the pipeline running",
            _n(summary["intake_with_pipeline_per_s"]),
            f"{_x(summary['intake_with_pipeline_to_webdb'])} of web+db",
        ],
        [
            "end to end, intake's closed loop (needs/s)",
            _n(summary["end_to_end_closed_loop_per_s"]),
            "needs of the closed loop / time to their last offer",
        ],
        [
            "end to end, highest offered load kept up (needs/s)",
            _n(summary["highest_load_kept_up_per_s"], 0),
            "",
        ],
        ["end to end, best achieved (needs/s)", _n(summary["best_achieved_per_s"]), ""],
    ]
    return ["## Summary", "", *_table(["figure", "value", "ratio / note"], rows), ""]


def _broker_section(broker: dict[str, Any] | None) -> list[str]:
    if not broker:
        return []
    lines = [
        "## Bare broker (same broker)",
        "",
        f"{_n(broker['messages'])} NeedSubmitted-shaped records (value ~{broker['value_bytes']} "
        f"B, headers ~{broker['header_bytes']} B), {broker['partitions']} partitions. Produce "
        f"(acks=all, linger_ms=5): **{_n(broker['produce_per_s'])} messages/s**. The bare "
        "loop of bench.common (consume a batch, produce one record per record, wait for the "
        f"acks, commit; a new group per run): runs {broker['loop_runs_per_s']} messages/s, "
        f"median **{_n(broker['loop_per_s'])} messages/s**.",
        "",
        "One broker hop at an offered rate (produced open-loop, latency from the scheduled send "
        "to a consumer receiving it):",
        "",
    ]
    rows = [
        [
            rate,
            _n(h["sent"]),
            _n(h["received"]),
            _n(h["p50"], 2),
            _n(h["p95"], 2),
            _n(h["p99"], 2),
        ]
        for rate, h in broker["hop_latency_ms"].items()
    ]
    return [
        *lines,
        *_table(["offered/s", "sent", "received", "p50 ms", "p95 ms", "p99 ms"], rows),
        "",
    ]


def _closed_row(name: str, c: dict[str, Any]) -> list[str]:
    lat = c["latency_ms"]
    statuses = ", ".join(f"{k}: {v:,}" for k, v in sorted(c["statuses"].items()))
    return [
        name,
        _n(c["per_s"]),
        _n(lat["p50"], 2),
        _n(lat["p95"], 2),
        _n(lat["p99"], 2),
        statuses or "none",
        _n(c["generator_cores"], 2),
    ]


CLOSED_HEAD = ["", "requests/s", "p50 ms", "p95 ms", "p99 ms", "answers", "generator cores"]


def _webdb_section(webdb: dict[str, Any] | None, s: dict[str, Any]) -> list[str]:
    if not webdb:
        return []
    c = webdb["closed"]
    lines = [
        "## Bare web+database",
        "",
        "bench/webdb.py: one FastAPI endpoint, one asyncpg INSERT, served by uvicorn as intake "
        "is (one process, same arguments, JSON logging at the same level, intake's pool), sent "
        "the same intake bodies by the same generator.",
        "",
        f"Closed loop, {c['connections']} connections, {_n(c['seconds'], 0)} s after "
        f"{_n(s.get('warmup_seconds'), 0)} s of warm-up:",
        "",
        *_table(CLOSED_HEAD, [_closed_row("web+db", c)]),
        "",
        f"Open loop ({_n(s.get('baseline_open_loop_seconds'), 0)} s per load; latency from the "
        "scheduled start, client queueing included):",
        "",
    ]
    rows = [
        [
            rate,
            _n(o["sent"]),
            _n(o["send_rate_per_s"]),
            _n(o["http_latency_ms"]["p50"], 2),
            _n(o["http_latency_ms"]["p95"], 2),
            _n(o["http_latency_ms"]["p99"], 2),
            _n(o["generator_cores"], 2),
        ]
        for rate, o in webdb["open"].items()
    ]
    head = ["offered/s", "sent", "sent/s", "p50 ms", "p95 ms", "p99 ms", "generator cores"]
    return [*lines, *_table(head, rows), ""]


def _intake_section(alone: dict[str, Any] | None, intake: dict[str, Any] | None) -> list[str]:
    if not alone or not intake:
        return []
    return [
        "## Intake JSON API",
        "",
        "`POST /api/v1/intakes` with a worker API token; each body a valid intake with one "
        "need, a unique submission and person, and a valid consent. Closed loop, "
        f"{intake['connections']} connections, {_n(intake['seconds'], 0)} s after the warm-up, "
        "twice: alone (matching and notifications stopped, as for the web+db baseline; "
        "intake's outbox relay publishes every NeedSubmitted meanwhile, and no status events "
        "come back for intake to record), and with the pipeline running (matching and "
        "notifications handling the needs it makes, on the same cores, and intake recording "
        "the status events they send back):",
        "",
        *_table(
            CLOSED_HEAD,
            [_closed_row("intake alone", alone), _closed_row("intake with the pipeline", intake)],
        ),
        "",
        f"Intake alone / web+db: **{_x(alone['ratio_to_webdb'])}** (goal >= {alone['goal']:g}x: "
        f"{'met' if alone['goal_met'] else '**not met**'}). With the pipeline running: "
        f"{_x(intake['ratio_to_webdb'])}.",
        "",
        f"The pipeline loop's {_n(intake['needs_made'])} needs (warm-up included): "
        f"{_n(intake['needs_offered'])} offered, the last "
        f"{_n(intake['offers_waited_after_s'])} s after the loop ended; end to end "
        f"**{_n(intake['end_to_end_per_s'])} needs/s** (needs / time from the loop's start "
        "to the last offer).",
        "",
    ]


def _e2e_section(levels: list[dict[str, Any]] | None, s: dict[str, Any]) -> list[str]:
    if not levels:
        return []
    lines = [
        "## End to end: submit until the offer is on the agency's topic",
        "",
        f"Open loop, {_n(s.get('seconds_per_load'), 0)} s per offered load, then up to "
        f"{_n(s.get('grace_seconds'), 0)} s for the last offers. Latency from each request's "
        "scheduled start to a consumer of every agency topic receiving its ReferralOffered; "
        "percentiles over the needs offered, the plot over all needs sent (a curve that stops "
        "short of the top: needs not offered in time). "
        "Achieved = the rate offers came out, (offers - 1) / (last offer - first offer); kept "
        f"up = every need offered and achieved >= {s.get('kept_up_share', 0.95):.0%} of "
        "offered. Before each load the pipeline is drained (every need accepted so far "
        f"offered, up to {_n(s.get('drain_seconds'), 0)} s); 'backlog' is what was still "
        "unoffered when the load started. 'sent' counts every request the generator started "
        "on schedule, one still waiting for a free connection included.",
        "",
        "![latency CDF](latency.svg)",
        "",
    ]
    rows = []
    for lvl in levels:
        lat, floor, r = lvl["latency_ms"], lvl["latency_floor_ms"], lvl["ratios"]
        rows.append(
            [
                _n(lvl["offered_per_s"], 0),
                _n(lvl.get("backlog_at_start")),
                _n(lvl["sent"]),
                _n(lvl["send_rate_per_s"]),
                _n(lvl["offers"]),
                _n(lvl["missing_offers"]),
                f"**{_n(lvl['achieved_per_s'])}**",
                _n(lvl["kept_up"]),
                _n(lvl["http_latency_ms"]["p50"], 0),
                _n(lvl["http_latency_ms"]["p99"], 0),
                f"**{_n(lat['p50'], 0)}**",
                f"**{_n(lat['p95'], 0)}**",
                f"**{_n(lat['p99'], 0)}**",
                _n(lvl["latency_to_record_timestamp_ms"]["p50"], 0),
            ]
        )
    head = [
        "offered/s",
        "backlog",
        "sent",
        "sent/s",
        "offers",
        "missing",
        "achieved/s",
        "kept up",
        "HTTP p50 ms",
        "HTTP p99 ms",
        "e2e p50 ms",
        "e2e p95 ms",
        "e2e p99 ms",
        "p50 to record time ms",
    ]
    lines += [*_table(head, rows), ""]
    lines += ["Ratios to the baselines:", ""]
    ratio_rows = []
    for lvl in levels:
        r, floor = lvl["ratios"], lvl["latency_floor_ms"]
        ratio_rows.append(
            [
                _n(lvl["offered_per_s"], 0),
                _x(r["achieved_to_offered"]),
                _x(r["achieved_to_intake_closed"]),
                _x(r["achieved_to_webdb_closed"]),
                _x(r["achieved_to_broker_loop"]),
                " / ".join(_n(floor[q], 1) for q in ("p50", "p95", "p99")),
                " / ".join(_x(r[f"latency_{q}_to_floor"]) for q in ("p50", "p95", "p99")),
            ]
        )
    head = [
        "offered/s",
        "achieved / offered",
        "/ intake closed loop",
        "/ web+db",
        "/ broker loop",
        "latency floor p50/p95/p99 ms",
        "e2e latency / floor",
    ]
    lines += [*_table(head, ratio_rows), ""]
    statuses = "; ".join(
        f"{_n(lvl['offered_per_s'], 0)}/s: "
        + ", ".join(f"{k}: {v:,}" for k, v in sorted(lvl["statuses"].items()))
        + (
            f", {lvl['cancelled_unanswered']:,} cancelled unanswered"
            if lvl["cancelled_unanswered"]
            else ""
        )
        + f"; generator lag p99 {_n(lvl['generator_lag_ms']['p99'], 1)} ms"
        for lvl in levels
    )
    lines += [f"HTTP answers by status: {statuses}.", ""]
    return lines


def _cpu_section(result: dict[str, Any]) -> list[str]:
    phases: list[tuple[str, dict[str, Any]]] = []
    if result.get("broker"):
        phases.append(("broker: produce + loops", result["broker"]["cpu"]))
    if result.get("intake"):
        phases.append(("intake with the pipeline", result["intake"]["cpu"]))
    for lvl in result.get("end_to_end") or []:
        phases.append((f"end to end at {_n(lvl['offered_per_s'], 0)}/s", lvl["cpu"]))
    if result.get("webdb"):
        phases.append(("web+db closed loop", result["webdb"]["closed"]["cpu"]))
        for rate, o in result["webdb"]["open"].items():
            phases.append((f"web+db at {rate}/s", o["cpu"]))
    if result.get("intake_alone"):
        phases.append(("intake alone", result["intake_alone"]["cpu"]))
    if not phases:
        return []
    groups = sorted({g for _, cpu in phases for g in cpu["cores_used"]})
    rows = [
        [name]
        + [_n(cpu["cores_used"].get(g), 2) for g in groups]
        + [_n(cpu["benchmark_cores"], 2), _n(cpu["outside_benchmark_cores"], 2)]
        for name, cpu in phases
    ]
    return [
        "## CPU by process (cores used, averaged over each phase)",
        "",
        "Phases in the order they ran. 1.00 = one core busy for the whole phase. 'outside' is "
        "the rest of the machine (anything not started by this benchmark); near 0 on a quiet "
        "machine.",
        "",
        *_table(["phase", *groups, "all of the benchmark", "outside"], rows),
        "",
    ]


# --- SVG -----------------------------------------------------------------------------------


TAIL_NINES = 3.0  # the latency plot's vertical axis reaches 99.9%


def _tail_y(share: float) -> float:
    """0 at 0%, 1 at 90%, 2 at 99%, 3 at 99.9% (and above)."""
    if share >= 1 - 10**-TAIL_NINES:
        return TAIL_NINES
    return -math.log10(1 - share)


def _ms(value: float) -> str:
    return f"{value:,.0f} ms" if value < 1000 else f"{value / 1000:,.2f} s"


def render_svg(result: dict[str, Any]) -> str:
    """Latency CDF per offered load: log-scale latency across, the share of needs up the
    side on a "nines" scale (50%, 90%, 99%, 99.9%) so the tail is as visible as the median."""
    width, height = 820, 460
    left, right, top, bottom = 70, 250, 44, 60
    pw, ph = width - left - right, height - top - bottom
    levels = [lvl for lvl in result.get("end_to_end") or [] if lvl.get("cdf")]
    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="24" font-size="14" font-weight="bold">End-to-end latency, '
        "submit to ReferralOffered on the agency topic, per offered load</text>",
    ]
    if not levels:
        out.append(f'<text x="{left}" y="{top + ph / 2}">no end-to-end latencies measured</text>')
        out.append("</svg>")
        return "\n".join(out) + "\n"
    values = [p[0] for lvl in levels for p in lvl["cdf"] if p[0] > 0]
    lo = 10 ** math.floor(math.log10(max(min(values), 0.1)))
    hi = 10 ** math.ceil(math.log10(max(values)))
    if hi <= lo:
        hi = lo * 10

    def x(ms: float) -> float:
        ms = min(max(ms, lo), hi)
        return left + (math.log10(ms) - math.log10(lo)) / (math.log10(hi) - math.log10(lo)) * pw

    def y(share: float) -> float:
        return top + (1 - _tail_y(share) / TAIL_NINES) * ph

    decade = lo
    while decade <= hi * 1.0001:
        for k in range(1, 10):
            v = decade * k
            if v > hi * 1.0001:
                break
            out.append(
                f'<line x1="{x(v):.1f}" y1="{top}" x2="{x(v):.1f}" y2="{top + ph}" '
                f'stroke="{"#bbb" if k == 1 else "#eee"}"/>'
            )
        out.append(
            f'<text x="{x(decade):.1f}" y="{top + ph + 18}" text-anchor="middle">'
            f"{f'{decade:g} ms' if decade < 1000 else f'{decade / 1000:g} s'}</text>"
        )
        decade *= 10
    for share, label in ((0.0, "0%"), (0.5, "50%"), (0.9, "90%"), (0.99, "99%"),
                         (0.999, "99.9%")):  # fmt: skip
        out.append(
            f'<line x1="{left}" y1="{y(share):.1f}" x2="{left + pw}" y2="{y(share):.1f}" '
            'stroke="#bbb"/>'
        )
        out.append(f'<text x="{left - 6}" y="{y(share) + 4:.1f}" text-anchor="end">{label}</text>')
    for share in (0.25, 0.75, 0.95, 0.995):
        out.append(
            f'<line x1="{left}" y1="{y(share):.1f}" x2="{left + pw}" y2="{y(share):.1f}" '
            'stroke="#eee"/>'
        )
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#888"/>')
    out.append(
        f'<text x="{left + pw / 2}" y="{height - 16}" text-anchor="middle">latency (log scale), '
        "from each request's scheduled start</text>"
    )
    out.append(
        f'<text transform="translate(18 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
        "share of the needs sent, offered within</text>"
    )
    for i, lvl in enumerate(levels):
        colour = COLOURS[i % len(COLOURS)]
        points = " ".join(f"{x(ms):.1f},{y(share):.1f}" for ms, share in lvl["cdf"])
        out.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="2"/>')
        lat = lvl["latency_ms"]
        lx, ly = left + pw + 14, top + 8 + i * 70
        out.append(
            f'<line x1="{lx}" y1="{ly}" x2="{lx + 24}" y2="{ly}" stroke="{colour}" '
            'stroke-width="3"/>'
        )
        kept = "kept up" if lvl.get("kept_up") else "not kept up"
        lines = (
            f"{lvl['offered_per_s']:g} needs/s offered",
            f"achieved {lvl['achieved_per_s']:g}/s, {kept}",
            f"p50 {_ms(lat['p50'])}, p99 {_ms(lat['p99'])}",
            f"{lvl.get('missing_offers', 0):,} of {lvl['sent']:,} not offered in time"
            if lvl.get("missing_offers")
            else f"all {lvl['sent']:,} offered",
        )
        for j, text in enumerate(lines):
            fill = "#000" if j == 0 else "#555"
            out.append(f'<text x="{lx + 30}" y="{ly + 4 + j * 15}" fill="{fill}">{text}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"
