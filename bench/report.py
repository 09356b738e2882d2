"""The markdown table of a run (bench/results/latest.md), including how far each target is missed."""

from __future__ import annotations

from typing import Any


def _f(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _receive(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## 1. Receive throughput (storescu → receiver, loopback, medians of interleaved rounds)", "",
           "| corpus | TCP_NODELAY | assoc. | receiver | instances | inst/s | MB/s | peak RSS MiB | dicom-ai speed vs this peer |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ours_over_peer")
        out.append(f"| {r['corpus']} | {'1' if r['nodelay'] else 'unset'} | {r['associations']} | {r['receiver']} | "
                   f"{r['instances']} | {_f(r['inst_per_s'])} | {_f(r['mb_per_s'])} | {_f(r['peak_rss_mb'], 0)} | "
                   f"{'' if ratio is None else f'{ratio:.2f}×'} |")
    out += ["", "The last column is the per-round ratio peer time / dicom-ai time, medianed: above 1 we are faster.", ""]
    stow = [r for r in rows if r.get("stow_over_cstore") is not None]
    if stow:
        out += ["### STOW-RS receive vs C-STORE receive (the same dicom-ai node, same durability)", "",
                "| corpus | instances | STOW-RS inst/s | STOW-RS MB/s | peak RSS MiB | STOW-RS speed vs C-STORE |",
                "|---|---|---|---|---|---|"]
        for r in stow:
            out.append(f"| {r['corpus']} | {r['instances']} | {_f(r['inst_per_s'])} | {_f(r['mb_per_s'])} | "
                       f"{_f(r['peak_rss_mb'], 0)} | {r['stow_over_cstore']:.2f}× |")
        out += ["", "Per-round ratio C-STORE time / STOW-RS time, medianed: above 1 STOW-RS is faster. Senders: "
                "storescu (one association) and curl (one request per study over one connection), both C.", ""]
    return out


def _targets(results: dict[str, Any]) -> list[str]:
    out = ["## Targets", "", "| target | measured | verdict |", "|---|---|---|"]
    for r in results.get("receive", []):
        if r["receiver"] == "storescp" and r.get("ours_over_peer") is not None:
            ratio = r["ours_over_peer"]
            what = f"dicom-ai ≥ storescp, {r['corpus']}, nodelay={'1' if r['nodelay'] else 'unset'}, ×{r['associations']}"
            verdict = "met" if ratio >= 1 else f"missed: {(1 - ratio) * 100:.0f}% slower ({1 / ratio:.1f}× the time)"
            out.append(f"| {what} | {ratio:.2f}× | {verdict} |")
    ours = [r for r in results.get("receive", []) if r["receiver"] == "dicom-ai" and r["nodelay"] and r["associations"] == 1]
    if ours:
        low, high = min(r["peak_rss_mb"] for r in ours), max(r["peak_rss_mb"] for r in ours)
        growth = (high - low) / low * 100 if low else 0
        out.append(f"| flat memory whatever the instance size | peak RSS {low:.0f}–{high:.0f} MiB | "
                   f"{'met' if growth <= 10 else 'missed'} ({growth:.0f}% spread) |")
    out += _scale_targets(results)
    t = results.get("turnaround")
    if t:
        p50 = t["p50_minus_waits_s"]
        out.append(f"| turnaround minus stability waits < 1 s (chest CR) | p50 {p50:.2f} s, p95 {t['p95_minus_waits_s']:.2f} s | "
                   f"{'met' if p50 < 1 else f'missed by {p50 - 1:.2f} s (p50)'} |")
    v = results.get("validation")
    if v:
        for command, key in (("evaluate", "evaluate_s"), ("export seismometer", "export_s")):
            seconds, target = v[key], v["target_s"]
            verdict = "met" if seconds < target else f"missed by {seconds - target:.1f} s"
            cpu = v[key.replace("_s", "_cpu_s")]
            out.append(f"| `dicom-ai {command}` over {v['predictions']:,} predictions < {target:.0f} s | "
                       f"{seconds:.1f} s ({cpu:.1f} s CPU) | {verdict} |")
    r = results.get("validation_turnaround")
    if r:
        ratio = r["reports_over_quiet"]
        out.append(f"| final reports and assessments add nothing measurable to the turnaround (chest CR p50) | "
                   f"{r['reports_p50_s']:.2f} s vs {r['quiet_p50_s']:.2f} s: {ratio:.2f}× | "
                   f"{'met' if ratio <= 1.05 else 'missed (or noise: see the spread)'} |")
    c = results.get("console")
    if c:
        for name, key in (("dashboard", "dashboard_ms"), ("studies search", "studies_search_ms"),
                          ("`/api/studies`", "api_studies_ms"), ("`/metrics`", "metrics_ms")):
            ms = c[key]
            out.append(f"| console {name} with {c['studies']:,} studies < 200 ms | {ms:.0f} ms | "
                       f"{'met' if ms < 200 else f'missed by {ms - 200:.0f} ms'} |")
    rr = results.get("rules_replay")
    if rr:
        seconds = rr["replay_s"]
        out.append(f"| replay of a rules draft over {rr['studies']:,} stored studies < 10 s | {seconds:.1f} s | "
                   f"{'met' if seconds < 10 else f'missed by {seconds - 10:.1f} s'} |")
    return out + [""]


def _scale_targets(results: dict[str, Any]) -> list[str]:
    """The scale issue's targets: receive against storescp and Orthanc, memory, receive while inferring, workers."""
    out: list[str] = []
    wanted = {("CT", 1): 0.5, ("CT", 4): 0.8, ("DX", 1): 1.0, ("MG", 1): 1.0}
    for r in results.get("receive", []):
        ratio = r.get("ours_over_peer")
        if ratio is None or not r["nodelay"]:
            continue
        if r["receiver"] == "storescp":
            target = wanted.get((r["corpus"].split()[0], r["associations"]))
            if target is None or "(half)" in r["corpus"]:
                continue
        elif r["receiver"] == "Orthanc":
            target = 1.0
        else:
            continue
        verdict = "met" if ratio >= target else f"missed by {target - ratio:.2f}×"
        out.append(f"| dicom-ai (processes) ≥ {target:.1f}× {r['receiver']}, {r['corpus']}, ×{r['associations']} | "
                   f"{ratio:.2f}× | {verdict} |")
    ours = [r for r in results.get("receive", []) if r["receiver"] == "dicom-ai"]
    if ours:
        high = max(r["peak_rss_mb"] for r in ours)
        out.append(f"| receiving process's peak RSS < 150 MiB on every corpus | ≤ {high:.0f} MiB | "
                   f"{'met' if high < 150 else 'missed'} |")
    for r in results.get("turnaround_load", []):
        out.append(f"| chest CR turnaround minus waits at {r['rate_per_min']:.0f} studies/min (reported) | "
                   f"p50 {r['p50_minus_waits_s']:.2f} s, p95 {r['p95_minus_waits_s']:.2f} s | reported |")
    p = results.get("processes")
    if p:
        b = p["receive_busy"]
        ratio = b["busy_over_idle"]
        out.append(f"| CT receive while the workers run the head CT model ≥ 0.9× idle | {b['busy_inst_per_s']:.0f} vs "
                   f"{b['idle_inst_per_s']:.0f} inst/s: {ratio:.2f}× | {'met' if ratio >= 0.9 else f'missed by {0.9 - ratio:.2f}×'} |")
        for r in p["workers"]:
            if "speed_up" in r:
                out.append(f"| {r['kind']} studies/s, 2 workers vs 1 (reported; at most the cores free) | "
                           f"{r['speed_up']:.2f}× | reported |")
    return out


def _turnaround_load(rows: list[dict[str, Any]]) -> list[str]:
    out = ["### Chest CR turnaround under a sustained load", "",
           "storescu sends one chest CR study to Orthanc every 60/rate s whether or not earlier SRs are back; one "
           "node with its default workers; the same waits as above.", "",
           "| studies/min asked | sent at /min | studies | at most in flight | p50 s | p95 s | p50 − waits s | "
           "p95 − waits s |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['rate_per_min']:.0f} | {r['achieved_per_min']:.0f} | {r['studies']} | {r['max_in_flight']} | "
                   f"{r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p50_minus_waits_s']:.2f} | {r['p95_minus_waits_s']:.2f} |")
    return out + [""]


def _processes(p: dict[str, Any]) -> list[str]:
    b = p["receive_busy"]
    out = ["## Processes: receive while inferring, and pipeline workers (`dicom-ai serve`, dicom_ai/procs/)", "",
           f"CT 512×512, {b['instances']} instances by one storescu association into one node: idle, then (a new "
           f"corpus, same size) while its workers process a backlog of {b['backlog_studies']} head CT studies that "
           f"became complete together ({b.get('backlog_waiting_at_start', '?')} waiting when the busy send started, "
           f"{b['studies_waiting_at_end']} when it ended: "
           + ("the workers were busy throughout" if b["studies_waiting_at_end"] else
              "the backlog ran out before the send ended, so it was busy for part of it only")
           + f"). Load average {p.get('load_average', 0):.1f} at the end.", "",
           "| receive | inst/s | receiver peak RSS MiB |", "|---|---|---|",
           f"| idle | {b['idle_inst_per_s']:.1f} | |",
           f"| workers inferring | {b['busy_inst_per_s']:.1f} | {b['receiver_peak_rss_mb']:.0f} |",
           f"| busy / idle | {b['busy_over_idle']:.2f}× | |", "",
           "Complete studies processed by 1 and 2 workers: received first by a node that completes nothing, then "
           "served again so that every study becomes complete together; from the first completion to the last "
           "processed, the node's own timestamps:", "",
           "| study | workers | studies | seconds | studies/s | speed-up | states |", "|---|---|---|---|---|---|---|"]
    for r in p["workers"]:
        states = ", ".join(f"{k} {v}" for k, v in sorted(r["states"].items()))
        out.append(f"| {r['kind']} | {r['workers']} | {r['studies']} | {r['seconds']:.1f} | {r['studies_per_s']:.2f} | "
                   f"{_f(r.get('speed_up'), 2) + '×' if 'speed_up' in r else ''} | {states} |")
    return out + [""]


def _turnaround(cr: dict[str, Any] | None, ct: list[dict[str, Any]]) -> list[str]:
    """Chest CR and head CT volume turnaround side by side: one row per kind of study."""
    rows = ([cr] if cr else []) + ct
    first = rows[0]
    waits = first["orthanc_stable_age_s"] + first["stable_after_s"]
    out = ["## 2. End-to-end turnaround through Orthanc (storescu end → SR in Orthanc)", "",
           "Studies one after another, after one warm-up study per kind: "
           + "; ".join(f"{r['studies']} {r.get('label', 'chest CR studies (RG1_UNCR.dcm, new UIDs)')}" for r in rows)
           + f". Orthanc StableAge {first['orthanc_stable_age_s']} s + our stable_after {first['stable_after_s']} s"
           f" = {waits:.0f} s of configured waits.", "",
           "| study | instances | MB | storescu s | p50 s | p95 s | p50 − waits s | p95 − waits s |",
           "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.get('kind', 'chest CR')} | {r.get('instances', 1)} | {_f(r.get('study_mb'))} | "
                   f"{_f(r.get('storescu_p50_s'), 2)} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | "
                   f"{r['p50_minus_waits_s']:.2f} | {r['p95_minus_waits_s']:.2f} |")
    out.append("")
    stages = list(dict.fromkeys(k for r in rows for k in r.get("stages_p50_s", {})))
    if stages:
        out += ["| stage (median s) | " + " | ".join(stages) + " |", "|---|" + "---|" * len(stages)]
        for r in rows:
            values = r.get("stages_p50_s", {})
            out.append(f"| {r.get('kind', 'chest CR')} | " + " | ".join(_f(values.get(k), 2) for k in stages) + " |")
        out.append("")
    return out


def _inference(i: dict[str, Any]) -> list[str]:
    backend = i.get("backend", "torch")  # results written before the fast path measured torch eager
    engine = "torch eager" if backend == "torch" else f"probabilities on {backend}, Grad-CAM on torch eager"
    out = [f"## 3. Inference ({i['model']}, as the node runs it: {engine}, {i['torch_threads']} torch threads)", "",
           "| batch | Grad-CAM | ms/image | images/s |", "|---|---|---|---|"]
    for r in i["speed"]:
        out.append(f"| {r['batch']} | {'yes' if r['gradcam'] else 'no'} | {r['ms_per_image']:.1f} | {r['images_per_s']:.1f} |")
    p = i["pipeline"]
    out += ["", "| one-image chest study | median s |", "|---|---|",
            f"| Pipeline.process_next (route + read + infer + Grad-CAM + encode SR/SC + fsync + commit) | {p['study_s']:.3f} |",
            f"| model forward alone (batch 1) | {p['forward_s']:.3f} |",
            f"| reading the CR and making its display image | {p['read_and_display_s']:.3f} |",
            f"| **pipeline / forward** | **{p['study_over_forward']:.1f}×** |", ""]
    return out


def _fast_path(f: dict[str, Any]) -> list[str]:
    out = ["## 3b. ONNX fast path (onnxruntime vs torch eager, same model, medians of interleaved iterations)", "",
           "| model | input | batch | torch ms/input | onnx ms/input | eager/onnx |", "|---|---|---|---|---|---|"]
    for m in f["models"]:
        for r in m["speed"]:
            out.append(f"| {m['model']} | {m['input']} | {r['batch']} | {r['torch_ms_per_input']:.1f} | "
                       f"{r['onnx_ms_per_input']:.1f} | {r['eager_over_onnx']:.2f}× |")
    out += ["", "| model | architecture | parameters | export s | ONNX MiB | max prob. diff | threads torch / onnx |",
            "|---|---|---|---|---|---|---|"]
    for m in f["models"]:
        params = "–" if m["parameters"] is None else f"{m['parameters'] / 1e6:.2f} M"
        out.append(f"| {m['model']} | {m['architecture']} | {params} | {m['export_s']:.1f} | {m['onnx_mb']:.1f} | "
                   f"{m['max_difference']:.1g} | {m['torch_threads']} / {m['onnx_threads']} |")
    out += ["", "eager/onnx is the per-iteration ratio torch time / onnxruntime time, medianed: above 1 the fast path is faster.", ""]
    return out


def _scale(rows: list[dict[str, Any]]) -> list[str]:
    out = ["## 4-5. Scale (synthetic one-instance studies in the SQLite store)", "",
           "| studies | insert studies/s (durable) | `studies` ms | `studies --state` ms | rule replay s | DB MB |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['studies']:,} | {r['fill_studies_per_s']:.0f} | {r['studies_query_ms']:.1f} | "
                   f"{r['studies_state_query_ms']:.1f} | {r['rule_replay_s']:.2f} | {r['database_mb']:.1f} |")
    if len(rows) == 2:
        a, b = rows
        growth = b["studies"] / a["studies"]
        out += ["", f"Growth for {growth:.0f}× the studies: `studies` {b['studies_query_ms'] / a['studies_query_ms']:.1f}×, "
                f"rule replay {b['rule_replay_s'] / a['rule_replay_s']:.1f}×, database {b['database_mb'] / a['database_mb']:.1f}×."]
    return out + [""]


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = m["versions"]
    lines = ["# dicom-ai benchmarks", "",
             f"{m['when']}, BENCH_SCALE={results['bench_scale']}, {m['nproc']} CPUs ({m['cpu']}), {m['memory_gib']} GiB, "
             f"{m['os']}, Python {m['python']}; torch {v['torch']}, monai {v['monai']}, pydicom {v['pydicom']}, "
             f"pynetdicom {v['pynetdicom']}, highdicom {v['highdicom']}; {v['dcmtk']}; Orthanc {v['orthanc']}."
             f" Run time {results.get('duration_s', 0):.0f} s."
             + (f" Parts (BENCH_ONLY): {', '.join(results['parts'])}." if results.get("parts") else ""), ""]
    lines += _targets(results)
    if "receive" in results:
        lines += _receive(results["receive"])
    if "processes" in results:
        lines += _processes(results["processes"])
    if "turnaround" in results or results.get("turnaround_ct"):
        lines += _turnaround(results.get("turnaround"), results.get("turnaround_ct", []))
    if results.get("turnaround_load"):
        lines += _turnaround_load(results["turnaround_load"])
    if "result_objects" in results:
        lines += _result_objects(results["result_objects"])
    if "inference" in results:
        lines += _inference(results["inference"])
    if "fast_path" in results:
        lines += _fast_path(results["fast_path"])
    if "executors" in results:
        lines += _executors(results["executors"])
    if "scale" in results:
        lines += _scale(results["scale"])
    if "validation" in results:
        lines += _validation(results["validation"])
    if "validation_turnaround" in results:
        r = results["validation_turnaround"]
        lines += ["## Turnaround while final reports arrive", "",
                  "Two runs one after the other, each with its own Orthanc and node (not interleaved: compare with the "
                  "spread of the turnaround section). Chest CR turnaround (storescu end to SR in Orthanc) without the "
                  "HL7 listener: p50 "
                  f"{r['quiet_p50_s']:.2f} s, p95 {r['quiet_p95_s']:.2f} s; with it while final reports arrive "
                  f"(each processed study reported, an assessment SR sent back; an unmatched report every "
                  f"{REPORT_INTERVAL_TEXT}): p50 {r['reports_p50_s']:.2f} s, p95 {r['reports_p95_s']:.2f} s "
                  f"({r['studies']} studies each; ACKs {r['answers']}).", ""]
    if "console" in results:
        lines += _console(results["console"])
    if "rules_replay" in results:
        r = results["rules_replay"]
        lines += ["## Rules replay (target: under 10 s over 10,000 studies)", "",
                  f"A draft of the shipped chest rule (hands too) replayed over {r['studies']:,} stored single-image "
                  f"studies (six kinds, one per shipped rule and one routed by none): {r['replay_s']:.1f} s, "
                  f"{r['changed']:,} studies change routing. Load average {r['load_average']:.1f} at the start.", ""]
    return "\n".join(lines)


def _console(c: dict[str, Any]) -> list[str]:
    return ["## Console (target: each under 200 ms with 100,000 studies)", "",
            f"With {c['studies']:,} studies: dashboard {c['dashboard_ms']:.0f} ms, studies search {c['studies_search_ms']:.0f} ms, "
            f"`/api/studies` {c['api_studies_ms']:.0f} ms (filtered by priority and model {c['api_studies_filtered_ms']:.0f} ms), "
            f"`/metrics` {c['metrics_ms']:.0f} ms (medians of 7, through the ASGI app).", ""]


def _result_objects(r: dict[str, Any]) -> list[str]:
    """The SR's regions and the Parametric Map against the turnaround (target: < 10 % of the chest CR's)."""
    e = r["encode"]
    lines = ["## Result objects: SR regions and Parametric Maps", "",
             f"Whole SR of a chest CR with its OHIF region {r['sr_with_regions_ms']:.0f} ms (SR {e['sr_only_ms']:.0f} ms, "
             f"region from the heatmap {e['region_ms']:.0f} ms; SR + heatmap SC {e['encode_ms']:.0f} ms): "
             f"{r['sr_share_of_chest_turnaround']:.1%} of the chest CR turnaround p50, "
             f"{r['sr_share_of_chest_turnaround_minus_waits']:.1%} of it minus the configured waits (target < 10 %).", "",
             "| study | turnaround p50, heatmap_objects=sc | =sc,pm | ratio | processing p50 sc / sc,pm |",
             "|---|---|---|---|---|"]
    for kind, row in r.items():
        if isinstance(row, dict) and "pm_over_sc" in row:
            lines.append(f"| {kind} | {row['sc_p50_s']:.2f} s | {row['sc_pm_p50_s']:.2f} s | {row['pm_over_sc']:.2f}x | "
                         f"{row['processing_sc_p50_s'] or 0:.2f} / {row['processing_sc_pm_p50_s'] or 0:.2f} s |")
    return [*lines, "", f"{r['studies']} studies per case after a warm-up; radiographs get no Parametric Map "
            "(no frame of reference), so their ratio is the noise of the run.", ""]


REPORT_INTERVAL_TEXT = "0.5 s"  # bench/validation.py REPORT_INTERVAL


def _validation(v: dict[str, Any]) -> list[str]:
    """`dicom-ai evaluate` and `dicom-ai export seismometer` on a database of synthetic judged predictions."""
    return ["## Validation loop: evaluate and export at scale", "",
            f"A node database with {v['predictions']:,} chest predictions over twelve weeks ({v['judged']:,} judged, "
            f"{v['database_mb']:.0f} MB). Each command timed from start to exit, as a user waits, with the CPU "
            "seconds it used; then the same work in process, split by step. Load average "
            f"{v['load_average']:.1f} at the start: on a busy machine the CPU seconds say more than the wall ones.", "",
            "| command | wall s | CPU s | in process: load s | evaluate s (load included) | write s |",
            "|---|---|---|---|---|---|",
            f"| `dicom-ai evaluate` (table, PNGs, HTML, JSON) | {v['evaluate_s']:.1f} | {v['evaluate_cpu_s']:.1f} | "
            f"{v['load_s']:.2f} | {v['evaluate_in_process_s']:.2f} | {v['report_s']:.2f} |",
            f"| `dicom-ai export seismometer` ({v['exported_rows']:,} rows) | {v['export_s']:.1f} | "
            f"{v['export_cpu_s']:.1f} | – | – | {v['export_in_process_s']:.2f} (load included) |", ""]


def _executors(e: dict[str, Any]) -> list[str]:
    out = [f"## Executors: head CT demo studies/min ({e['studies']} studies, read + prepare + infer + Grad-CAM, "
           f"{e['cpus']} CPUs, load average {e.get('load_average', 0):.1f} at the end; each Ray node 1 CPU, one actor)", "",
           "| executor | Ray nodes | callers | studies/min |", "|---|---|---|---|"]
    for r in e["throughput"]:
        out.append(f"| {r['executor']} | {r['ray_nodes'] or '-'} | {r['callers']} | {r['studies_per_min']:.0f} |")
    out += ["", "| model (one study, local, 1 torch thread) | backend | images | s/study | studies/hour/core |",
            "|---|---|---|---|---|"]
    for r in e["capacity"]:
        out.append(f"| {r['model']} | {r['backend']} | {r['images']} | {r['study_s']:.3f} | "
                   f"{r['studies_per_hour_per_core']:.0f} |")
    return out + [""]
