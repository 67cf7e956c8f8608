"""The embedded sample: a seeded generator of a long-document corpus and every registered task's
data set (`write_sample`, the entry point).

Why synthetic: the whole pipeline (ingest -> tokenize -> pretrain -> fine-tune -> score) has to run
on a laptop CPU in minutes with no download, and the demo has to *show* why long context matters.
So the generator writes files in the exact on-disk formats of the real data sets (the loaders do
not know the difference) and puts the decisive evidence of most examples beyond the first 1,024
tokens, where a model truncated to 512 tokens cannot see it.

The package is split by what it generates: `text` (the shared lexicon, templates and evidence
placement), `archives` (reproducible tar/zip/HTML bytes), `corpus` (the long-document corpus in
its containers, with planted facts), `lama_sample` (those facts as LAMA files, for `probe`),
`score_inbox` (the archive `score` reads) and one module per built-in task
(`imdb`, `hyperpartisan`, `wikihop`, `triviaqa`, `hotpotqa`). Which task writers run comes from
the task registry (components.tasks): each registration names its writer and the directory under
`out` it writes.

Determinism: every artefact draws from its own `random.Random(f"{seed}:{name}")` stream, archives
get fixed mtimes, owners and member order, so the same seed writes byte-identical files (only the
`written_at` stamp in manifest.json differs).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams, params_dict
from longdoc.components.core.io import claim_output_dir, sha256_tree, versions, write_manifest
from longdoc.components.synthetic.corpus import write_corpus
from longdoc.components.synthetic.lama_sample import LAMA_DIR, write_lama
from longdoc.components.synthetic.score_inbox import write_score_inbox
from longdoc.components.synthetic.text import (
    EARLY_MAX_WORD,
    LATE_FRACTION,
    LATE_MIN_WORD,
    REVIEW_WORDS,
    Lexicon,
    build_lexicon,
)
from longdoc.components.tasks import all_tasks

log = logging.getLogger(__name__)


def owned() -> tuple[str, ...]:
    """Top-level entries under `out` that the generator owns (removed and rewritten on each run):
    the manifest first, the corpus, the top folder of each registered task's data, the inbox."""
    tops = [t.sample_dir.split("/")[0] for t in all_tasks() if t.sample is not None]
    return ("manifest.json", "corpus", LAMA_DIR, *dict.fromkeys(tops), "score")


# --- Entry point --------------------------------------------------------------------------------


def _prepare(out: Path, force: bool = False) -> None:
    """Make `out` ours and empty of a previous sample, so no stale file survives a smaller rerun.

    A directory that has content but no longdoc marker (`io.claim_output_dir`; the old
    `.longdoc-sample` marker counts) is refused unless `force`: the generator never deletes data
    it did not write (someone pointing --out at a real aclImdb must not lose it).
    """
    claim_output_dir(out, "sample", force=force)
    for name in owned():  # manifest first: a half-rewritten sample must not look complete
        p = out / name
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def write_sample(params: SampleParams) -> dict[str, Any]:
    """Write the whole sample under `params.out`; return the summary also saved as manifest.json.

    Fully determined by `params` (same seed, same bytes). Takes a few seconds at the defaults.
    """
    out = Path(params.out)
    t0 = time.time()
    _prepare(out, params.force)
    lex = build_lexicon(params.seed)
    steps: list[tuple[str, Path, Callable[[Path, SampleParams, Lexicon], dict[str, Any]]]] = [
        ("corpus", out, write_corpus),
        ("lama", out, write_lama),
    ]
    paths = {"corpus": "corpus", "lama": LAMA_DIR}
    for task in all_tasks():
        writer = task.sample_writer()
        if writer is not None:
            steps.append((task.name, out / task.sample_dir, writer))
            paths[task.name] = task.sample_dir
    steps.append(("score", out, write_score_inbox))
    paths.update({"score": "score/inbox.tar.gz", "score_labels": "score/inbox_labels.json"})
    counts: dict[str, Any] = {}
    timings: dict[str, float] = {}
    for name, root, fn in steps:
        t = time.time()
        counts[name] = fn(root, params, lex)
        timings[name] = round(time.time() - t, 3)
        log.info("sample: %s written in %.1fs: %s", name, timings[name], counts[name])
    summary: dict[str, Any] = {
        "stage": "sample",
        "out": str(out),
        "params": params_dict(params),
        "counts": counts,
        "corpus_duplicates_planted": counts["corpus"]["duplicates_planted"],
        "paths": {k: str(out / v) for k, v in paths.items()},
        "sha256": {k: sha256_tree(out / v) for k, v in paths.items()},
        "placement": {
            "late_min_word": LATE_MIN_WORD,
            "early_max_word": EARLY_MAX_WORD,
            "late_fraction": LATE_FRACTION,
            "review_words": list(REVIEW_WORDS),
        },
        "cues": {
            "imdb_pos": list(lex.pos_cues),
            "imdb_neg": list(lex.neg_cues),
            "hyperpartisan_true": list(lex.partisan_cues),
            "hyperpartisan_false": list(lex.measured_cues),
        },
        "versions": versions(),
        "timings_s": {**timings, "total": round(time.time() - t0, 3)},
    }
    write_manifest(out, **summary)
    return summary
