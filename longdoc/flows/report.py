"""The end-of-pipeline summary: where every output is, and what the long context bought."""

from __future__ import annotations

import json
from pathlib import Path

from longdoc.components.core.config import Params


def _manifest(out: Path) -> dict:
    path = Path(out) / "manifest.json"
    return json.loads(path.read_text()) if path.exists() else {}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _registered(manifest: dict) -> str:
    reg = manifest.get("results", {}).get("registered") or {}
    if not reg:
        return "not registered"
    return f"models:/{reg['name']}/{reg['version']}" + (" (@champion)" if reg["champion"] else "")


def pipeline_report(params: Params, results: dict) -> str:
    """Read every stage's manifest (so skipped stages report too) into one summary."""
    corpus = _manifest(params.ingest.out).get("counts", {})
    shards = _manifest(params.tokenize.out).get("counts", {})
    variants = _manifest(params.kernels.out).get("kernels", {}).get("variants", {})
    pretrain = _manifest(params.pretrain.out).get("results", {})
    probed = _manifest(params.probe.out).get("results", {})
    tasks = {t: _manifest(params.finetune.for_task(t).out) for t in params.finetune.tasks}
    scored = _manifest(params.score.out).get("counts", {})
    uri = params.tracking.resolved_uri()
    ran = ", ".join(f"{k} {'skipped' if v == 'skipped' else 'ran'}" for k, v in results.items())
    rows = [
        ("stages", ran),
        ("sample data", f"{params.sample.out}"),
        (
            "corpus",
            f"{params.ingest.out}  ({corpus.get('written')} documents, "
            f"{corpus.get('duplicates')} duplicates, {corpus.get('near_duplicates', 0)} near-"
            f"duplicates, {corpus.get('quarantined')} quarantined)",
        ),
        (
            "shards",
            f"{params.tokenize.out}  ({shards.get('tokens_total')} tokens; "
            f"tokenizer in {params.tokenize.out / 'tokenizer'})",
        ),
        ("kernels", f"{params.kernels.out}  ({len(variants)} compiled variants)"),
        (
            "pretrained",
            f"{params.pretrain.out}  (eval loss {_fmt(pretrain.get('eval_loss'))}, "
            f"bits/char {_fmt(pretrain.get('eval_bpc'))})",
        ),
        ("probed", f"{params.probe.out / 'report.json'}  ({_probe_line(probed)})"),
        ("fine-tuned", ", ".join(str(params.finetune.for_task(t).out) for t in tasks)),
        ("MLflow runs", f"{uri}  (UI: mlflow ui --backend-store-uri {uri})"),
        ("registered", ", ".join(_registered(m) for m in tasks.values() if m) or "none"),
        (
            "predictions",
            f"{params.score.out / 'predictions.parquet'}  ({scored.get('scored')} scored, "
            f"{scored.get('errors')} errors in errors.jsonl)",
        ),
    ]
    lines = ["", "longdoc pipeline finished"]
    lines += [f"  {name:<13}{value}" for name, value in rows]
    lines += [
        "",
        f"dev metric: long model ({params.finetune.max_len} tokens) vs "
        f"{params.finetune.baseline_max_len}-token baseline",
    ]
    for task, manifest in tasks.items():
        res = manifest.get("results", {})
        metric = res.get("primary_metric")
        long = (res.get("long") or {}).get(metric)
        base = (res.get("baseline") or {}).get(metric)
        row = f"  {task:<14}{metric or 'not run':<10} {_fmt(long)}  vs  {_fmt(base)}"
        base_len = (res.get("baseline") or {}).get("max_len")
        if base_len is not None and base_len != params.finetune.baseline_max_len:
            row += f"  ({base_len}-token baseline)"  # a task entry's own baseline_max_len
        lines.append(row)
    return "\n".join(lines)


def _probe_line(results: dict) -> str:
    """Macro P@1 of the manual prompt and of the ensembles, from the probe's summary."""
    macro = results.get("macro") or {}
    if not macro:
        return "not run"
    n = (macro.get("manual") or {}).get("relations", 0)
    cells = ", ".join(f"{m} {_fmt((macro.get(m) or {}).get('p_at_1'))}" for m in macro)
    return f"macro P@1 over {n} relations: {cells}"


def summary_line(command: str, params: Params, result: dict | str) -> str:
    """What one command did, in a line or two for a person (the details are in the output's
    manifest.json); the pipeline gets its full report."""
    if command == "pipeline":
        return pipeline_report(params, result)
    r = result if isinstance(result, dict) else {}
    c = r.get("counts", {})
    if command == "sample":
        return f"sample: written to {params.sample.out}"
    if command == "ingest":
        return (
            f"ingest: {c.get('written')} documents into {params.ingest.out} "
            f"({c.get('duplicates')} duplicates, {c.get('near_duplicates', 0)} near-duplicates, "
            f"{c.get('quarantined')} quarantined: see quarantine.jsonl)"
        )
    if command == "tokenize":
        return (
            f"tokenize: {c.get('tokens_total')} tokens, vocabulary {r.get('vocab_size')}, "
            f"into {params.tokenize.out}"
        )
    if command == "build-kernels":
        statuses = [v["status"] for v in r.get("variants", {}).values()]
        counted = ", ".join(f"{statuses.count(s)} {s}" for s in sorted(set(statuses)))
        return f"build-kernels: {len(statuses)} kernel variants in {params.kernels.out} ({counted})"
    if command == "pretrain":
        return (
            f"pretrain: eval loss {_fmt(r.get('eval_loss'))}, bits/char {_fmt(r.get('eval_bpc'))}"
            f"; checkpoint in {params.pretrain.out}"
        )
    if command == "probe":
        return f"probe: {_probe_line(r)}; report in {params.probe.out / 'report.json'}"
    if command == "convert":
        return f"convert: {r.get('max_positions')}-position long model in {params.convert.out}"
    if command == "finetune":
        metric = r.get("primary_metric")
        long, base = (r.get("long") or {}).get(metric), (r.get("baseline") or {}).get(metric)
        registered = _registered({"results": r})
        return (
            f"finetune {r.get('task')}: dev {metric} {_fmt(long)} (baseline {_fmt(base)}); "
            f"checkpoint in {params.finetune.out}; {registered}"
        )
    if command == "score":
        return (
            f"score: {c.get('scored')} of {c.get('inputs')} documents scored into "
            f"{params.score.out / 'predictions.parquet'} ({c.get('errors')} errors in errors.jsonl)"
        )
    return f"{command}: done"
