"""The Grafana dashboard (docs/grafana/porttrap.json): importable as Grafana exports it (a
datasource input), every query filtered by the host variable, panels laid out without overlap,
and every metric it queries exported by the daemon (so the two cannot drift apart; the
integration test checks the same against a real daemon's scrape)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from prometheus_client import generate_latest

from porttrap.config.schema import Config
from porttrap.daemon.metrics import registry_for
from porttrap.daemon.wiring import make_shell
from porttrap.testing import FakeClock, MemoryFirewall, MemoryStore
from scrape import METRIC, dashboard, dashboard_metrics, expressions, families, sample_names

DATASOURCE = {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
FILTERED = re.compile(r'\bporttrap_[a-z0-9_]+\{[^}]*instance=~"\$instance"[^}]*\}')


def panels() -> list[dict[str, Any]]:
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def test_it_imports_with_a_prometheus_datasource_input() -> None:
    board = dashboard()
    (source,) = board["__inputs"]
    assert (source["name"], source["type"], source["pluginId"]) == (
        "DS_PROMETHEUS", "datasource", "prometheus")  # fmt: skip
    assert board["uid"] == "porttrap" and board["title"] == "porttrap"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        assert panel["datasource"] == DATASOURCE, panel["title"]
        assert panel["title"] and panel["description"]
        refs = [t["refId"] for t in panel["targets"]]
        assert refs and len(refs) == len(set(refs)), panel["title"]
        assert all(t["datasource"] == DATASOURCE for t in panel["targets"])


def test_every_metric_selector_is_filtered_by_the_host_variable() -> None:
    for expr in expressions()[:-1]:  # the last is the variable's own query
        assert len(FILTERED.findall(expr)) == len(METRIC.findall(expr)), expr


def test_panels_do_not_overlap_and_fit_the_grid() -> None:
    def cells(panel: dict[str, Any]) -> set[tuple[int, int]]:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        return {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}  # fmt: skip

    for a, b in itertools.combinations(dashboard()["panels"], 2):
        assert not cells(a) & cells(b), (a["title"], b["title"])


def test_what_the_brief_asks_for_is_on_it() -> None:
    """Hit rate by protocol and class, top ports, bans, ban rate, drops, latency, backlog."""
    joined = "\n".join(expressions())
    for needed in ("sum by (proto, outcome) (rate(porttrap_hits_total",
                   "sum by (proto, kind) (rate(porttrap_hits_total",
                   "topk(10, sum by (proto, port) (increase(porttrap_hits_total",
                   "porttrap_bans_active", "rate(porttrap_bans_total",
                   "porttrap_events_dropped_total",
                   "histogram_quantile(0.99, sum by (le) (rate(porttrap_decision_seconds_bucket",
                   "porttrap_store_backlog"):  # fmt: skip
        assert needed in joined


def test_every_metric_it_queries_is_exported(tmp_path: Path) -> None:
    clock = FakeClock()
    daemon = make_shell(Config(state_dir=tmp_path), clock, MemoryStore(), MemoryFirewall(clock))
    exported = sample_names(families(generate_latest(registry_for(daemon.snapshot)).decode()))
    missing = dashboard_metrics() - exported
    assert not missing
    assert len(dashboard_metrics()) >= 15
