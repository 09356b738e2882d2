"""A study whose compute went away (a Ray actor, worker or node lost for every retry) goes back to the
queue and is processed once more when the executor works again: never failed, never lost, and
finished exactly once with the results the local executor gives."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from pydicom import dcmread

from dicom_ai.config import Settings
from dicom_ai.domain import ImageResult, Instance, ReceivedInstance, StudyState
from dicom_ai.infer.executor import ExecutorLost, LocalExecutor
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.infer.runner import HeatmapPolicy, ModelFront
from dicom_ai.pipeline import Pipeline
from dicom_ai.receive.keep import read_identity
from dicom_ai.route.loader import RuleWatcher
from dicom_ai.store import Spool, Stores
from dicom_ai.train.phantom_dicom import write_ct_volume_study

REPO = Path(__file__).resolve().parents[2]


class FlakyExecutor:
    """The local executor, except that the first `losses` passes find their compute gone."""

    def __init__(self, registry: ModelRegistry, losses: int) -> None:
        self.local = LocalExecutor(registry)
        self.losses = losses
        self.calls = 0

    def front(self, model_name: str) -> ModelFront:
        return self.local.front(model_name)

    def predict(self, model_name: str, instances: Sequence[Instance], heatmaps: HeatmapPolicy) -> list[ImageResult]:
        self.calls += 1
        if self.calls <= self.losses:
            raise ExecutorLost(f"model {model_name}: 3 Ray attempts lost (ActorDiedError on node 0123abcd)")
        return self.local.predict(model_name, instances, heatmaps)

    def close(self) -> None:
        pass


def test_a_study_whose_inference_was_lost_is_queued_again_and_finished_once(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path / "home", port=11112, stable_after=1.0)
    store, spool = Stores.open(settings.database_path), Spool(settings.spool_dir)
    registry = ModelRegistry(REPO / "models")
    executor = FlakyExecutor(registry, losses=1)
    pipeline = Pipeline(store.studies, spool, RuleWatcher(REPO / "rules", known_models=registry.names()), registry,
                        settings, executor=executor)
    try:
        for path in write_ct_volume_study(tmp_path / "ct", seed=2, finding=True):
            identity = read_identity(path, str(dcmread(path, stop_before_pixels=True).SOPInstanceUID), "TEST",
                                     "1.2.840.10008.1.2.1")
            store.studies.record_instance(ReceivedInstance(**{**identity.__dict__, "size": path.stat().st_size}))
        store.studies.complete_quiet_studies(time.time() + 2)

        study_uid = pipeline.process_next()
        assert study_uid is not None
        [row] = store.reports.studies(study_uid=study_uid)
        assert row.state == StudyState.PROCESSING  # neither failed nor finished: waiting to be queued again
        assert "inference lost" in pipeline.deferred[study_uid].reason
        assert pipeline.process_next() is None  # not before its wait is over

        assert pipeline.release_deferred(now=time.time() + 3600) == [study_uid]
        assert pipeline.process_next() == study_uid
        [row] = store.reports.studies(study_uid=study_uid)
        assert row.state == StudyState.DONE
        assert executor.calls == 2
        assert len(store.studies.current_results(study_uid, "ct-head-demo")) == 4  # SR + 3 heatmaps, once
    finally:
        store.close()
