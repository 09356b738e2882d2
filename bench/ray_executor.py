"""Inference executors: head CT demo studies/min through the local executor and through Ray (one and
two Ray nodes on this machine), and the per-study inference time of each demo model and of a
DenseNet-121-size model on one core, for docs/scaling.md's capacity model.

A "study" here is what the pipeline asks of its executor: read the DICOM files, prepare the input,
run the network and Grad-CAM (heatmaps: all), and turn the outputs into findings and full-size
heatmaps; routing, encoding and sending are not in it (the inference benchmark measures those).
Callers are threads, as pipeline workers would be; each Ray node has one CPU, one actor per model.
"""

from __future__ import annotations

import logging
import os
import shutil
import statistics
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
import yaml
from pydicom import dcmread

from dicom_ai.domain import Instance
from dicom_ai.infer.executor import InferenceExecutor, LocalExecutor, RayExecutor
from dicom_ai.infer.registry import ModelRegistry
from dicom_ai.train import phantom_dicom

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parent.parent
CT_MODEL = "ct-head-demo"
NODE_OBJECT_STORE = 100 * 1024 * 1024
# Each demo model with the phantom study its e2e test sends (tests/e2e/test_demo_models.py).
DEMO_STUDIES: dict[str, Callable[..., list[Path]]] = {
    "chest-xray-demo": phantom_dicom.write_chest_cr_study,
    "mammography-demo": phantom_dicom.write_mammography_study,
    "brain-mr-demo": phantom_dicom.write_brain_mr_study,
    "ct-head-demo": phantom_dicom.write_ct_volume_study,
    "endoscopy-demo": phantom_dicom.write_endoscopy_study,
}


def _instances(paths: list[Path]) -> list[Instance]:
    out = []
    for path in paths:
        ds = dcmread(path, stop_before_pixels=True)
        out.append(Instance(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.SeriesInstanceUID),
                            str(ds.StudyInstanceUID), path))
    return out


def _throughput(executor: InferenceExecutor, studies: list[list[Instance]], callers: int) -> float:
    """Studies per minute with `callers` threads taking studies from one list (after one warm-up each)."""
    for study in studies[:callers]:
        executor.predict(CT_MODEL, study, "all")
    queue = list(studies)
    lock = threading.Lock()

    def worker() -> int:
        done = 0
        while True:
            with lock:
                if not queue:
                    return done
                study = queue.pop()
            executor.predict(CT_MODEL, study, "all")
            done += 1

    started = time.perf_counter()
    with ThreadPoolExecutor(callers) as pool:
        total = sum(pool.map(lambda _: worker(), range(callers)))
    return total / (time.perf_counter() - started) * 60


def _on_ray(registry: ModelRegistry, nodes: int, studies: list[list[Instance]], callers: int) -> float:
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "object_store_memory": NODE_OBJECT_STORE, "include_dashboard": False})
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1, object_store_memory=NODE_OBJECT_STORE)
        cluster.wait_for_nodes()
        executor = RayExecutor(registry, address=cluster.address, actor_cpus=1)
        try:
            return _throughput(executor, studies, callers)
        finally:
            executor.close()
            ray.shutdown()
    finally:
        cluster.shutdown()


def _densenet121_folder(workdir: Path) -> Path:
    """models/examples/chexnet's card with untrained DenseNet-121 weights and thresholds set: its cost, not its findings."""
    folder = workdir / "densenet-models" / "chexnet"
    folder.mkdir(parents=True, exist_ok=True)
    card = yaml.safe_load((REPO / "models" / "examples" / "chexnet" / "model.yaml").read_text())
    for label in card["labels"]:
        if label.get("threshold") == "site":
            label["threshold"] = 0.5
    card.pop("onnx", None)
    card["architecture"]["weights_layout"] = "monai"  # our own state_dict, not torchvision's names
    (folder / "model.yaml").write_text(yaml.safe_dump(card, sort_keys=False))
    from monai.networks.nets import DenseNet121

    torch.manual_seed(0)
    torch.save(DenseNet121(**card["architecture"]["kwargs"]).state_dict(), folder / card["weights"])
    return folder.parent


def per_study_seconds(workdir: Path, repeats: int) -> list[dict[str, Any]]:
    """Median seconds of one study through the local executor on one core (torch threads 1), per model."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        registry = ModelRegistry(REPO / "models")
        cases: list[tuple[str, ModelRegistry, list[Instance]]] = []
        for name, writer in DEMO_STUDIES.items():
            cases.append((name, registry, _instances(writer(workdir / "capacity" / name, 2, True))))
        from pydicom.data import get_testdata_file

        cr = get_testdata_file("RG1_UNCR.dcm", download=False)
        if cr is not None:  # a real CR (1841 x 1955) for the DenseNet-121-size model
            dense = ModelRegistry(_densenet121_folder(workdir), fast_path=False)
            cases.append(("chexnet (DenseNet-121, untrained weights, torch)", dense, _instances([Path(cr)])))
        for name, models, study in cases:
            executor = LocalExecutor(models)
            model = name.split(" ")[0]
            executor.predict(model, study, "all")  # loads and warms up
            times = []
            for _ in range(repeats):
                started = time.perf_counter()
                executor.predict(model, study, "all")
                times.append(time.perf_counter() - started)
            seconds = statistics.median(times)
            rows.append({"model": name, "backend": models.get(model).backend, "images": len(study),
                         "study_s": seconds, "studies_per_hour_per_core": 3600 / seconds})
            log.info("capacity: %s %.3f s per study on one core", name, seconds)
    finally:
        torch.set_num_threads(threads)
    return rows


def run(workdir: Path, studies: int) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # the caller prepares inputs; the actors hold the compute
    os.environ.pop("RAY_ADDRESS", None)
    try:
        corpus = [_instances(phantom_dicom.write_ct_volume_study(workdir / f"ct{n}", n, n % 2 == 0))
                  for n in range(studies)]
        registry = ModelRegistry(REPO / "models")
        rows = [{"executor": "local", "ray_nodes": 0, "callers": 1,
                 "studies_per_min": _throughput(LocalExecutor(registry), corpus, 1)}]
        log.info("executor bench: %s", rows[-1])
        for nodes, callers in ((1, 1), (1, 2), (2, 1), (2, 2)):
            rows.append({"executor": "ray", "ray_nodes": nodes, "callers": callers,
                         "studies_per_min": _on_ray(registry, nodes, corpus, callers)})
            log.info("executor bench: %s", rows[-1])
        rows.append({"executor": "local (again, for drift)", "ray_nodes": 0, "callers": 1,
                     "studies_per_min": _throughput(LocalExecutor(registry), corpus, 1)})
        log.info("executor bench: %s", rows[-1])
        capacity = per_study_seconds(workdir, max(3, studies // 4))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    # A shared machine's load changes what a core gives: the numbers are comparable within one run only.
    return {"studies": studies, "cpus": os.cpu_count(), "load_average": os.getloadavg()[0], "throughput": rows,
            "capacity": capacity}


if __name__ == "__main__":
    import json
    import sys

    logging.basicConfig(level=logging.INFO)
    print(json.dumps(run(Path("/tmp/bench-ray"), int(sys.argv[1]) if len(sys.argv) > 1 else 20), indent=2))
