"""Summarization: the arXiv/PubMed loader (malformed lines reported by line), ROUGE as papers
report it, the one-summary-a-line predictions file, the sample's late findings, the LED
warm-started from a long encoder, and a short fine-tune through the shared training loop."""

import json
from collections import Counter

import mlflow
import pytest
import torch

from longdoc.components.core import tracking
from longdoc.components.core.config import FinetuneParams, SampleParams, TrackingParams
from longdoc.components.inference.evaluate import evaluate_file
from longdoc.components.modeling.led import LEDForConditionalGeneration
from longdoc.components.modeling.model import LongformerModel
from longdoc.components.modeling.warm_start import led_from_encoder
from longdoc.components.synthetic.summarization_sample import write_summarization
from longdoc.components.synthetic.text import LATE_MIN_WORD, build_lexicon
from longdoc.components.tasks import SummaryExample, get_task, summarization
from longdoc.components.training.adapters import adapter_for
from longdoc.components.training.finetune import train_task
from tests.components.tiny import tiny_checkpoint


def _record(i, article=("The cat sat.", "It was late."), abstract=("<S> a cat sat . </S>",)):
    return {
        "article_id": f"a{i}",
        "article_text": list(article),
        "abstract_text": list(abstract),
        "section_names": ["introduction"],
        "sections": [list(article)],
    }


def test_loader_skips_malformed_lines_by_line_number(tmp_path):
    lines = [
        json.dumps(_record(0)).encode(),
        b"{not json",
        json.dumps({"article_id": "a2", "abstract_text": ["<S> x </S>"]}).encode(),
        json.dumps(_record(3, abstract=("<S> </S>",))).encode(),
        b"",  # blank: not a record
        json.dumps(_record(0)).encode(),  # duplicate id
        json.dumps(_record(6, article=("caf\xe9",)), ensure_ascii=False).encode("latin-1"),
        json.dumps({**_record(7), "sections": "intro"}).encode(),
        json.dumps(_record(8, abstract=("<S> two </S>", "<S> sentences . </S>"))).encode(),
    ]
    (tmp_path / "val.txt").write_bytes(b"\n".join(lines) + b"\n")
    res = summarization.load(tmp_path, "dev")
    assert [e.id for e in res.examples] == ["a0", "a8"]
    assert res.examples[0] == SummaryExample("a0", "The cat sat. It was late.", ("a cat sat .",))
    assert res.examples[1].summary == "two sentences ."
    reasons = {s.index: s.reason for s in res.skipped}
    assert all(s.file == str(tmp_path / "val.txt") for s in res.skipped)
    assert set(reasons) == {2, 3, 4, 6, 7, 8}
    assert "invalid JSON" in reasons[2] and "article_text" in reasons[3]
    assert "abstract_text has no text" in reasons[4] and "seen before" in reasons[6]
    assert "UTF-8" in reasons[7] and "sections" in reasons[8]


def test_rouge_f1_with_stemming_and_missing_summaries():
    gold = [
        SummaryExample("a", "x", ("the dogs were running fast",)),
        SummaryExample("b", "x", ("a b",)),
    ]
    perfect = summarization.evaluate(gold, {"a": "the dog was run fast", "b": "a b"})
    # stemming: dogs/dog and running/run match; "were"/"was" do not (3 of 5 unigrams... + 2)
    assert perfect["rouge1"] == pytest.approx(100 * (0.8 + 1.0) / 2)
    only_first = summarization.evaluate(gold, {"a": "the dogs were running fast"})
    assert only_first["missing"] == 1 and only_first["rouge1"] == pytest.approx(50.0)
    assert only_first["rouge_mean"] == pytest.approx(
        (only_first["rouge1"] + only_first["rouge2"] + only_first["rougeL"]) / 3
    )
    assert summarization.evaluate(gold, {"a": "zz", "b": "yy"})["rouge_mean"] == 0.0


