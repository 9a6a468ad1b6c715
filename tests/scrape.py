"""Reading a metrics scrape with the Prometheus client's own parser, and the metric names the
Grafana dashboard (docs/grafana/porttrap.json) queries: unit and integration tests share them."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

DASHBOARD = Path(__file__).parent.parent / "docs" / "grafana" / "porttrap.json"
# The sample names each type of family gives (as the client's registry names them).
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",),
            "info": ("_info",)}  # fmt: skip
METRIC = re.compile(r"\bporttrap_[a-z0-9_]+")

Labels = frozenset[tuple[str, str]]


def families(text: str) -> dict[str, Metric]:
    """The families of a scrape by name (a counter's without its _total, as the parser has it)."""
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_names(scraped: dict[str, Metric]) -> set[str]:
    """Every series name a query may use: those of the samples, and those each family declares
    even before it has samples (a counter of kernel reports before the first report)."""
    names = {sample.name for family in scraped.values() for sample in family.samples}
    for family in scraped.values():
        names |= {family.name + suffix for suffix in SUFFIXES.get(family.type, ("",))}
    return names


def labels(**pairs: str) -> Labels:
    """A sample's labels as `values` keys them."""
    return frozenset(pairs.items())


def values(family: Metric, sample: str | None = None) -> dict[Labels, float]:
    """The samples of `family` (named `sample`; by default its main one) by their labels."""
    name = sample or {"counter": f"{family.name}_total"}.get(family.type, family.name)
    return {frozenset(s.labels.items()): s.value for s in family.samples if s.name == name}


def by(label: str, family: Metric, sample: str | None = None) -> dict[str, float]:
    """{label value: sample value} of a family, summed over its other labels."""
    found: dict[str, float] = {}
    for labels, value in values(family, sample).items():
        key = dict(labels)[label]
        found[key] = found.get(key, 0.0) + value
    return found


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return loaded


def expressions() -> list[str]:
    """Every PromQL expression of the dashboard's panels and variables."""
    board = dashboard()
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [v["query"]["query"] for v in board["templating"]["list"]]
    return found


def dashboard_metrics() -> set[str]:
    return {name for expr in expressions() for name in METRIC.findall(expr)}
