"""The Longformer paper's conversion finding tried on the encoder-decoder, at small scale (issue
16): does an LED converted from a short BART with *copied* encoder position embeddings start
(and stay, after a short run) at a lower denoising loss than one whose new positions are random?
(What it shows: benchmarks/RESULTS.md, "LED conversion".)

Usage::

    .venv/bin/python benchmarks/led_conversion.py              # ~5 min on 2 idle CPU cores
    .venv/bin/python benchmarks/led_conversion.py --no-append --short-steps 300 --long-steps 5

Steps: the embedded sample corpus -> ingest -> tokenize (packed LONG = 512-token rows with their
sentence starts); a short BART-architecture model (random init from a config, SHORT = 32
positions) trained with BART's denoising (`training.denoise`: sentences permuted, 30% of the
tokens in Poisson(3) spans, one `<mask>` each) on SHORT-token pieces of those rows; `longdoc
convert` to an LED with 512 encoder positions twice (position_init copy | random; attention
window SHORT, as the paper gives the long model a window of the short model's length);
denoising loss on the 512-token validation rows at step 0 and after a short run from each
(same seed, same data, same optimizer).

What the long models are asked: the whole 512-token row, noised as `pretrain --objective
denoise` noises it, goes into the encoder, and the decoder writes the row's first SHORT tokens.
`convert` keeps BART's decoder as it is (LED keeps BART's 1,024 decoder positions; the paper's
LED targets, summaries, stay within them), so here the targets stay within the decoder's SHORT
trained positions too, and only the encoder, the part conversion changes, differs between the
arms. (Whole-row targets would need a decoder table tiled to 512 rows, which repeats every SHORT
positions: the decoder then cannot tell which SHORT-token block it is writing, which costs both
arms alike and drowned the encoder's difference in an earlier version of this benchmark.) The
reference is the short model on the same targets with only their own SHORT tokens noised as its
input: what copying can at best preserve.
"""

from __future__ import annotations

import argparse
import datetime
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHORT = 32  # the short model's positions (its pieces, the long model's window and targets)
LONG = 512  # the long model's rows
LONG_LR = 3e-4
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import cpu_flags, load_average  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short-steps", type=int, default=6000)
    ap.add_argument("--short-lr", type=float, default=1e-3)
    ap.add_argument(
        "--long-steps", type=int, nargs="+", default=[10, 50], help="evaluate after these steps"
    )
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    load_at_start = load_average()
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_at_start}", flush=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="led_conversion."))
    shards, cpt = prepare_data(tmp, args.docs)
    print(f"data ready ({time.perf_counter() - start:.0f} s), {cpt:.2f} chars/token", flush=True)
    short_dir, reference = train_short(tmp, shards, args.short_steps, args.short_lr)
    checkpoints = sorted(set(args.long_steps))
    runs = {
        init: long_run(tmp, shards, short_dir, init, checkpoints) for init in ("copy", "random")
    }
    text = table(runs, reference, cpt)
    load_at_end = load_average()
    print()
    print(text)
    print(f"load average at the start {load_at_start}, at the end {load_at_end}")
    print(f"total {time.perf_counter() - start:.0f} s")
    shutil.rmtree(tmp, ignore_errors=True)
    if not args.no_append:
        cmd = "python benchmarks/led_conversion.py " + " ".join(sys.argv[1:])
        entry = (
            f"\n### LED conversion: copied vs random new positions, denoising (issue 16)\n\n"
            f"Command: `{cmd.strip()}`\n{datetime.date.today()}, CPU flags: {cpu_flags()}; load "
            f"average {load_at_start} at the start, {load_at_end} at the end.\n\n{text}\n"
        )
        with open(HERE / "RESULTS.md", "a") as f:
            f.write(entry)
        print(f"appended to {HERE / 'RESULTS.md'}")


def prepare_data(tmp: Path, docs: int) -> tuple[Path, float]:
    from longdoc.components.core.config import IngestParams, SampleParams, TokenizeParams
    from longdoc.components.data import tokenize as tok
    from longdoc.components.data.ingest import ingest
    from longdoc.components.synthetic.generator import write_sample

    write_sample(SampleParams(out=tmp / "sample", corpus_docs=docs, max_words=3000))
    ingest(IngestParams(sources=[tmp / "sample/corpus"], out=tmp / "corpus"))
    shards = tmp / "shards"
    tok.tokenize(TokenizeParams(corpus=tmp / "corpus", out=shards, vocab_size=2000, seq_len=LONG))
    manifest = json.loads((shards / "manifest.json").read_text())
    return shards, float(manifest["chars_per_token"])


def noise_params(tokenizer):
    from longdoc.components.training.denoise import NoiseParams

    return NoiseParams(mask_id=tokenizer.mask_token_id)


