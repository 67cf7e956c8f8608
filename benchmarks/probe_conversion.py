"""Does a long model converted from a short one still know what the short one knew? (issue 19)

Longformer's claim (section 5): copying the short model's position embeddings over the new
positions preserves what it learned, random new positions do not. Here "what it learned" is
measured directly, with `longdoc probe` on the facts the sample corpus states over and over:

1. the sample with its planted facts, denser than `longdoc sample` writes them
   (`--words-per-fact`, default one fact sentence per 20 words instead of 100) -> ingest ->
   tokenize (BPE 2000, 512-token rows);
2. a short RoBERTa with SHORT = 32 positions trained on 32-token pieces (as
   benchmarks/conversion.py, whose `short_pieces` it uses);
3. `longdoc convert` three ways: to SHORT positions (the short model itself, read by our
   classes: identical on queries shorter than the window), and to 512 positions with copied and
   with random new positions (window SHORT);
4. each probed on the same facts and prompts (P@1, P@10, MRR, macro over relations, manual
   prompt and optimized ensemble), the long models with the query read at position 0 and deep
   inside a document (`MaskedLM.position_offset`: the query's position ids start there).

Usage::

    .venv/bin/python benchmarks/probe_conversion.py     # ~7 min on 2 lightly loaded cores
    .venv/bin/python benchmarks/probe_conversion.py --short-steps 500 --no-append
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from conversion import SHORT, short_pieces  # noqa: E402
from machine import cpu_flags, load_average  # noqa: E402

OFFSETS = (0, 200, 450)  # where the query starts in the long models' positions


def prepare(tmp: Path, docs: int, words_per_fact: int) -> Path:
    from longdoc.components.core.config import IngestParams, SampleParams, TokenizeParams
    from longdoc.components.data import tokenize as tok
    from longdoc.components.data.ingest import ingest
    from longdoc.components.synthetic import lama_sample
    from longdoc.components.synthetic.generator import write_sample

    # The question here is whether conversion keeps knowledge, not how a model acquires it: a
    # denser corpus of the same facts lets a model trained for minutes know some of them.
    lama_sample.WORDS_PER_FACT = words_per_fact
    write_sample(SampleParams(out=tmp / "sample", corpus_docs=docs, max_words=3000))
    ingest(IngestParams(sources=[tmp / "sample/corpus"], out=tmp / "corpus"))
    shards = tmp / "shards"
    tok.tokenize(TokenizeParams(corpus=tmp / "corpus", out=shards, vocab_size=2000, seq_len=512))
    return shards


def train_short(shards: Path, steps: int, out: Path) -> Path:
    """The short RoBERTa of benchmarks/conversion.py, trained `steps` steps on SHORT pieces."""
    import torch
    import transformers

    from longdoc.components.data import tokenize as tok
    from longdoc.components.training.common import seed_everything

    seed_everything(0)
    tokenizer = tok.load_tokenizer(shards)
    config = transformers.RobertaConfig(
        vocab_size=len(tokenizer), hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=256, max_position_embeddings=SHORT + 2, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0, pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    model = transformers.RobertaForMaskedLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 200) * max(0.0, 1 - s / steps)
    )
    gen, step = torch.Generator().manual_seed(0), 0
    while step < steps:
        for batch in tok.iter_packed(shards, "train", 2, drop_last=True):
            x, y = short_pieces(batch, tokenizer, gen)
            model(input_ids=x, labels=y).loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step(), sched.step(), opt.zero_grad()
            step += 1
            if step % 250 == 0:
                print(f"short step {step}", flush=True)
            if step >= steps:
                break
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def probe_at(checkpoint: Path, data, params, offset: int) -> dict:
    from longdoc.components.inference.cloze import MaskedLM
    from longdoc.components.inference.probe import run_probe

    lm = MaskedLM.from_checkpoint(checkpoint, device="cpu")
    lm.position_offset = offset
    return run_probe(lm, data, params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short-steps", type=int, default=5000)  # 1000: it knows no fact yet
    ap.add_argument("--words-per-fact", type=int, default=20, help="sample: 100")
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()

    from longdoc.components.core.config import ConvertParams, ProbeParams
    from longdoc.components.inference.probe import load_probe_data
    from longdoc.components.modeling.convert import convert

    start, load_start = time.perf_counter(), load_average()
    tmp = Path(tempfile.mkdtemp(prefix="probe_conversion."))
    shards = prepare(tmp, args.docs, args.words_per_fact)
    short = train_short(shards, args.short_steps, tmp / "short")
    lama = tmp / "sample/lama"
    params = ProbeParams(
        relations=lama / "relations.jsonl", facts=lama / "TREx", prompts=[lama / "prompts"],
        device="cpu",
    )  # fmt: skip
    data = load_probe_data(params)
    variants = [("short (32 positions)", "copy", SHORT, 2 * SHORT, (0,))]
    variants += [
        (f"long, {init} positions", init, 512, SHORT, OFFSETS) for init in ("copy", "random")
    ]
    rows = []
    for name, init, positions, window, offsets in variants:
        out = tmp / f"{init}-{positions}"
        convert(ConvertParams(base=short, out=out, max_positions=positions,
                              attention_window=window, attention_backend="torch",
                              position_init=init))  # fmt: skip
        for offset in offsets:
            body = probe_at(out, data, params, offset)
            manual, optimized = body["macro"]["manual"], body["macro"]["optimized"]
            rows.append((name, offset, manual, optimized))
            print(f"{name} at {offset}: manual P@1 {manual['p_at_1']:.3f}", flush=True)
    lines = [
        "| model | query at token | P@1 manual | P@10 manual | MRR manual | P@1 optimized "
        "ensemble | MRR optimized |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, offset, m, o in rows:
        lines.append(
            f"| {name} | {offset} | {m['p_at_1']:.3f} | {m['p_at_10']:.3f} | {m['mrr']:.3f} | "
            f"{o['p_at_1']:.3f} | {o['mrr']:.3f} |"
        )
    counts = body["counts"]
    text = "\n".join(lines)
    header = (
        f"{counts['test']} test facts ({counts['multi_token']} multi-token objects left out) over "
        f"{body['macro']['manual']['relations']} relations; CPU flags: {cpu_flags()}; load "
        f"average {load_start} at start, {load_average()} at end; "
        f"{time.perf_counter() - start:.0f} s (work dir {tmp})"
    )
    print(f"\n{text}\n\n{header}")
    (tmp / "table.json").write_text(json.dumps(rows, default=str))
    if not args.no_append:
        cmd = "python benchmarks/probe_conversion.py " + " ".join(sys.argv[1:])
        entry = (
            f"\n## What a converted model still knows: probing copied vs random positions "
            f"(issue 19)\n\nCommand: `{cmd.strip()}`\n{datetime.date.today()}, CPU. Sample "
            f"corpus ({args.docs} docs, a fact sentence per {args.words_per_fact} words), BPE "
            f"2000, short RoBERTa (hidden 128, 2 layers, {SHORT} positions) trained "
            f"{args.short_steps} steps x 32 x {SHORT} tokens; "
            f"converted to 512 positions, window {SHORT}. {header}\n\n{text}\n"
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(entry)
        print(f"appended to {HERE / 'RESULTS.md'}")


if __name__ == "__main__":
    main()