def test_predictions_file_is_one_summary_a_line_scored_by_position(tmp_path):
    (tmp_path / "val.txt").write_text(
        "\n".join(json.dumps(_record(i, abstract=(f"<S> word{i} here . </S>",))) for i in range(3))
    )
    preds = tmp_path / "p.txt"
    summarization.write_predictions(preds, {"a0": "word0 here .", "a1": "two\nlines", "a2": ""})
    assert preds.read_text() == "word0 here .\ntwo lines\n\n"
    loaded = summarization.load_predictions(preds)
    assert list(loaded.values()) == ["word0 here .", "two lines", ""]
    metrics = evaluate_file("summarization", tmp_path, preds)
    assert metrics["n"] == 3 and metrics["missing"] == 0
    assert metrics["rouge1"] == pytest.approx(100 / 3)  # only the first summary matches


def test_sample_places_most_findings_beyond_the_truncation(tmp_path):
    counts = write_summarization(
        tmp_path, SampleParams(task_train=10, task_dev=10), build_lexicon(0)
    )
    assert counts["train"] == 10 and counts["val"] == 10
    for split in ("train", "dev"):
        res = summarization.load(tmp_path, split)
        assert len(res.examples) == 10 and not res.skipped
    lex = build_lexicon(0)
    late = 0
    for ex in summarization.load(tmp_path, "dev").examples:
        subject = ex.abstract[0].removeprefix("this paper is about ").removesuffix(" .")
        q1, q2 = ex.abstract[1].split()[3], ex.abstract[1].split()[5]
        words = ex.article.split()
        assert ex.article.startswith(f"In this paper we study {subject}.")
        first = next(i for i, w in enumerate(words) if w.strip(".,") == q1)
        late += first >= LATE_MIN_WORD  # at least one token per word: beyond token 1,024
        # q1, q2: the findings' two most frequent cue words (one class), q1 not rarer
        used = Counter(w.strip(".,") for w in words if w.strip(".,") in lex.cue_words())
        others = [c for w, c in used.items() if w not in (q1, q2)]
        assert q1 != q2 and used[q1] >= used[q2] >= max(others, default=0)
        assert any(
            {q1, q2} <= set(c)
            for c in (lex.pos_cues, lex.neg_cues, lex.partisan_cues, lex.measured_cues)
        )
    assert late == 9  # LATE_FRACTION of them


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    path = tmp_path_factory.mktemp("base")
    texts = ["The cat sat on the mat near the old mill.", "we find it brilliant and dreadful ."]
    tokenizer = tiny_checkpoint(path, texts, vocab_size=300, hidden_size=32, attention_window=8)
    return path, tokenizer


def test_warm_start_encoder_is_the_pretrained_long_encoder(base):
    path, _ = base
    led = led_from_encoder(path).eval()
    encoder = LongformerModel.from_pretrained(path, add_pooling_layer=False).eval()
    for module in led.modules():  # LED's LayerNorm epsilon is 1e-5, Longformer's 1e-12
        if isinstance(module, torch.nn.LayerNorm):
            module.eps = encoder.config.layer_norm_eps
    ids = torch.randint(3, 300, (2, 40))
    mask = torch.ones_like(ids)
    mask[1, 30:] = 0
    glob = torch.zeros_like(ids)
    glob[:, 0] = 1
    with torch.no_grad():
        want = encoder(ids, attention_mask=mask, global_attention_mask=glob).last_hidden_state
        got = led.led.encoder(ids, attention_mask=mask, global_attention_mask=glob)
    diff = (want - got.last_hidden_state)[mask.bool()].abs().max()
    assert diff < 1e-5, diff
    assert led.config.max_encoder_position_embeddings == 128  # 130 rows less RoBERTa's offset
    assert led.lm_head.weight.data_ptr() == led.led.shared.weight.data_ptr()