def short_batch(data, first: int, count: int, tokenizer, seed: int, pieces: int = LONG // SHORT):
    """The first `pieces` SHORT-token pieces of rows first .. first+count-1 (each with the
    sentence starts that fall in it), piece k of row r noised as row r * (LONG // SHORT) + k of
    a stream of pieces (so every piece of the data has its own noise, whichever are taken)."""
    import numpy as np

    per_row = LONG // SHORT
    rows = data.rows(first, count).numpy().reshape(count, per_row, SHORT)[:, :pieces]
    batches = []
    for r, row_starts in enumerate(data.sentence_starts(first, count)):
        s = np.asarray(row_starts, dtype=np.int64)
        starts = [s[(s >= k * SHORT) & (s < (k + 1) * SHORT)] - k * SHORT for k in range(pieces)]
        batches.append(pieces_batch(rows[r], starts, (first + r) * per_row, tokenizer, seed))
    return stack(batches, tokenizer.pad_token_id)


def pieces_batch(pieces, starts, first_piece: int, tokenizer, seed: int):
    from longdoc.components.training.denoise import denoise_batch

    return denoise_batch(
        pieces,
        starts,
        first_piece,
        seed=seed,
        noise=noise_params(tokenizer),
        pad_id=tokenizer.pad_token_id,
        decoder_start_id=tokenizer.eos_token_id,
    )


def stack(batches, pad_id: int):
    """One Seq2SeqBatch from several (inputs right-padded to the longest)."""
    import torch

    from longdoc.components.training.denoise import Seq2SeqBatch

    width = max(b.input_ids.shape[1] for b in batches)

    def pad(t, value):
        return torch.nn.functional.pad(t, (0, width - t.shape[1]), value=value)

    return Seq2SeqBatch(
        torch.cat([pad(b.input_ids, pad_id) for b in batches]),
        torch.cat([pad(b.attention_mask, 0) for b in batches]),
        torch.cat([pad(b.global_attention_mask, 0) for b in batches]),
        torch.cat([b.decoder_input_ids for b in batches]),
        torch.cat([b.labels for b in batches]),
    )


def loss_sum(model, batch, led: bool):
    """Summed cross-entropy over the batch's target tokens, and their count (the LED gets the
    global attention on the first token that `pretrain` gives it; BART has no such input)."""
    import torch

    inputs = batch.model_inputs()
    if not led:
        inputs.pop("global_attention_mask")
    logits = model(**inputs).logits
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.labels.flatten(), reduction="sum"
    )
    return loss, batch.labels.numel()


def short_loss(model, shards: Path, tokenizer, pieces: int, max_rows: int = 16) -> float:
    """Denoising loss of the short model on the first `pieces` SHORT-token pieces of the
    validation rows (the same noise on every call: seed 1, by piece)."""
    import torch

    from longdoc.components.training.pretrain import PackedRows

    data = PackedRows(shards, "validation")
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for first in range(0, min(max_rows, data.n_rows), 2):
            batch = short_batch(data, first, 2, tokenizer, seed=1, pieces=pieces)
            loss, n = loss_sum(model, batch, led=False)
            total, count = total + float(loss), count + n
    model.train()
    return total / count


