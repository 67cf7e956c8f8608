"""The archive of unlabeled reviews that `longdoc score` reads, with its labels beside it."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from longdoc.components.core.config import SampleParams
from longdoc.components.core.io import atomic_write_bytes, atomic_write_text
from longdoc.components.synthetic.archives import html_page, tar_gz_bytes
from longdoc.components.synthetic.imdb_sample import make_review, review_text
from longdoc.components.synthetic.text import (
    Lexicon,
    TextGen,
    late_flags,
)


def write_score_inbox(out: Path, params: SampleParams, lex: Lexicon) -> dict[str, Any]:
    """Unlabeled reviews made like IMDB's, as an archive `score` reads; a couple are web pages.
    The labels go to a separate file so a user can check the predictions."""
    rng = random.Random(f"{params.seed}:score")
    g = TextGen(lex, rng)
    n = params.score_docs
    labels = ["pos"] * ((n + 1) // 2) + ["neg"] * (n // 2)
    rng.shuffle(labels)
    flags = late_flags(n, rng)
    html_every = max(2, n // 2) if n >= 2 else n + 1  # a couple of .html members
    members, truth = [], {}
    for i, (label, late) in enumerate(zip(labels, flags, strict=True)):
        paras, _ = make_review(g, label, late)
        if i % html_every == html_every - 1:
            name = f"review_{i:04d}.html"
            data = html_page(f"Review {i}", [" ".join(p) for p in paras], i)
        else:
            name = f"review_{i:04d}.txt"
            data = review_text(paras)
        members.append((name, data.encode("utf-8")))
        truth[name] = label
    atomic_write_bytes(out / "score" / "inbox.tar.gz", tar_gz_bytes(members))
    atomic_write_text(
        out / "score" / "inbox_labels.json", json.dumps(truth, indent=2, sort_keys=True) + "\n"
    )
    return {
        "documents": n,
        "html_members": sum(m[0].endswith(".html") for m in members),
        "pos": labels.count("pos"),
        "neg": labels.count("neg"),
    }