def test_warm_start_decoder_is_the_encoder_cross_attention_included(base):
    """BERT2BERT (Rothe et al. 2020): decoder layer i starts as encoder layer i, its own copy;
    the cross-attention starts as the layer's self-attention, a copy of its own. "random"
    (BERT2RND) shares nothing but the embeddings."""
    path, _ = base
    led = led_from_encoder(path)
    enc, dec = led.led.encoder, led.led.decoder
    pairs = [(enc.layernorm_embedding, dec.layernorm_embedding)]
    for e, d in zip(enc.layers, dec.layers, strict=True):
        attn = e.self_attn.longformer_self_attn
        pairs += [(attn.query, d.self_attn.q_proj), (attn.key, d.self_attn.k_proj)]
        pairs += [(attn.value, d.self_attn.v_proj), (e.self_attn.output, d.self_attn.out_proj)]
        pairs += [(e.fc1, d.fc1), (e.fc2, d.fc2), (e.final_layer_norm, d.final_layer_norm)]
        pairs += [(e.self_attn_layer_norm, d.self_attn_layer_norm)]
        pairs += [(attn.query, d.encoder_attn.q_proj), (attn.key, d.encoder_attn.k_proj)]
        pairs += [(attn.value, d.encoder_attn.v_proj)]
        pairs += [(e.self_attn.output, d.encoder_attn.out_proj)]
        pairs += [(e.self_attn_layer_norm, d.encoder_attn_layer_norm)]
        cross, own = d.encoder_attn.q_proj.weight, d.self_attn.q_proj.weight
        assert cross.data_ptr() != own.data_ptr()  # the two attentions train apart
    for e, d in pairs:
        for name, weight in e.named_parameters():
            copied = dict(d.named_parameters())[name]
            assert torch.equal(copied, weight) and copied.data_ptr() != weight.data_ptr()
    # decoder positions: the encoder's first ones when it has enough (here 128 < 512: new)
    assert not torch.equal(dec.embed_positions.weight[:128], enc.embed_positions.weight)
    short = led_from_encoder(path, target_positions=64).led
    assert torch.equal(short.decoder.embed_positions.weight, enc.embed_positions.weight[:64])
    fresh = led_from_encoder(path, decoder_init="random")
    assert not torch.equal(fresh.led.decoder.layers[0].fc1.weight, enc.layers[0].fc1.weight)
    assert torch.equal(fresh.led.encoder.layers[0].fc1.weight, enc.layers[0].fc1.weight)
    with pytest.raises(ValueError, match="decoder_init"):
        led_from_encoder(path, decoder_init="bert")


def test_task_entry_learning_rate_overrides_the_shared_one(tmp_path):
    params = FinetuneParams(task="summarization", lr=1e-3)  # built-in task entries
    assert params.task_lr == 3e-3 and params.for_task("imdb").task_lr == 1e-3
    entry = {"data": tmp_path, "out": tmp_path / "o", "metrics": tmp_path / "m.json"}
    unset = FinetuneParams(task="summarization", tasks={"summarization": entry}, lr=2e-4)
    assert unset.task_lr == 2e-4


@pytest.mark.parametrize("freeze_encoder", [False, True])
def test_one_forward_pass_over_several_summaries_gives_each_its_own_loss(base, freeze_encoder):
    """Articles and targets of different lengths in one teacher-forced pass (targets padded
    with -100): each summary's loss and gradient are what it gets alone."""
    path, tokenizer = base
    adapter = adapter_for(get_task("summarization"), tokenizer)
    adapter.freeze_encoder = freeze_encoder
    model = adapter.build_model(path).eval()
    fill = "The cat sat on the mat near the old mill. "
    examples = [
        SummaryExample("a", fill * 4 + "we find it brilliant .", ("it is brilliant .",)),
        SummaryExample("b", "dreadful .", ("the cat sat on the mat , and it is dreadful .",)),
    ]
    encs = [adapter.encode(ex, 120, 0, 1, train=True) for ex in examples]
    assert len(encs[0].windows[0].ids) != len(encs[1].windows[0].ids)
    assert len(encs[0].target) != len(encs[1].target)
    together = adapter.losses(model, encs)
    together.sum().backward()
    joint = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    model.zero_grad()
    alone = torch.cat([adapter.losses(model, [e]) for e in encs])
    alone.sum().backward()
    apart = [p.grad for p in model.parameters() if p.grad is not None]
    assert torch.allclose(together, alone, atol=1e-5), (together, alone)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(joint, apart, strict=True))