def train_short(tmp: Path, shards: Path, steps: int, lr: float) -> tuple[Path, dict[str, float]]:
    """The short BART trained on denoising SHORT-token pieces; returns its directory and its
    validation losses: on all pieces, on all pieces with its encoder positions shuffled (how
    much it relies on them) and on the rows' first pieces (the long models' targets)."""
    import torch
    import transformers

    from longdoc.components.data import tokenize as tok
    from longdoc.components.training.common import seed_everything
    from longdoc.components.training.pretrain import PackedRows

    tokenizer = tok.load_tokenizer(shards)
    seed_everything(0)
    config = transformers.BartConfig(
        vocab_size=len(tokenizer),
        d_model=128,
        encoder_layers=2,
        decoder_layers=2,
        encoder_attention_heads=4,
        decoder_attention_heads=4,
        encoder_ffn_dim=256,
        decoder_ffn_dim=256,
        max_position_embeddings=SHORT,
        dropout=0.0,  # tiny model
        attention_dropout=0.0,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.eos_token_id,
        forced_eos_token_id=tokenizer.eos_token_id,
    )
    model = transformers.BartForConditionalGeneration(config)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / 100) * max(0.0, 1 - s / steps)
    )
    data = PackedRows(shards, "train")
    t0 = time.perf_counter()
    for step in range(steps):  # 2 rows = 32 pieces of SHORT tokens a step
        loss, n = loss_sum(model, short_batch(data, 2 * step, 2, tokenizer, seed=0), led=False)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if (step + 1) % 250 == 0:
            rate = (step + 1) / (time.perf_counter() - t0)
            print(f"short step {step + 1}: loss {loss.item() / n:.3f} ({rate:.1f} steps/s)")
    reference = {
        "own": short_loss(model, shards, tokenizer, LONG // SHORT),
        "first": short_loss(model, shards, tokenizer, 1),
    }
    with torch.no_grad():
        pos = model.model.encoder.embed_positions.weight
        saved = pos.detach().clone()
        perm = torch.randperm(pos.shape[0] - 2, generator=torch.Generator().manual_seed(0))
        pos[2:] = saved[2:][perm]  # BART's 2 offset rows stay
        reference["shuffled"] = short_loss(model, shards, tokenizer, LONG // SHORT)
        pos.copy_(saved)
    print(f"short model, validation: {reference}", flush=True)
    short_dir = tmp / "short"
    model.save_pretrained(short_dir)
    tokenizer.save_pretrained(short_dir)
    return short_dir, reference


def first_targets(batch):
    """`batch` (whole noised rows) with the decoder asked for the rows' first SHORT tokens only
    (its trained positions); the encoder still reads the whole noised row."""
    from longdoc.components.training.denoise import Seq2SeqBatch

    return Seq2SeqBatch(
        batch.input_ids,
        batch.attention_mask,
        batch.global_attention_mask,
        batch.decoder_input_ids[:, :SHORT],
        batch.labels[:, :SHORT],
    )


def long_loss(model, objective, shards: Path, batches: int = 8, rows: int = 2) -> float:
    """Denoising loss of the LED on the first SHORT tokens of the validation rows, each row
    noised as `pretrain`'s evaluation noises it (seed 0, by row)."""
    import torch

    from longdoc.components.training.pretrain import PackedRows

    data = PackedRows(shards, "validation")
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for first in range(0, min(data.n_rows, rows * batches), rows):
            batch = objective.batch(data, first, min(rows, data.n_rows - first), seed=0)
            loss, n = loss_sum(model, first_targets(batch), led=True)
            total, count = total + float(loss), count + n
    model.train()
    return total / count


def long_run(tmp: Path, shards: Path, short_dir: Path, init: str, checkpoints: list[int]):
    """{step: validation loss} of the LED converted with `init` new positions, at step 0 and
    at each checkpoint of a run of AdamW steps (2 training rows a step, lr LONG_LR with 10%
    warmup then linear decay, as `pretrain` schedules it) on the same objective."""
    import torch

    from longdoc.components.core.config import ConvertParams
    from longdoc.components.data import tokenize as tok
    from longdoc.components.modeling.convert import convert
    from longdoc.components.modeling.led import LEDForConditionalGeneration
    from longdoc.components.modeling.model import quiet_loading
    from longdoc.components.training.common import adamw, seed_everything, warmup_linear_decay
    from longdoc.components.training.pretrain import Denoising, PackedRows

    long_dir = tmp / f"led-{init}"
    convert(
        ConvertParams(
            base=short_dir,
            out=long_dir,
            max_positions=LONG,
            attention_window=SHORT,
            attention_backend="torch",
            position_init=init,
        )
    )
    seed_everything(0)
    with quiet_loading():
        model = LEDForConditionalGeneration.from_pretrained(long_dir)
    cfg = model.config
    noise = noise_params(tok.load_tokenizer(shards))
    objective = Denoising(noise, cfg.pad_token_id, cfg.decoder_start_token_id)
    losses = {0: long_loss(model, objective, shards)}
    total = checkpoints[-1]
    opt = adamw(model, LONG_LR, 0.01)
    sched = warmup_linear_decay(opt, max(1, total // 10), total)
    data = PackedRows(shards, "train")
    for step in range(1, total + 1):
        batch = objective.batch(data, 2 * (step - 1), 2, seed=0)
        loss, n = loss_sum(model, first_targets(batch), led=True)
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if step in checkpoints:
            losses[step] = long_loss(model, objective, shards)
    print(f"{init}: " + ", ".join(f"step {s} {v:.3f}" for s, v in losses.items()), flush=True)
    return losses


def table(runs: dict[str, dict[int, float]], reference: dict[str, float], cpt: float) -> str:
    from longdoc.components.training.common import bits_per_char

    copy, random = runs["copy"], runs["random"]
    lines = [
        "| LED (512 enc. positions), validation | copied positions | random new positions "
        "| random - copy | random / copy | bpc copy / random |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for step in copy:
        a, b = copy[step], random[step]
        lines.append(
            f"| denoising loss, step {step} | {a:.3f} | {b:.3f} | {b - a:+.3f} | {b / a:.2f}x "
            f"| {bits_per_char(a, cpt):.3f} / {bits_per_char(b, cpt):.3f} |"
        )
    lines.append(
        f"\nTargets: the first {SHORT} tokens of 8 x 2 validation rows of {LONG} tokens; input: "
        f"the whole row, noised. Window {SHORT}, decoder {SHORT} positions (kept by `convert`); "
        f"the run: AdamW lr {LONG_LR:g}, 2 training rows a step.\n"
        f"Short BART ({SHORT} positions), the same targets with only those {SHORT} tokens noised "
        f"as input: {reference['first']:.3f}. On all {SHORT}-token pieces of those rows: "
        f"{reference['own']:.3f} with its encoder position embeddings, {reference['shuffled']:.3f} "
        f"with them shuffled (position reliance {reference['shuffled'] - reference['own']:+.3f} "
        "nats)."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
