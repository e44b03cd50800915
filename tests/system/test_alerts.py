"""Alert rules and dashboard queries, checked by Prometheus' own promtool: the rules parse
(`promtool check rules`), behave as specified (`promtool test rules alerts_test.yml`), the
scrape config is valid, and every dashboard query is valid PromQL over metrics the code
exports."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import yaml

from tests.support.prometheus_tools import promtool_bin  # noqa: F401 - fixture

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "ehb-campaign.json"

#: Metrics another part of the project adds (daily facility reports); the dashboard and the
#: alerts already use these names.
PENDING: set[str] = set()


def _promtool(promtool: str, *args: str, cwd: Path = PROMETHEUS) -> str:
    result = subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_rules_parse(promtool_bin: str) -> None:  # noqa: F811
    out = _promtool(promtool_bin, "check", "rules", "alerts.yml")
    assert "SUCCESS" in out


def test_rules_behave(promtool_bin: str) -> None:  # noqa: F811
    out = _promtool(promtool_bin, "test", "rules", "alerts_test.yml")
    assert "SUCCESS" in out


def test_every_alert_is_unit_tested() -> None:
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t["alert_rule_test"]
        if case["exp_alerts"]
    }
    assert alerts == fired


def test_scrape_config_is_valid(promtool_bin: str, tmp_path: Path) -> None:  # noqa: F811
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    config["rule_files"] = [str(PROMETHEUS / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    _promtool(promtool_bin, "check", "config", "prometheus.yml", cwd=tmp_path)


def _dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [
        (p["title"], t["expr"])
        for p in dashboard["panels"]
        if p["type"] != "row"
        for t in p["targets"]
    ]


def test_dashboard_queries_are_valid_promql(
    promtool_bin: str,  # noqa: F811
    tmp_path: Path,
) -> None:
    rules = [
        {"record": f"dashboard:query_{i}", "expr": expr.replace("$__rate_interval", "5m")}
        for i, (_, expr) in enumerate(_dashboard_queries())
    ]
    path = tmp_path / "dashboard_queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool(promtool_bin, "check", "rules", str(path), cwd=tmp_path)


def _exported_metric_names() -> set[str]:
    """Metric names the project's code defines (prometheus_client and its collectors)."""
    names: set[str] = set()
    for module in [
        *ROOT.glob("sinks/*.py"),
        *ROOT.glob("streams/*.py"),
        *ROOT.glob("producers/*.py"),
        *ROOT.glob("ehb/*.py"),
    ]:
        text = module.read_text(encoding="utf-8")
        names.update(re.findall(r'"((?:ehb|kafka)_[a-z0-9_]+)"', text))
    return names


def test_dashboard_and_alert_metrics_exist() -> None:
    exported = _exported_metric_names()
    known = set(exported)
    for name in exported:  # counters gain _total, histograms _bucket/_sum/_count
        known |= {f"{name}_total", f"{name}_bucket", f"{name}_sum", f"{name}_count"}
    used = {
        m
        for _, expr in _dashboard_queries()
        for m in re.findall(r"\b((?:ehb|kafka)_[a-z0-9_]+)", expr)
    }
    rules = yaml.safe_load((PROMETHEUS / "alerts.yml").read_text())
    used |= {
        m
        for g in rules["groups"]
        for r in g["rules"]
        for m in re.findall(r"\b((?:ehb|kafka)_[a-z0-9_]+)", r["expr"])
    }
    missing = used - known - PENDING
    assert not missing, f"used but not exported by the code: {sorted(missing)}"
