"""Metric names that deploy/prometheus/alerts.yml and the Grafana dashboard read."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
_NAME = re.compile(r"\b((?:aurum|flower)_[a-z_]+)")  # recording rules (aurum:…) excluded


def used_metric_names() -> set[str]:
    groups = yaml.safe_load((ROOT / "deploy/prometheus/alerts.yml").read_text())["groups"]
    exprs = [rule["expr"] for group in groups for rule in group["rules"]]
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/aurum.json").read_text())
    exprs += [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    return {name for expr in exprs for name in _NAME.findall(expr)}


def served_metric_names(text: str) -> set[str]:
    """Sample names in a Prometheus text page (histograms' _bucket/_sum/_count included)."""
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }
