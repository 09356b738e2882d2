"""GET /metrics: Prometheus text, computed from the database at scrape time.

Every number comes from rows (or the disk), not from counters in this process: several node
processes, or a restart, still give one consistent answer. Labels hold AE titles, carriers, models,
states; never a patient, study or accession. Histograms are built from rows at each scrape:
turnaround (last instance received -> SR acknowledged by the PACS) over the last 24 h,
inference seconds per model from the `model_ran` events of the same window.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Reports

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
TURNAROUND_WINDOW_S = 24 * 3600.0  # what the dashboard shows; a scrape reads only these rows
TURNAROUND_BUCKETS = (10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 4 * 3600.0, 24 * 3600.0)
INFERENCE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def histogram(name: str, documentation: str, values: Iterable[float], buckets: Sequence[float],
              labels: dict[str, str] | None = None, family: HistogramMetricFamily | None = None) -> HistogramMetricFamily:
    """A histogram family (or one more labelled series in `family`) from raw observations."""
    values = list(values)
    counts = [(str(bound), float(sum(v <= bound for v in values))) for bound in buckets]
    counts.append(("+Inf", float(len(values))))
    labels = labels or {}
    family = family or HistogramMetricFamily(name, documentation, labels=list(labels))
    family.add_metric(list(labels.values()), counts, sum_value=sum(values))
    return family


class NodeCollector(Collector):
    """The node's metrics, read from the database at each scrape."""

    def __init__(self, reports: Reports, home: Path, rules: RuleWatcher | None = None) -> None:
        self.reports = reports
        self.home = home
        self.rules = rules

    def collect(self) -> Iterator[Metric]:
        now = time.time()
        query = self.reports.database.query
        received = CounterMetricFamily("dicom_ai_instances_received", "DICOM instances received, by calling AE title "
                                       "(STOW-RS senders as 'STOW-RS')", labels=["calling_ae"])
        by_ae: dict[str, float] = {}
        # Grouped by the column itself, in its index's order (a coalesce() would sort every row first);
        # a NULL and an empty AE title, or two spellings of one sender, are one series.
        for row in query("select calling_aet as aet, sum(receive_count) as n from instances group by calling_aet"):
            ae = _ae(row["aet"] or "")
            by_ae[ae] = by_ae.get(ae, 0.0) + float(row["n"] or 0)
        for ae, n in by_ae.items():
            received.add_metric([ae], n)
        yield received
        studies = GaugeMetricFamily("dicom_ai_studies", "studies in the database by state", labels=["state"])
        for row in query("select state, count(*) as n from studies group by state"):
            studies.add_metric([row["state"]], float(row["n"]))
        yield studies
        sends = CounterMetricFamily("dicom_ai_sends", "results and notices by carrier and outcome "
                                    "(sent, failed: given up, discarded)", labels=["carrier", "outcome"])
        depth = GaugeMetricFamily("dicom_ai_outbox_depth", "sends waiting to be delivered, by carrier", labels=["carrier"])
        oldest = GaugeMetricFamily("dicom_ai_outbox_oldest_age_seconds", "age of the oldest waiting send, by carrier",
                                   labels=["carrier"])
        for row in self.reports.sends_by_carrier():
            if row["state"] == "pending":
                depth.add_metric([row["kind"]], float(row["n"]))
                oldest.add_metric([row["kind"]], max(now - float(row["oldest"]), 0.0))
            else:
                sends.add_metric([row["kind"], row["state"]], float(row["n"]))
        yield from (sends, depth, oldest)
        yield histogram("dicom_ai_turnaround_seconds", "last instance received -> SR acknowledged by the PACS, "
                        "studies acknowledged in the last 24 h", self.reports.turnarounds(now - TURNAROUND_WINDOW_S),
                        TURNAROUND_BUCKETS)
        yield self._inference(now)
        if self.rules is not None:
            reloads = CounterMetricFamily("dicom_ai_rules_reloads", "rules reloads by this process, by outcome",
                                          labels=["outcome"])
            reloads.add_metric(["ok"], float(self.rules.reloads))
            reloads.add_metric(["error"], float(self.rules.reload_errors))
            yield reloads
        disk = shutil.disk_usage(self.home if self.home.exists() else self.home.parent)
        yield GaugeMetricFamily("dicom_ai_disk_free_bytes", "free bytes on the disk of the node's home", value=disk.free)

    def _inference(self, now: float) -> HistogramMetricFamily:
        by_model: dict[str, list[float]] = {}
        for row in self.reports.model_runs(now - TURNAROUND_WINDOW_S):
            by_model.setdefault("?" if row["model"] is None else str(row["model"]), []).append(float(row["seconds"]))
        family = HistogramMetricFamily("dicom_ai_inference_seconds", "time a model took on one study (pre-processing, "
                                       "inference, post-processing), last 24 h", labels=["model"])
        for model, values in sorted(by_model.items()):
            histogram("", "", values, INFERENCE_BUCKETS, {"model": model}, family)
        return family


def _ae(value: str) -> str:
    return value.split(" over ")[-1] if " over " in value else (value or "?")


def metrics_text(collector: NodeCollector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)
