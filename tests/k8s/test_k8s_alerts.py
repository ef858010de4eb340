"""Alert rules: `promtool check rules/config` and `promtool test rules` unit tests that fire every alert."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from plankton_core.metrics import StageMetrics

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).parent
UNIT_TESTS = ["alerts_test.yml", "alerts_age_test.yml"]


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool not found: install Debian's prometheus package (apt-get install prometheus; .ci/run does)"
    return path


def rules_text() -> str:
    return yaml.safe_load((REPO / "k8s/local/alerts.yaml").read_text())["data"]["plankton-alerts.yml"]


@pytest.fixture
def rules_dir(tmp_path) -> Path:
    (tmp_path / "plankton-alerts.yml").write_text(rules_text())
    for name in UNIT_TESTS:
        shutil.copy(HERE / name, tmp_path / name)
    return tmp_path


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool(), *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_check_rules(rules_dir):
    proc = run("check", "rules", "plankton-alerts.yml", cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_check_config_with_the_rules_it_loads(tmp_path):
    docs = list(yaml.safe_load_all((REPO / "k8s/local/prometheus.yaml").read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["prometheus.yml"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    mounts = {
        m["name"]: m["mountPath"] for m in deployment["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    assert volumes["rules"]["configMap"]["name"] == "plankton-alerts"  # the rules ConfigMap is what is mounted
    rules_path = mounts["rules"]
    assert f"{rules_path}/*.yml" in config  # and where the config looks for rule files
    (tmp_path / "rules").mkdir()
    (tmp_path / "rules/plankton-alerts.yml").write_text(rules_text())
    (tmp_path / "prometheus.yml").write_text(config.replace(rules_path, str(tmp_path / "rules")))
    proc = run("check", "config", "prometheus.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 rule files found" in proc.stdout


def test_promtool_unit_tests_fire_every_alert(rules_dir):
    proc = run("test", "rules", *UNIT_TESTS, cwd=rules_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    alerts = {r["alert"] for g in yaml.safe_load(rules_text())["groups"] for r in g["rules"] if "alert" in r}
    fired = {
        case["alertname"]
        for name in UNIT_TESTS
        for test in yaml.safe_load((HERE / name).read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    assert alerts == fired, f"alerts without a firing test: {alerts - fired}"
    assert {
        "PlanktonJobFailed",
        "PlanktonStageSuccessTooOld",
        "PlanktonSupconLossNaN",
        "PlanktonSupconLossNotDecreasing",
        "PlanktonTrainingStalled",
    } <= alerts


def test_a_wrong_expectation_fails_promtool(rules_dir):
    """The unit tests can fail: expect the flat-loss alert on a falling loss and promtool says no."""
    text = (rules_dir / "alerts_test.yml").read_text()
    text = text.replace(
        "      - eval_time: 5h\n        alertname: PlanktonSupconLossNotDecreasing\n        exp_alerts: []",
        "      - eval_time: 5h\n        alertname: PlanktonSupconLossNotDecreasing\n        exp_alerts:\n"
        "          - exp_labels: {severity: warning, job: plankton_supcon, stage: supcon}",
    )
    (rules_dir / "alerts_test.yml").write_text(text)
    proc = run("test", "rules", "alerts_test.yml", cwd=rules_dir)
    assert proc.returncode != 0
    assert "PlanktonSupconLossNotDecreasing" in proc.stdout + proc.stderr


def produced_metric_names() -> set[str]:
    """Sample names the stages really expose: the common stage metrics plus supcon's gauges."""
    from plankton_core.supcon.stage import GAUGES

    m = StageMetrics("supcon", "r")
    m.count("images", 3)
    for name in GAUGES:
        m.gauge(name, 1.0, GAUGES[name])
    m.finish(ok=True, seconds=1.0)
    samples = [s for fam in text_string_to_metric_families(m.exposition().decode()) for s in fam.samples]
    assert all(s.labels.get("stage") == "supcon" for s in samples)  # the label every rule groups and joins on
    return {s.name for s in samples}


def test_rules_use_only_metric_names_the_stages_produce():
    exprs = " ".join(r["expr"] for g in yaml.safe_load(rules_text())["groups"] for r in g["rules"])
    used = set(re.findall(r"\bplankton_[a-z_]+", exprs))
    assert {
        "plankton_supcon_loss",
        "plankton_stage_last_progress_timestamp_seconds",
        "plankton_stage_failures_total",
    } <= used
    missing = used - produced_metric_names()
    assert not missing, f"rules refer to metrics no stage produces: {missing}"
