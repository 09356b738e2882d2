"""The Ray executor gives the local executor's results: the same probabilities and heatmaps from a
demo model whose weights sit in an actor, with only the prepared batch crossing to it. A killed
actor process is replaced and the pass retried; a model that fails on the actor is the model's
error (not retried). tests/integration/test_pipeline_executor.py: what the pipeline does when every
retry was lost (ExecutorLost)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from dicom_ai.domain import ImageResult, Instance
from dicom_ai.infer.card import ModelError
from dicom_ai.infer.executor import LocalExecutor, RayExecutor
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.train.phantom_dicom import write_chest_cr_study, write_ct_volume_study
from tests.infer.infer_support import instance_for

pytestmark = pytest.mark.ray

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def registry() -> ModelRegistry:
    return ModelRegistry(REPO / "models")


@pytest.fixture(scope="module")
def ray_executor(registry: ModelRegistry) -> Iterator[RayExecutor]:
    os.environ.pop("RAY_ADDRESS", None)
    executor = RayExecutor(registry, actor_cpus=1)  # no address: starts a local Ray of its own
    yield executor
    executor.close()


def _instances(paths: list[Path]) -> list[Instance]:
    return [instance_for(path) for path in paths]


def _same(local: list[ImageResult], remote: list[ImageResult]) -> None:
    assert [r.source.sop_instance_uid for r in remote] == [r.source.sop_instance_uid for r in local]
    for a, b in zip(local, remote):
        assert [f.label for f in a.findings] == [f.label for f in b.findings]
        assert np.allclose([f.probability for f in a.findings], [f.probability for f in b.findings], atol=1e-6)
        assert np.array_equal(a.display, b.display)
        assert (a.heatmap is None) == (b.heatmap is None)
        if a.heatmap is not None and b.heatmap is not None:
            assert np.allclose(a.heatmap, b.heatmap, atol=1e-5)


def test_head_ct_volume_gives_the_local_probabilities_and_heatmap_slices(
        tmp_path: Path, registry: ModelRegistry, ray_executor: RayExecutor) -> None:
    study = _instances(write_ct_volume_study(tmp_path / "ct", seed=2, finding=True))
    local = LocalExecutor(registry).predict("ct-head-demo", study, "all")
    remote = ray_executor.predict("ct-head-demo", study, "all")
    assert len(local) == 3 and max(f.probability for f in local[0].findings) > 0.9  # the demo's positive
    _same(local, remote)


def test_chest_radiographs_give_the_local_probabilities(tmp_path: Path, registry: ModelRegistry,
                                                        ray_executor: RayExecutor) -> None:
    study = _instances([p for seed in (105, 106) for p in write_chest_cr_study(tmp_path / str(seed), seed, seed == 105)])
    local = LocalExecutor(registry).predict("chest-xray-demo", study, "positive")
    remote = ray_executor.predict("chest-xray-demo", study, "positive")
    assert [r.heatmap is not None for r in local] == [True, False]  # only the positive gets one
    _same(local, remote)


def test_a_killed_actor_process_is_replaced_and_the_pass_retried(tmp_path: Path, registry: ModelRegistry,
                                                                ray_executor: RayExecutor) -> None:
    study = _instances(write_ct_volume_study(tmp_path / "ct", seed=2, finding=True))
    expected = ray_executor.predict("ct-head-demo", study, "none")
    [pid] = ray_executor.actor_pids("ct-head-demo")
    os.kill(pid, signal.SIGKILL)
    again = ray_executor.predict("ct-head-demo", study, "none")
    _same(expected, again)
    [replacement] = ray_executor.actor_pids("ct-head-demo")
    assert replacement != pid


def test_a_model_failing_on_its_actor_is_the_models_error_and_not_retried(ray_executor: RayExecutor) -> None:
    import ray

    before = ray_executor.actor_pids("ct-head-demo")
    wrong = ray.put(np.zeros((1, 1, 3, 3), dtype=np.float32))  # a 2-D input for a 3-D network
    with pytest.raises(ModelError, match=r"model ct-head-demo on Ray node \w+: "):
        ray_executor._run("ct-head-demo", wrong, "none", None)
    assert ray_executor.actor_pids("ct-head-demo") == before  # the actor is fine: nothing was replaced
