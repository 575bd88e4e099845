"""Build report.md, the charts and the summary files from a load test's recorded runs.

    python -m loadtests.report reports/20260101T120000Z

Reads only what the runner left on disk (meta.json, runs/*/run.json, raw-*.csv, locust.json), so
a report can be rebuilt, or built from runs recorded elsewhere.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from loadtests.samples import (
    DRAIN_S,
    PERCENTILES,
    RunStats,
    pooled_latencies,
    read_locust_totals,
    read_raw,
    summarize,
    within_bound,
)
from loadtests.servers import BATCH_METRIC, INFERENCE_METRIC, REQUEST_METRIC, histogram_quantile
from models.contract import FRAMEWORKS
from models.tables import markdown_table

TARGET_LABELS = {"service": "BentoML service", "baseline": "Starlette baseline"}
COLOURS = {"tensorflow": "#e8710a", "keras": "#d00000", "pytorch": "#1a73e8"}
LINESTYLES = {"service": "-", "baseline": "--"}
CHARTS = {
    "latency_percentiles": "latency_percentiles.png",
    "throughput_vs_users": "throughput_vs_users.png",
    "latency_vs_rate": "latency_vs_rate.png",
    "batch_throughput": "batch_throughput.png",
}


@dataclass
class Run:
    spec: dict  # run.json: round, scenario, target, framework, users, rate, exit_code, metrics
    stats: RunStats
    locust: dict | None  # Locust's final totals, warm-up included
    raw_requests: int  # raw samples, warm-up included: must equal Locust's count


@dataclass
class Setting:
    """All rounds of one (scenario, level, target, framework)."""

    scenario: str
    level: float  # users (closed, batch) or offered rate (open)
    target: str
    framework: str
    runs: list[Run] = field(default_factory=list)
    pooled: np.ndarray = field(default_factory=lambda: np.empty(0))  # ms, all rounds

    def percentile(self, q: float) -> float:
        return float(np.percentile(self.pooled, q)) if self.pooled.size else math.nan

    def total(self, name: str) -> int:
        return sum(getattr(run.stats, name) for run in self.runs)

    def per_round(self, name: str) -> list[float]:
        return [getattr(run.stats, name) for run in self.runs]

    def median(self, name: str) -> float:
        return float(np.median(self.per_round(name))) if self.runs else math.nan


def window(spec: dict) -> dict[str, float]:
    """A run's window settings; runs recorded before the drain setting get today's default."""
    return {"warmup": spec["warmup"], "duration": spec["duration"],
            "drain": spec.get("drain", DRAIN_S)}


def load_runs(out_dir: Path) -> list[Run]:
    runs = []
    for run_json in sorted((out_dir / "runs").glob("*/run.json")):
        spec = json.loads(run_json.read_text())
        samples = read_raw(run_json.parent)
        stats = summarize(samples, **window(spec))
        runs.append(Run(spec, stats, read_locust_totals(run_json.parent), len(samples)))
    return runs


def group_settings(out_dir: Path, runs: list[Run]) -> dict[tuple, Setting]:
    settings: dict[tuple, Setting] = {}
    raw_sets = defaultdict(list)
    for run in runs:
        spec = run.spec
        level = spec["rate"] if spec["scenario"] == "open" else spec["users"]
        key = (spec["scenario"], level, spec["target"], spec["framework"])
        settings.setdefault(key, Setting(*key)).runs.append(run)
        raw_sets[key].append(read_raw(out_dir / "runs" / spec["run_id"]))
    for key, setting in settings.items():
        setting.pooled = pooled_latencies(raw_sets[key], **window(setting.runs[0].spec))
    return settings


def ms(value: float) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.2f}"


def spread(values: list[float], digits: int = 2) -> str:
    """``min–max`` across rounds, or ``–`` with a single round."""
    clean = [v for v in values if not math.isnan(v)]
    if len(clean) < 2:
        return "–"
    return f"{min(clean):.{digits}f}–{max(clean):.{digits}f}"


def ordered(settings: dict[tuple, Setting], scenario: str) -> list[Setting]:
    chosen = [s for s in settings.values() if s.scenario == scenario]
    return sorted(chosen, key=lambda s: (s.level, FRAMEWORKS.index(s.framework)
                                         if s.framework in FRAMEWORKS else 9, s.target))


def max_rates(settings: dict[tuple, Setting], bound: float) -> dict[tuple[str, str], dict]:
    """Per (target, framework): per round, the highest offered rate whose p99 stayed under the
    bound with every lower rate also under it, and the first rate that went over; and the rate
    sustained in every round (the lowest of the rounds': a rate that was tested, not a mean of
    two ladders' steps)."""
    per_round: dict[tuple, dict[int, list[tuple[float, float]]]] = defaultdict(
        lambda: defaultdict(list))
    for setting in settings.values():
        if setting.scenario != "open":
            continue
        for run in setting.runs:
            per_round[(setting.target, setting.framework)][run.spec["round"]].append(
                (setting.level, within_bound(run.stats, bound)))
    found = {}
    for key, rounds in per_round.items():
        best, first_over = [], []
        for ladder in rounds.values():
            passed, over = 0.0, math.nan
            for rate, served in sorted(ladder):
                if served:
                    passed = rate
                else:
                    over = rate
                    break
            best.append(passed)
            first_over.append(over)
        found[key] = {"per_round": best, "sustained": min(best), "first_over": first_over}
    return found


def metrics_table(runs: list[Run]) -> tuple[list[str], list[list]]:
    """Server-side time per framework and scenario, from the service's /metrics histograms."""
    merged: dict[tuple[str, str], dict[str, dict]] = {}
    for run in runs:
        for metric, per_framework in (run.spec.get("metrics") or {}).items():
            entry = per_framework.get(run.spec["framework"])
            if entry is None:
                continue
            key = (run.spec["framework"], run.spec["scenario"])
            into = merged.setdefault(key, {}).setdefault(
                metric, {"buckets": {}, "sum": 0.0, "count": 0.0})
            into["sum"] += entry["sum"]
            into["count"] += entry["count"]
            for le, count in entry["buckets"].items():
                into["buckets"][float(le)] = into["buckets"].get(float(le), 0.0) + count
    headers = ["framework", "scenario", "ONNX runs", "images per run", "inference mean ms",
               "inference p50 ms", "inference p99 ms", "service request p50 ms"]
    rows = []
    for (framework, scenario), metrics in sorted(merged.items()):
        inference = metrics.get(INFERENCE_METRIC)
        batch = metrics.get(BATCH_METRIC)
        request = metrics.get(REQUEST_METRIC)
        if not inference or not inference["count"]:
            continue
        rows.append([
            framework, scenario, f"{inference['count']:.0f}",
            f"{batch['sum'] / batch['count']:.1f}" if batch and batch["count"] else "–",
            ms(1000 * inference["sum"] / inference["count"]),
            ms(1000 * histogram_quantile(inference, 0.5)),
            ms(1000 * histogram_quantile(inference, 0.99)),
            ms(1000 * histogram_quantile(request, 0.5)) if request else "–",
        ])
    return headers, rows


def closed_rows(settings: dict[tuple, Setting], scenario: str) -> list[list]:
    rows = []
    for s in ordered(settings, scenario):
        rows.append([
            f"{s.level:g}", TARGET_LABELS.get(s.target, s.target), s.framework,
            s.total("requests"), f"{s.total('errors')} / {s.total('wrong_answers')}",
            f"{s.median('goodput'):.0f}", spread(s.per_round("goodput"), 0),
            *(ms(s.percentile(q)) for q in PERCENTILES), spread(s.per_round("p50")),
        ] + ([f"{s.median('images_per_second'):.0f}"] if scenario == "batch" else []))
    return rows


def build_report(out_dir: str | Path) -> Path:
    """Write report.md, the PNG charts, runs.csv and results.json into ``out_dir``."""
    out_dir = Path(out_dir)
    meta = json.loads((out_dir / "meta.json").read_text())
    config = meta["config"]
    runs = load_runs(out_dir)
    settings = group_settings(out_dir, runs)
    bound = config["p99_bound_ms"]
    rates = max_rates(settings, bound)
    write_runs_csv(out_dir / "runs.csv", runs)
    charts = write_charts(out_dir, settings, rates, bound)

    closed_levels = sorted({s.level for s in settings.values() if s.scenario == "closed"})
    low = closed_levels[0] if closed_levels else None
    high = (32 if 32 in closed_levels else closed_levels[-1]) if closed_levels else None
    frameworks = [f for f in config["frameworks"]]
    targets = [t for t in TARGET_LABELS if any(s.target == t for s in settings.values())]

    def get(scenario: str, level, target: str, framework: str) -> Setting | None:
        return settings.get((scenario, level, target, framework))

    lines = [f"# Load test report: {meta['started']}", ""]
    lines += method_section(meta, config, runs, targets)

    # Summary: the figures the question asks for, per framework and server
    levels = [low] if low == high else [low, high]
    headers = ["framework", "server"]
    if low is not None:
        for level in levels:
            headers += [f"p50 @{level:g}u ms", f"p99 @{level:g}u ms"]
        headers += [f"goodput req/s @{high:g}u"]
    if "open" in config["scenarios"]:
        headers += [f"max rate p99<{bound:g}ms"]
    if "batch" in config["scenarios"]:
        headers += [f"batch x{config['batch_size']} images/s"]
    rows = []
    for framework in frameworks:
        for target in targets:
            row = [framework, TARGET_LABELS[target]]
            if low is not None:
                for level in levels:
                    at = get("closed", level, target, framework)
                    row += [ms(at.percentile(50)) if at else "–",
                            ms(at.percentile(99)) if at else "–"]
                at_high = get("closed", high, target, framework)
                row.append(f"{at_high.median('goodput'):.0f}" if at_high else "–")
            if "open" in config["scenarios"]:
                found = rates.get((target, framework))
                row.append(rate_text(found, config["rates"]) + (
                    f" ({round_rates(found, config['rates'])})"
                    if found and len(found["per_round"]) > 1 else ""))
            if "batch" in config["scenarios"]:
                batch = get("batch", config["batch_users"], target, framework)
                row.append(f"{batch.median('images_per_second'):.0f}" if batch else "–")
            rows.append(row)
    lines += ["## Summary", "",
              "Goodput counts successful requests only (status, shape and every digit right); "
              "failures are counted in the tables below. The max rate is the one sustained in "
              "every round (each round's in brackets).", "", markdown_table(headers, rows), ""]
    lines += tax_section(settings, rates, frameworks, low, high, config)

    lines += ["## Accuracy", "", accuracy_text(meta), ""]

    if closed_levels:
        lines += ["## Closed loop: concurrency sweep", "",
                  "Each user sends one image and the next as soon as the answer is in. "
                  "Percentiles pool every round's raw samples; `spread` is the lowest and highest "
                  "per-round value.", "",
                  markdown_table(["users", "server", "framework", "requests", "errors / wrong",
                                  "goodput req/s", "spread", "p50 ms", "p90 ms", "p99 ms",
                                  "p99.9 ms", "p50 spread"], closed_rows(settings, "closed")), ""]
    if "open" in config["scenarios"]:
        lines += open_section(settings, rates, bound, config)
    if "batch" in config["scenarios"]:
        lines += ["## Batch requests", "",
                  f"{config['batch_users']} closed-loop users, {config['batch_size']} images per "
                  f"request; latency is per request.", "",
                  markdown_table(["users", "server", "framework", "requests", "errors / wrong",
                                  "goodput req/s", "spread", "p50 ms", "p90 ms", "p99 ms",
                                  "p99.9 ms", "p50 spread", "images/s"],
                                 closed_rows(settings, "batch")), ""]

    headers, rows = metrics_table(runs)
    lines += ["## Inside the service (from /metrics)", ""]
    if rows:
        lines += ["Model compute per ONNX Runtime run (one adaptive batch) and the front "
                  "service's time per request, from the service's Prometheus histograms, "
                  "differences over each run. Percentiles are interpolated inside buckets, so "
                  "they are only as fine as the buckets.", "", markdown_table(headers, rows), ""]
    else:
        lines += ["The service's /metrics had no per-framework inference histogram "
                  f"(`{INFERENCE_METRIC}`).", ""]

    lines += floor_section(meta)
    lines += ["## Charts", ""]
    lines += [f"![{name.replace('_', ' ')}]({path})" for name, path in charts.items()] + [""]
    lines += integrity_section(runs)
    lines += ["## Files", "",
              "- `runs/<run>/`: per Locust run: `run.json` (settings, command, exit code, /metrics "
              "deltas), `raw-<pid>.csv` (every request as measured), `locust.json` (Locust's "
              "final statistics), `locust_stats.csv`, `locust_stats_history.csv`, "
              "`locust_failures.csv`, `locust.log`.",
              "- `runs.csv`: one line per run with the figures above; `results.json`: everything "
              "in this report as numbers.",
              "- `meta.json`: settings, machine, versions, accuracy, compute floor; "
              "`payloads.npz`: the images sent.", ""]
    report = out_dir / "report.md"
    report.write_text("\n".join(lines))
    write_results(out_dir / "results.json", settings, rates, meta)
    return report


def method_section(meta: dict, config: dict, runs: list[Run], targets: list[str]) -> list[str]:
    m, v = meta["machine"], meta["versions"]
    providers = {f"{t}/{f}": p for t, per in meta["accuracy"].get("providers", {}).items()
                 for f, p in per.items() if p}
    provider_text = ", ".join(sorted(set(providers.values()))) or "not reported by the server"
    service = meta["service"]
    lines = [
        "## Method", "",
        f"- Question: under the same load, how do the {', '.join(config['frameworks'])} models "
        "compare when served, and what does the serving stack cost?",
        f"- Servers: {', '.join(TARGET_LABELS[t] for t in targets)}. Service: "
        + (f"`bentoml serve {service['module']}` started by the runner" if service["started_here"]
           else f"already running at {service['url']}")
        + (f", models {', '.join(service['tags'].values())}" if service.get("tags") else "")
        + ". Baseline: `loadtests/baseline_server.py`, plain Starlette on one uvicorn worker "
        "calling ONNX Runtime in the handler, on the same ONNX files"
        + (f" ({meta['baseline']['ort_threads']} intra-op thread, as the service)"
           if meta.get("baseline") else "") + ".",
        f"- Execution provider: {provider_text}.",
        f"- Payloads: {meta['payload_images']} real MNIST test images from {meta['data']} that "
        "every server and framework answered right in the accuracy check, so any wrong digit "
        "during the load test is a serving fault; each answer is checked (status, shape, digit "
        "against the label) and counted as a failure otherwise.",
        f"- Scenarios: {', '.join(config['scenarios'])}. Closed loop at "
        f"{', '.join(str(u) for u in config['users'])} users without wait; open loop: Poisson "
        f"arrivals at {', '.join(f'{r:g}' for r in config['rates'])} requests/s "
        f"({config['open_users']} users), latency from each request's scheduled send time, "
        f"the ladder stopping at the first rate whose p99 passes {config['p99_bound_ms']:g} ms; "
        f"batch: {config['batch_users']} users, {config['batch_size']} images per request.",
        f"- Each run: {config['duration']} s; the figures count the requests that started (open "
        f"loop: were due) after the first {config['warmup']:g} s (warm-up) and before the last "
        f"{config.get('drain', DRAIN_S):g} s (drain); {config['rounds']} round(s), frameworks "
        "in a rotated order each round and the two servers alternating, so machine noise "
        "spreads over all of them. "
        f"{len(runs)} runs in all.",
        "- Timing: every request's time is recorded as measured through Locust's request event "
        "(Locust's own statistics round to whole milliseconds); percentiles come from these raw "
        "samples, to 0.01 ms. Request counts are cross-checked with Locust's final statistics.",
        f"- Locust: {locust_mode(config['workers'])} "
        f"on the same machine as the servers, over loopback; the load generator shares the "
        "cores with the servers, so absolute figures are this machine's, and the comparison "
        "between frameworks and servers is the point.",
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory']}, {m['os']}, Python "
        f"{m['python']}. Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        "",
    ]
    if meta.get("quick"):
        lines.insert(2, "> Quick profile (CI smoke test): runs are seconds long; the figures "
                        "show the path works, not how fast it is.\n")
    return lines


def locust_mode(workers: int) -> str:
    return f"a master and {workers} workers" if workers else "one local process"


def tax_section(settings: dict[tuple, Setting], rates: dict, frameworks: list[str],
                low, high, config: dict) -> list[str]:
    rows = []
    for framework in frameworks:
        row = [framework]
        for level in (low, high):
            service = settings.get(("closed", level, "service", framework))
            base = settings.get(("closed", level, "baseline", framework))
            if service is None or base is None:
                row += ["–", "–"]
                continue
            row.append(ratio(service.percentile(50), base.percentile(50)))
            row.append(ratio(service.median("goodput"), base.median("goodput")))
        service_rate = rates.get(("service", framework))
        base_rate = rates.get(("baseline", framework))
        row.append(ratio(service_rate["sustained"], base_rate["sustained"])  # "< r": no ratio
                   if service_rate and base_rate and service_rate["sustained"] > 0 else "–")
        service_batch = settings.get(("batch", config["batch_users"], "service", framework))
        base_batch = settings.get(("batch", config["batch_users"], "baseline", framework))
        row.append(ratio(service_batch.median("images_per_second"),
                         base_batch.median("images_per_second"))
                   if service_batch and base_batch else "–")
        rows.append(row)
    if low is None or all(cell == "–" for row in rows for cell in row[1:]):
        return []
    headers = ["framework", f"p50 ratio @{low:g}u", f"goodput ratio @{low:g}u",
               f"p50 ratio @{high:g}u", f"goodput ratio @{high:g}u", "max-rate ratio",
               "batch images/s ratio"]
    if low == high:  # one level: drop its repeated columns
        headers = headers[:3] + headers[5:]
        rows = [row[:3] + row[5:] for row in rows]
    return ["## Serving tax: BentoML service over the Starlette baseline", "",
            "Ratios of the service's figure to the baseline's under identical load. A p50 ratio "
            "above 1 means the service answers slower; a goodput ratio below 1 means it serves "
            "less. What the service buys for it: adaptive batching, metrics, validation, "
            "separately scalable model services.", "",
            markdown_table(headers, rows), ""]


def rate_text(found: dict | None, ladder: list[float]) -> str:
    """The rate sustained under the bound in every round; ``< r`` when even the ladder's first
    rate passed it in some round, ``≥ r`` when no round ever went over."""
    if not found:
        return "–"
    if found["sustained"] == 0:
        return f"< {min(ladder):g}"
    if all(math.isnan(rate) for rate in found["first_over"]):
        return f"≥ {found['sustained']:g}"  # never over the bound: the ladder's top is too low
    return f"{found['sustained']:g}"


def round_rates(found: dict, ladder: list[float]) -> str:
    """Each round's max rate under the bound, ``0`` (nothing passed) as ``< r``."""
    return " / ".join(f"{r:g}" if r else f"< {min(ladder):g}" for r in found["per_round"])


def ratio(numerator: float, denominator: float) -> str:
    if not denominator or math.isnan(numerator) or math.isnan(denominator):
        return "–"
    return f"{numerator / denominator:.2f}x"


def accuracy_text(meta: dict) -> str:
    accuracy = meta["accuracy"]
    rows = []
    for framework in meta["config"]["frameworks"]:
        rows.append([framework] + [
            f"{accuracy[key][framework]:.4f}" if framework in accuracy.get(key, {}) else "–"
            for key in ("service", "baseline", "in_process")])
    table = markdown_table(["framework", "service", "baseline", "ONNX Runtime in process"], rows)
    return (f"Each server's answers on the first {accuracy['images']} test images (batches of 64 "
            f"through `/predict`), against ONNX Runtime in process on the same pixels. Equal "
            f"figures mean serving changes no answer.\n\n{table}")


def open_section(settings: dict[tuple, Setting], rates: dict, bound: float,
                 config: dict) -> list[str]:
    rows = []
    for s in ordered(settings, "open"):
        rows.append([f"{s.level:g}", TARGET_LABELS.get(s.target, s.target), s.framework,
                     s.total("requests"), f"{s.total('errors')} / {s.total('wrong_answers')}",
                     f"{s.median('goodput'):.0f}", *(ms(s.percentile(q)) for q in PERCENTILES),
                     s.total("unanswered"), ms(float(np.median(s.per_round("service_p50"))))])
    summary = []
    for (target, framework), found in sorted(rates.items()):
        over = [f"{r:g}" if not math.isnan(r) else "none" for r in found["first_over"]]
        summary.append([TARGET_LABELS.get(target, target), framework,
                        rate_text(found, config["rates"]), round_rates(found, config["rates"]),
                        " / ".join(over)])
    return [
        "## Open loop: Poisson arrivals", "",
        f"Requests arrive at random (exponential gaps) at the offered rate whatever the server "
        f"does; latency runs from each request's scheduled send time, so a stall delays every "
        f"request due during it, as real users would see (no coordinated omission). "
        f"`service p50` runs from the actual send instead. Requests count in the window they "
        f"were due in. A request still without an answer when the run stopped (in flight, or "
        f"never sent because every user was busy) is `unanswered`: a failure, and in the "
        f"percentiles at the time it had waited, a lower bound. In each round the ladder stops "
        f"for a server and framework at the first rate whose p99 passes {bound:g} ms; the max "
        f"rate is the lowest of the rounds' (sustained in every round).", "",
        markdown_table(["server", "framework", f"max rate with p99<{bound:g}ms (every round)",
                        "per round", "first rate over"], summary), "",
        markdown_table(["offered req/s", "server", "framework", "requests", "errors / wrong",
                        "goodput req/s", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms",
                        "unanswered", "service p50 ms"], rows), "",
    ]


def floor_section(meta: dict) -> list[str]:
    floor = meta.get("floor") or {}
    if not floor:
        return []
    rows = [[framework, ms(f["p50_ms"]), ms(f["p99_ms"]), f["batch_size"], ms(f["batch_p50_ms"]),
             f"{f['images_per_second']:.0f}"] for framework, f in floor.items()]
    return ["## Compute floor: ONNX Runtime in process", "",
            "The same ONNX file and pixels, `session.run` called in a loop in the runner's "
            "process (no HTTP, no JSON), with the service's thread setting.", "",
            markdown_table(["framework", "1 image p50 ms", "1 image p99 ms", "batch",
                            "batch p50 ms", "batch images/s"], rows), ""]


def integrity_section(runs: list[Run]) -> list[str]:
    mismatched = [r.spec["run_id"] for r in runs
                  if r.locust is not None and r.locust["requests"] != r.raw_requests]
    missing = [r.spec["run_id"] for r in runs if r.locust is None]
    bad_exit = [f"{r.spec['run_id']} ({r.spec['exit_code']})" for r in runs
                if r.spec["exit_code"] not in (0, 1)]
    errors = sum(r.stats.errors for r in runs)
    wrong = sum(r.stats.wrong_answers for r in runs)
    unanswered = sum(r.stats.unanswered for r in runs)
    lines = ["## Checks", "",
             "- Raw samples against Locust's final request counts: "
             + ("equal in every run." if not mismatched and not missing else
                f"different in {', '.join(mismatched) or 'no run'}; no Locust statistics in "
                f"{', '.join(missing) or 'no run'}."),
             f"- Failed requests in measured windows: {errors} errors, {wrong} wrong answers, "
             f"{unanswered} unanswered.",
             "- Locust exit codes: " + (", ".join(bad_exit) if bad_exit else "0 or 1 in every "
                                        "run (1: some request failed)."), ""]
    return lines


def write_runs_csv(path: Path, runs: list[Run]) -> None:
    fields = ["run_id", "round", "scenario", "target", "framework", "users", "rate", "exit_code"]
    with path.open("w", newline="") as stream:
        writer = csv.writer(stream)
        stat_names = list(runs[0].stats.as_dict()) if runs else []
        writer.writerow(fields + stat_names + ["locust_requests", "locust_failures"])
        for run in runs:
            locust = run.locust or {}
            writer.writerow([run.spec.get(f) for f in fields]
                            + [run.stats.as_dict()[n] for n in stat_names]
                            + [locust.get("requests"), locust.get("failures")])


def write_results(path: Path, settings: dict[tuple, Setting], rates: dict, meta: dict) -> None:
    results = {
        "settings": [{
            "scenario": s.scenario, "level": s.level, "target": s.target,
            "framework": s.framework, "requests": s.total("requests"),
            "errors": s.total("errors"), "wrong_answers": s.total("wrong_answers"),
            "unanswered": s.total("unanswered"),
            "goodput_median": s.median("goodput"),
            "images_per_second_median": s.median("images_per_second"),
            "goodput_per_round": s.per_round("goodput"),
            **{f"p{q:g}_ms": s.percentile(q) for q in PERCENTILES},
            "p50_per_round": s.per_round("p50"),
        } for s in settings.values()],
        "max_rate": {f"{t}/{f}": found for (t, f), found in rates.items()},
        "accuracy": meta["accuracy"], "floor": meta.get("floor"),
    }
    path.write_text(json.dumps(results, indent=2, default=float))


def write_charts(out_dir: Path, settings: dict[tuple, Setting], rates: dict,
                 bound: float) -> dict[str, str]:
    """The PNG charts; each says what it shows in its title and axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")  # 2, 5, 10 rather than 2x10^0

    def sparse(value: float, _position) -> str:  # label the 2s and 5s between decades only
        mantissa = round(value / 10 ** math.floor(math.log10(value)), 6) if value > 0 else 0
        return f"{value:g}" if mantissa in (2.0, 5.0) else ""
    written = {}

    def log_y(axis) -> None:
        axis.set_yscale("log")
        axis.yaxis.set_major_formatter(plain)
        axis.yaxis.set_minor_formatter(FuncFormatter(sparse))
        axis.tick_params(axis="y", which="minor", labelsize=7)

    def style(setting: Setting) -> dict:
        return {"color": COLOURS.get(setting.framework, "grey"),
                "linestyle": LINESTYLES.get(setting.target, ":"), "marker": "o",
                "label": f"{setting.framework}, {TARGET_LABELS.get(setting.target, setting.target)}"}

    def series(scenario: str) -> dict[tuple[str, str], list[Setting]]:
        grouped = defaultdict(list)
        for s in ordered(settings, scenario):
            grouped[(s.target, s.framework)].append(s)
        return grouped

    closed = ordered(settings, "closed")
    if closed:
        levels = sorted({s.level for s in closed})
        figure, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels) + 1, 4.6),
                                    sharey=True, squeeze=False)
        for axis, level in zip(axes[0], levels, strict=True):
            for s in (s for s in closed if s.level == level):
                axis.plot([f"p{q:g}" for q in PERCENTILES],
                          [s.percentile(q) for q in PERCENTILES], **style(s))
            axis.set_title(f"{level:g} concurrent user{'s' if level != 1 else ''}")
            axis.set_xlabel("percentile")
            log_y(axis)
            axis.grid(True, which="both", alpha=0.3)
        axes[0][0].set_ylabel("latency (ms, log scale)")
        axes[0][-1].legend(fontsize=8, handlelength=3.5)
        figure.suptitle("Closed loop: request latency by percentile (lower is better)\n"
                        "solid: BentoML service, dashed: Starlette baseline")
        figure.tight_layout()
        figure.savefig(out_dir / CHARTS["latency_percentiles"], dpi=110)
        plt.close(figure)
        written["latency_percentiles"] = CHARTS["latency_percentiles"]

        figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
        for points in series("closed").values():
            x = [p.level for p in points]
            low = [p.median("goodput") - min(p.per_round("goodput")) for p in points]
            high = [max(p.per_round("goodput")) - p.median("goodput") for p in points]
            kwargs = style(points[0])
            left.errorbar(x, [p.median("goodput") for p in points], yerr=[low, high],
                          capsize=3, **kwargs)
            right.plot(x, [p.percentile(99) for p in points], **kwargs)
        for axis in (left, right):
            axis.set_xscale("log", base=2)
            axis.xaxis.set_major_formatter(plain)
            axis.set_xlabel("concurrent users (closed loop, no wait)")
            axis.grid(True, which="both", alpha=0.3)
        left.set_ylabel("successful req/s (median of rounds; bars: min–max)")
        left.set_title("Goodput against users (higher is better)")
        right.set_ylabel("p99 latency (ms, log scale)")
        log_y(right)
        right.set_title("p99 latency against users (lower is better)")
        left.legend(fontsize=8, handlelength=3.5)
        figure.tight_layout()
        figure.savefig(out_dir / CHARTS["throughput_vs_users"], dpi=110)
        plt.close(figure)
        written["throughput_vs_users"] = CHARTS["throughput_vs_users"]

    if ordered(settings, "open"):
        figure, axis = plt.subplots(figsize=(8, 5))
        for points in series("open").values():
            axis.plot([p.level for p in points], [p.percentile(99) for p in points],
                      **style(points[0]))
        axis.axhline(bound, color="black", linewidth=1, linestyle=":",
                     label=f"p99 bound ({bound:g} ms)")
        axis.set_xlabel("offered rate (requests per second, Poisson arrivals)")
        axis.set_ylabel("p99 latency from scheduled send (ms, log scale)")
        log_y(axis)
        axis.set_title("Open loop: p99 latency against offered rate\n"
                       "(the highest rate under the dotted line is the capacity)")
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8, handlelength=3.5)
        figure.tight_layout()
        figure.savefig(out_dir / CHARTS["latency_vs_rate"], dpi=110)
        plt.close(figure)
        written["latency_vs_rate"] = CHARTS["latency_vs_rate"]

    batch = ordered(settings, "batch")
    if batch:
        frameworks = list(dict.fromkeys(s.framework for s in batch))
        targets = [t for t in TARGET_LABELS if any(s.target == t for s in batch)]
        width = 0.8 / max(1, len(targets))
        figure, axis = plt.subplots(figsize=(8, 5))
        for i, target in enumerate(targets):
            chosen = {s.framework: s for s in batch if s.target == target}
            x = [j + i * width for j, f in enumerate(frameworks) if f in chosen]
            values = [chosen[f].median("images_per_second") for f in frameworks if f in chosen]
            bars = axis.bar(x, values, width, label=TARGET_LABELS.get(target, target),
                            color=[COLOURS.get(f, "grey") for f in frameworks if f in chosen],
                            alpha=1.0 if target == "service" else 0.45, edgecolor="black")
            axis.bar_label(bars, fmt="%.0f", fontsize=8)
        axis.set_xticks([j + width * (len(targets) - 1) / 2 for j in range(len(frameworks))],
                        frameworks)
        axis.set_ylabel("images per second, successful requests (median of rounds)")
        size = batch[0].runs[0].stats.images / max(1, batch[0].runs[0].stats.requests)
        axis.set_title(f"Batch requests ({size:.0f} images each): images per second "
                       "(higher is better)\nsolid: BentoML service, faded: Starlette baseline")
        axis.legend(fontsize=8, handlelength=3.5)
        axis.grid(True, axis="y", alpha=0.3)
        figure.tight_layout()
        figure.savefig(out_dir / CHARTS["batch_throughput"], dpi=110)
        plt.close(figure)
        written["batch_throughput"] = CHARTS["batch_throughput"]
    return written


if __name__ == "__main__":
    print(build_report(Path(sys.argv[1])))
