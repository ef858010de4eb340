"""Kubernetes Jobs for the stages, without the kubernetes client: settings, rendering,
reading Job status, and the local runner. `jobs/_kube.py` talks to the API server."""

from .local import LocalRunner, policy_action
from .render import dump, new_run_id, render_stage
from .settings import Settings, default_k8s_dir, parse_set

__all__ = [
    "LocalRunner",
    "Settings",
    "default_k8s_dir",
    "dump",
    "new_run_id",
    "parse_set",
    "policy_action",
    "render_stage",
]
