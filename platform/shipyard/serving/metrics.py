"""Prometheus metrics of the LLM runtime, on KServe's ``/metrics`` (the default registry)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("shipyard_requests_total", "OpenAI route requests by route and status code", ["route", "status"])
TOKENS = Counter("shipyard_tokens_total", "Tokens processed, by kind (prompt | completion)", ["kind"])
LATENCY = Histogram("shipyard_request_latency_seconds", "Request latency of the OpenAI routes", ["route"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
QUEUE_DEPTH = Gauge("shipyard_queue_depth", "Sequences waiting to join the engine's batch")
RUNNING = Gauge("shipyard_running_sequences", "Sequences the engine is decoding now")
BATCH_SIZE = Histogram("shipyard_batch_size", "Sequences per decode step", buckets=(1, 2, 4, 8, 16, 32))
RAG_DEGRADED = Counter("shipyard_rag_degraded_total", "Requests answered without RAG because retrieval failed")
GUARDRAIL = Counter("shipyard_guardrail_total", "What the guardrails found, by rail, where and action",
                    ["rail", "at", "action"])
CANCELLED = Counter("shipyard_cancelled_total", "Sequences the engine stopped because their client went away")


def count_rails(findings) -> None:
    """What the guardrails found (``shipyard.apps.guardrails.Finding``), into ``shipyard_guardrail_total``."""
    for f in findings:
        GUARDRAIL.labels(f.rail, f.where, f.action).inc()
