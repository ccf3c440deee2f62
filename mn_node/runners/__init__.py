"""Runners: how an executor agent's work runs on a node (one interface, several kinds)."""

from mn_node.runners.base import AttemptRecord, Runner, RunRequest, RunResult, envelope, output_payload

__all__ = ["AttemptRecord", "RunRequest", "RunResult", "Runner", "envelope", "output_payload"]
