"""The Longformer paper's conversion finding tried on the encoder-decoder, at small scale (issue
16): does an LED converted from a short BART with *copied* encoder position embeddings start
(and stay, after a short run) at a lower denoising loss than one whose new positions are random?
(What it shows: benchmarks/RESULTS.md, "LED conversion".)

Usage::

    .venv/bin/python benchmarks/led_conversion.py              # ~5.5 min on 2 idle CPU cores
    .venv/bin/python benchmarks/led_conversion.py --no-append --short-steps 300 --long-steps 5

Steps: the embedded sample corpus -> ingest -> tokenize (packed LONG = 512-token rows with their
sentence starts); a short BART-architecture model (random init from a config, SHORT = 32
positions) trained with BART's denoising (`training.denoise`: sentences permuted, 30% of the
tokens in Poisson(3) spans, one `<mask>` each) on SHORT-token pieces of those rows; `longdoc
convert` to an LED with 512 encoder positions twice (position_init copy | random; attention
window SHORT, as the paper gives the long model a window of the short model's length);
denoising loss and bits per character on the 512-token validation rows at step 0 and after
`--long-steps` steps of `pretrain --objective denoise` from each (same seed, same data).

The decoder: `convert` keeps BART's decoder as it is (SHORT positions), but denoising a
512-token row makes the decoder write 512 tokens, so here both arms get the decoder's table
copied out to 512 rows the same way; only the encoder's new positions differ between them. A
tiled table repeats every SHORT positions, so the decoder cannot tell which SHORT-token block of
the row it is writing: that costs both arms alike, and most of what the short model knew.
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
SHORT = 32  # the short model's positions (its pieces, and the long model's attention window)
LONG = 512  # the long model's rows
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import cpu_flags, load_average  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--short-steps", type=int, default=6000)
    ap.add_argument("--short-lr", type=float, default=1e-3)
    ap.add_argument("--long-steps", type=int, default=10)
    ap.add_argument("--docs", type=int, default=60)
    ap.add_argument("--no-append", action="store_true")
    args = ap.parse_args()
    load_at_start = load_average()
    print(f"CPU flags: {cpu_flags()}; load average (1/5/15 min): {load_at_start}", flush=True)
    start = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="led_conversion."))
    shards, cpt = prepare_data(tmp, args.docs)
    print(f"data ready ({time.perf_counter() - start:.0f} s), {cpt:.2f} chars/token", flush=True)
    short_dir, reliance = train_short(tmp, shards, args.short_steps, args.short_lr)
    rows = [long_run(tmp, shards, short_dir, init, args.long_steps) for init in ("copy", "random")]
    text = table(rows, args.long_steps, cpt, reliance)
    load_at_end = load_average()
    print()
    print(text)
    print(f"load average at the start {load_at_start}, at the end {load_at_end}")
    print(f"total {time.perf_counter() - start:.0f} s (work dir {tmp})")
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


def short_batch(data, first: int, count: int, tokenizer, seed: int):
    """Rows first .. first+count-1 cut into SHORT-token pieces (each with the sentence starts
    that fall in it), noised as pieces first*k, first*k+1, ... of a stream of pieces."""
    import numpy as np

    from longdoc.components.training.denoise import denoise_batch

    per_row = LONG // SHORT
    rows = data.rows(first, count).numpy().reshape(-1, SHORT)
    starts = []
    for row_starts in data.sentence_starts(first, count):
        s = np.asarray(row_starts, dtype=np.int64)
        starts.extend(
            s[(s >= k * SHORT) & (s < (k + 1) * SHORT)] - k * SHORT for k in range(per_row)
        )
    return denoise_batch(
        rows,
        starts,
        first * per_row,
        seed=seed,
        noise=noise_params(tokenizer),
        pad_id=tokenizer.pad_token_id,
        decoder_start_id=tokenizer.eos_token_id,
    )


def bart_loss(model, batch):
    """Summed cross-entropy over the batch's target tokens, and their count."""
    import torch

    logits = model(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        decoder_input_ids=batch.decoder_input_ids,
    ).logits
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), batch.labels.flatten(), reduction="sum"
    )
    return loss, batch.labels.numel()


def short_loss(model, shards: Path, tokenizer, max_rows: int = 16) -> float:
    """Denoising loss of the short model on SHORT-token pieces of the validation rows (the same
    noise on every call: seed 1, by row)."""
    import torch

    from longdoc.components.training.pretrain import PackedRows

    data = PackedRows(shards, "validation")
    model.eval()
    total = count = 0.0
    with torch.no_grad():
        for first in range(0, min(max_rows, data.n_rows), 2):
            loss, n = bart_loss(model, short_batch(data, first, 2, tokenizer, seed=1))
            total, count = total + float(loss), count + n
    model.train()
    return total / count


