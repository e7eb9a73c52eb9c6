"""Prometheus metrics on a registry of our own (no global default registry).

Per-request figures (status, tokens, time to first token, inter-token latency, end-to-end latency) are
recorded by the AsyncEngine as requests run; engine gauges (running, waiting, KV usage, preemptions,
prefix-cache queries and hits) are read from the engine's latest stats at scrape time.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

P = "oss_engine_"
_LATENCY_BUCKETS = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _EngineCollector:
    def __init__(self, stats_fn):
        self.stats_fn = stats_fn

    def collect(self):
        s = self.stats_fn()
        if s is None:
            return
        yield GaugeMetricFamily(P + "num_requests_running", "Requests being computed.", value=s.num_running)
        yield GaugeMetricFamily(P + "num_requests_waiting", "Requests waiting for admission.", value=s.num_waiting)
        yield GaugeMetricFamily(P + "kv_cache_usage_perc", "KV-cache blocks in use (fullest group), 0..1.",
                                value=s.kv_usage)
        yield CounterMetricFamily(P + "num_preemptions", "Requests preempted (recomputed later).",
                                  value=s.num_preemptions_total)
        yield CounterMetricFamily(P + "prefix_cache_queries", "Prompt tokens looked up in the prefix cache.",
                                  value=s.prefix_cache_queries)
        yield CounterMetricFamily(P + "prefix_cache_hits", "Prompt tokens served from the prefix cache.",
                                  value=s.prefix_cache_hits)
        rate = s.prefix_cache_hits / s.prefix_cache_queries if s.prefix_cache_queries else 0.0
        yield GaugeMetricFamily(P + "prefix_cache_hit_rate", "Prefix-cache hits over queries, 0..1.", value=rate)


class Metrics:
    def __init__(self, stats_fn):
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(P + "requests", "Finished requests by status.", ["status"], registry=r)
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed.", registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated.", registry=r)
        self.ttft = Histogram(P + "time_to_first_token_seconds", "Time to first token.", registry=r,
                              buckets=_LATENCY_BUCKETS)
        self.itl = Histogram(P + "inter_token_latency_seconds", "Time between output tokens.", registry=r,
                             buckets=_LATENCY_BUCKETS)
        self.e2e = Histogram(P + "e2e_request_latency_seconds", "End-to-end request latency.", registry=r,
                             buckets=_LATENCY_BUCKETS)
        r.register(_EngineCollector(stats_fn))

    def render(self) -> bytes:
        return generate_latest(self.registry)
