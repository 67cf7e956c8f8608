"""The chain on real text: Debian's `linux-doc-6.1` (Sphinx HTML of the Linux kernel docs).

Not run in CI (it needs the package and several minutes). What a new user with a real archive
meets, measured on the whole `longdoc` commands as they run them:

1. ingest: the HTML tree as one tar.gz (with its CSS, JS and images; the reST copies under
   `_sources/` are left out: the same text twice would leak held-out documents into training),
   throughput (documents/s, MB/s of HTML), quarantine reasons, duplicates;
2. tokenize (default settings): the length distribution (how many documents exceed 512 / 4,096
   / 16,384 tokens) and its histogram PNG;
3. pretraining from scratch at the demo's model size (params.yaml `model`), twice: the long
   model built directly, and a RoBERTa of the same size (512 positions) converted with
   `longdoc convert` (positions copied to 4,096) then pretrained; MLM loss and bits per
   character on the held-out split (documents the tokenizer and model never saw).

Peak memory is that of each whole command (the CLI process and every process it starts,
`benchmarks/rss.py`). The CPU is shared: throughput is indicative, the load average is printed.

    apt-get install -y linux-doc-6.1
    .venv/bin/python benchmarks/real_corpus.py                  # ~20 min on 2 shared cores
    .venv/bin/python benchmarks/real_corpus.py --steps 60 --append-results
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import cpu_flags, load_average  # noqa: E402
from rss import command_peak  # noqa: E402

LONGDOC = str(REPO / ".venv" / "bin" / "longdoc")
HTML = Path("/usr/share/doc/linux-doc-6.1/html")


def make_archive(html: Path, dest: Path) -> dict:
    """The HTML tree as one tar.gz (without `_sources/`); HTML bytes and member counts."""
    stats = {"members": 0, "html_files": 0, "html_bytes": 0}

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        if "/_sources" in info.name:
            return None
        stats["members"] += info.isfile() or info.issym()
        if info.name.endswith(".html") and info.isfile():
            stats["html_files"] += 1
            stats["html_bytes"] += info.size
        return info

    with tarfile.open(dest, "w:gz") as tar:
        tar.add(html, arcname=html.name, filter=keep)
    return stats


def longdoc(*args: str, env: dict) -> dict:
    rc, figures = command_peak([LONGDOC, *args], env=env)
    if rc != 0:
        raise SystemExit(f"longdoc {' '.join(args)} failed with exit code {rc}")
    return figures


def from_scratch_roberta(work: Path, shards: Path) -> Path:
    """A RoBERTa of the demo model's size (512 positions), randomly initialised, saved with the
    shards' tokenizer: what `longdoc convert` takes."""
    from transformers import AutoTokenizer, RobertaConfig, RobertaForMaskedLM

    from longdoc.components.core.config import ModelParams

    m = ModelParams()
    tok = AutoTokenizer.from_pretrained(str(shards / "tokenizer"), local_files_only=True)
    config = RobertaConfig(
        vocab_size=len(tok),
        hidden_size=m.hidden_size,
        num_hidden_layers=m.num_hidden_layers,
        num_attention_heads=m.num_attention_heads,
        intermediate_size=m.intermediate_size,
        max_position_embeddings=514,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    out = work / "roberta-scratch"
    RobertaForMaskedLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def pretrain(work: Path, name: str, steps: int, env: dict, *extra: str) -> tuple[dict, dict]:
    metrics = work / f"metrics-{name}.json"
    figures = longdoc(
        "pretrain",
        "--set", f"pretrain.shards={work / 'shards'}",
        "--set", f"pretrain.out={work / name}",
        "--set", f"pretrain.metrics={metrics}",
        "--set", f"pretrain.steps={steps}",
        "--set", f"pretrain.warmup_steps={max(1, steps // 10)}",
        "--set", "pretrain.eval_batches=16",
        "--set", "pretrain.checkpoint_every=0",
        "--force",
        *extra,
        env=env,
    )  # fmt: skip
    return json.loads(metrics.read_text()), figures


def _mlm(metrics: dict, figures: dict) -> str:
    return (
        f"{metrics['eval_loss']:.3f} / {metrics['eval_bpc']:.3f} "
        f"(peak {figures['tree_peak_mib']:.0f} MiB, {figures['wall_s']:.0f} s)"
    )


def _peak(figures: dict) -> str:
    server = figures.get("server_mib", 0)
    started = f", incl. the Prefect server it started: {server:.0f} MiB" if server else ""
    return f"{figures['tree_peak_mib']:.0f} MiB ({figures['wall_s']:.0f} s{started})"


def _rows(steps: int, src: dict, ing: dict, ing_run: dict, tok: dict, tok_run: dict) -> list:
    c, t, d = ing["counts"], ing["timings"], tok["length_distribution"]
    mb = src["html_bytes"] / 1e6
    reasons = ", ".join(f"{k}: {v}" for k, v in ing["quarantine_reasons"].items())
    return [
        ("ingest: inputs / written / quarantined / duplicates",
         f"{c['inputs']:,} / {c['written']:,} / {c['quarantined']:,} / "
         f"{c['duplicates'] + c['near_duplicates']:,}"),
        ("ingest: quarantine reasons", reasons or "none"),
        ("ingest: throughput", f"{t['docs_per_s']:.1f} docs/s, {mb / t['total_s']:.2f} MB/s "
         f"of HTML ({mb:.0f} MB in, {c['chars'] / 1e6:.1f}M chars out)"),
        ("ingest: peak RSS, whole command", _peak(ing_run)),
        ("tokenize: documents / tokens",
         f"{tok['counts']['documents_total']:,} / {tok['counts']['tokens_total']:,}"),
        ("tokenize: tokenizer trained on", f"{tok['tokenizer']['training_sample']}"),
        ("tokenize: median / p90 / p99 / max tokens",
         f"{d['median']:,.0f} / {d['p90']:,.0f} / {d['p99']:,.0f} / {d['max']:,}"),
        ("tokenize: documents over 512 / 4,096 / 16,384 tokens",
         f"{d['over_512']:,} / {d['over_4096']:,} / {d['over_16384']:,} of {d['documents']:,}"),
        ("tokenize: peak RSS, whole command", _peak(tok_run)),
    ]  # fmt: skip


def histogram_table(dist: dict) -> str:
    edges, counts = dist["bucket_edges"], dist["bucket_counts"]
    rows = ["| tokens | documents |", "|---|---:|"]
    for lo, hi, n in zip(edges, edges[1:], counts, strict=False):
        if n:
            rows.append(
                f"| {lo:,}-{hi - 1:,} | {n:,} {'█' * max(1, round(40 * n / max(counts)))} |"
            )
    return "\n".join(rows)


def run(args: argparse.Namespace) -> str:
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(work / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
    }
    archive = work / "linux-doc-html.tar.gz"
    src = make_archive(args.html, archive)
    print(f"archive: {archive} ({archive.stat().st_size / 1e6:.1f} MB) {src}", flush=True)
    corpus, shards = work / "corpus", work / "shards"
    ing_run = longdoc(
        "ingest", "--set", f"ingest.sources=[{archive}]", "--out", str(corpus), "--force", env=env
    )
    ing = json.loads((corpus / "manifest.json").read_text())
    tok_run = longdoc("tokenize", "--corpus", str(corpus), "--out", str(shards), "--force", env=env)
    tok = json.loads((shards / "manifest.json").read_text())
    dist = tok["length_distribution"]
    shutil.copy(shards / "length_histogram.png", work / "length_histogram.png")
    direct, direct_run = pretrain(work, "long-direct", args.steps, env)
    roberta = from_scratch_roberta(work, shards)
    conv_run = longdoc(
        "convert", "--base", str(roberta), "--out", str(work / "long-converted"),
        "--set", "convert.attention_window=64", "--force", env=env,
    )  # fmt: skip
    converted, converted_run = pretrain(
        work,
        "long-from-roberta",
        args.steps,
        env,
        "--set",
        f"pretrain.base={work / 'long-converted'}",
    )
    rows = _rows(args.steps, src, ing, ing_run, tok, tok_run)
    rows += [
        (f"pretrain, long model from scratch, {args.steps} steps: eval MLM loss / bpc",
         _mlm(direct, direct_run)),
        (f"pretrain, RoBERTa from scratch -> convert -> {args.steps} steps: eval MLM loss / bpc",
         _mlm(converted, converted_run) + f"; convert {conv_run['wall_s']:.0f} s"),
    ]  # fmt: skip
    table = "\n".join(["| what | measured |", "|---|---|"] + [f"| {a} | {b} |" for a, b in rows])
    when = datetime.now(UTC).strftime("%Y-%m-%d")
    return (
        f"Machine: {len(os.sched_getaffinity(0))} cores, CPU flags {cpu_flags()}, {when}; "
        f"load average at the end {load_average()} (shared machine: throughput is indicative).\n\n"
        f"{table}\n\nLength distribution (tokens per document, power-of-two buckets):\n\n"
        f"{histogram_table(dist)}\n"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--html", type=Path, default=HTML, help=f"Sphinx HTML tree (default {HTML})")
    ap.add_argument("--work", type=Path, default=Path("/tmp/longdoc-real-corpus"))
    ap.add_argument("--steps", type=int, default=100, help="pretraining steps per model")
    ap.add_argument("--append-results", action="store_true", help="append to RESULTS.md")
    args = ap.parse_args(argv)
    if not args.html.is_dir():
        raise SystemExit(f"{args.html} not found: apt-get install -y linux-doc-6.1")
    print(f"load average at the start {load_average()}", flush=True)
    report = run(args)
    print(report)
    if args.append_results:
        cmd = "python benchmarks/real_corpus.py " + " ".join(
            argv if argv is not None else sys.argv[1:]
        )
        title = "Real corpus rehearsal (issue 15, `benchmarks/real_corpus.py`)"
        section = f"\n## {title}\n\nCommand: `{cmd.strip()}`\n{report}"
        with open(REPO / "benchmarks" / "RESULTS.md", "a", encoding="utf-8") as f:
            f.write(section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