def train_short(tmp: Path, shards: Path, steps: int, lr: float) -> tuple[Path, tuple[float, float]]:
    """The short BART trained on denoising SHORT-token pieces; returns its directory and its
    validation loss with its own vs shuffled encoder positions (what copying can preserve)."""
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
    for step in range(steps):  # 2 rows = 16 pieces of SHORT tokens a step
        loss, n = bart_loss(model, short_batch(data, 2 * step, 2, tokenizer, seed=0))
        (loss / n).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad()
        if (step + 1) % 50 == 0:
            rate = (step + 1) / (time.perf_counter() - t0)
            print(
                f"short step {step + 1}: loss {loss.item() / n:.3f} ({rate:.1f} steps/s)",
                flush=True,
            )
    own = short_loss(model, shards, tokenizer)
    with torch.no_grad():
        pos = model.model.encoder.embed_positions.weight
        saved = pos.detach().clone()
        perm = torch.randperm(pos.shape[0] - 2, generator=torch.Generator().manual_seed(0))
        pos[2:] = saved[2:][perm]  # BART's 2 offset rows stay
        shuffled = short_loss(model, shards, tokenizer)
        pos.copy_(saved)
    print(f"short model, validation: {own:.3f} own encoder positions, {shuffled:.3f} shuffled")
    short_dir = tmp / "short"
    model.save_pretrained(short_dir)
    tokenizer.save_pretrained(short_dir)
    return short_dir, (own, shuffled)


def extend_decoder(led_dir: Path, rows: int) -> None:
    """The LED at `led_dir` with its decoder's position table copied out to `rows` rows."""
    from longdoc.components.modeling.convert import tile_positions
    from longdoc.components.modeling.led import LEDForConditionalGeneration
    from longdoc.components.modeling.model import quiet_loading

    with quiet_loading():
        led = LEDForConditionalGeneration.from_pretrained(led_dir)
    state = led.state_dict()
    key = "led.decoder.embed_positions.weight"
    state[key] = tile_positions(state[key], rows, 0, "copy")
    led.config.max_decoder_position_embeddings = rows
    longer = LEDForConditionalGeneration(led.config)
    longer.load_state_dict(state)
    longer.tie_weights()
    longer.save_pretrained(led_dir)


def long_run(tmp: Path, shards: Path, short_dir: Path, init: str, steps: int):
    """(init, denoising loss at step 0, after `steps` steps of `pretrain`)."""
    from longdoc.components.core.config import (
        ConvertParams,
        ModelParams,
        PretrainParams,
        TrackingParams,
    )
    from longdoc.components.data import tokenize as tok
    from longdoc.components.modeling.convert import convert
    from longdoc.components.modeling.led import LEDForConditionalGeneration
    from longdoc.components.modeling.model import quiet_loading
    from longdoc.components.training.pretrain import Denoising, pretrain

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
    extend_decoder(long_dir, LONG)
    params = PretrainParams(
        shards=shards,
        base=long_dir,
        objective="denoise",
        out=tmp / f"pre-{init}",
        metrics=tmp / f"pre-{init}.json",
        steps=steps,
        batch_size=2,
        lr=3e-4,
        warmup_steps=max(1, steps // 10),
        eval_batches=8,
        checkpoint_every=0,
    )
    with quiet_loading():
        model = LEDForConditionalGeneration.from_pretrained(long_dir)
    objective = Denoising.for_model(params, tok.load_tokenizer(shards), model.config, LONG)
    loss0 = objective.evaluate(model, shards, params.batch_size, params.eval_batches)
    tracking = TrackingParams(uri=f"sqlite:///{tmp / 'mlflow.db'}", experiment="led-conversion")
    summary = pretrain(params, ModelParams(), tracking)
    print(f"{init}: step 0 {loss0:.3f}, step {steps} {summary['eval_loss']:.3f}", flush=True)
    return init, loss0, summary["eval_loss"]


def table(rows, steps: int, cpt: float, reliance: tuple[float, float]) -> str:
    from longdoc.components.training.common import bits_per_char

    lines = [
        f"| new encoder positions | denoising loss, step 0 | bpc, step 0 | loss, step {steps} "
        f"| bpc, step {steps} |",
        "|---|---|---|---|---|",
    ]
    for init, a, b in rows:
        lines.append(
            f"| {init} | {a:.3f} | {bits_per_char(a, cpt):.3f} | {b:.3f} | "
            f"{bits_per_char(b, cpt):.3f} |"
        )
    own, shuffled = reliance
    lines.append(
        f"\nShort BART ({SHORT} positions), validation denoising loss on {SHORT}-token pieces: "
        f"{own:.3f} with its encoder position embeddings, {shuffled:.3f} with them shuffled "
        f"(position reliance {shuffled - own:+.3f} nats). Long rows: {LONG} tokens, window "
        f"{SHORT}, evaluated on 8 x 2 validation rows; `pretrain` {steps} steps x 2 x {LONG} "
        "tokens, lr 3e-4."
    )
    return "\n".join(lines)


if __name__ == "__main__":
    main()