def test_short_summarization_finetune_learns_and_writes_a_line_per_article(base, tmp_path):
    path, tokenizer = base
    tracking.setup(TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"))
    fill = "The cat sat on the mat near the old mill. " * 4
    cues = ("brilliant", "dreadful")
    examples = [
        SummaryExample(f"s{i}", fill + f"we find it {cues[i % 2]} .", (f"it is {cues[i % 2]} .",))
        for i in range(4)
    ]
    params = FinetuneParams(
        task="summarization", tasks={}, data=tmp_path, base=path, epochs=20, batch_size=2, lr=1e-2,
        warmup_ratio=0.0,
    )  # fmt: skip
    adapter = adapter_for(get_task("summarization"), tokenizer)
    adapter.configure(params)
    with mlflow.start_run():
        result = train_task(
            params, adapter, examples, examples, 120, False, None, "long", tmp_path / "p.txt"
        )
    losses = result["epoch_losses"]
    assert losses[-1] < losses[0] / 2, losses
    written = summarization.load_predictions(tmp_path / "p.txt")
    assert len(written) == len(examples)
    assert summarization.evaluate(examples, written)["rouge_mean"] == pytest.approx(
        result["rouge_mean"]
    )


def test_frozen_encoder_trains_the_decoder_and_embeddings_only(base, tmp_path):
    """`freeze_encoder` (task entry): the encoder's layers come out as the warm start made them,
    the decoder and the shared embeddings learn; the entry's batch_size is the one used."""
    path, tokenizer = base
    tracking.setup(TrackingParams(uri=f"sqlite:///{tmp_path / 'mlflow.db'}", experiment="t"))
    examples = [
        SummaryExample(f"s{i}", "The cat sat on the mat. " * 6 + w, (f"it is {w} .",))
        for i, w in enumerate(("brilliant", "dreadful", "brilliant", "dreadful"))
    ]
    entry = {"data": tmp_path, "out": tmp_path / "o", "metrics": tmp_path / "m.json"}
    params = FinetuneParams(
        task="summarization", base=path, epochs=2, lr=1e-2, warmup_ratio=0.0, batch_size=4,
        tasks={"summarization": {**entry, "freeze_encoder": True, "batch_size": 1}},
    )  # fmt: skip
    assert params.task_batch_size == 1
    assert FinetuneParams(task="imdb", batch_size=4).task_batch_size == 4  # entry sets none
    adapter = adapter_for(get_task("summarization"), tokenizer)
    adapter.configure(params)
    out = tmp_path / "ckpt"
    with mlflow.start_run():
        result = train_task(params, adapter, examples, examples, 64, False, out, "long")
    assert mlflow.get_run(result["run_id"]).data.params["batch_size"] == "1"
    start = led_from_encoder(path)
    trained = LEDForConditionalGeneration.from_pretrained(out)
    before, after = start.state_dict(), trained.state_dict()
    for name, tensor in after.items():
        if name.startswith("led.encoder.") and "embed_tokens" not in name:
            assert torch.equal(tensor, before[name]), name
    assert not torch.equal(after["led.shared.weight"], before["led.shared.weight"])
    assert not torch.equal(
        after["led.decoder.layers.0.encoder_attn.q_proj.weight"],
        before["led.decoder.layers.0.encoder_attn.q_proj.weight"],
    )
