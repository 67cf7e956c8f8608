"""What a masked LM knows: LAMA-style cloze probing with prompt ensembles (`longdoc probe`).

For every fact (subject, relation, object) and every prompt of its relation (LAMA's manual
template first, then the extra prompts, e.g. LPAQA's mined and paraphrased ones), the query is the
prompt with [X] filled by the subject and [Y] by `<mask>`, read with global attention on the mask;
the answer is the rank of the gold object among the vocabulary at the mask (Petroni et al. 2019):

- **Objects are single tokens, as in LAMA.** An object is the token of " <object>" (a word in
  running text); a fact whose object is several tokens in this model's vocabulary is left out and
  counted (`multi_token`), as LAMA leaves out objects outside its vocabulary. With
  `common_vocab` (LAMA's common vocabulary file), only its words compete and facts whose object
  is not one of them are left out too (`not_in_vocab`).
- **Filtered ranks, as LAMA's T-REx evaluation:** the other known objects of the same subject
  and relation (N-M relations) do not count against the gold one. Rank = 1 + the number of
  competitors with a strictly higher log-probability.
- **Queries in running text:** the query starts with a space (byte-level tokenizers see every
  sentence but a document's first that way) and, with `detokenize`, LAMA's tokenized spacing
  ("[X] was born in [Y] .") is read as text ("... in [Y].").

Ensembles, as Jiang et al. 2020 ("How Can We Know What Language Models Know?"), are fitted on a
training split (`train_facts`, or `train_fraction` of each relation's facts by a seeded hash) and
measured on the rest:

- `top1`: the prompt with the best training P@1 (ties: MRR, then the earlier prompt);
- `topk`: rank-based ensemble, the mean log-probability of the `top_k` best training prompts;
- `optimized`: s(y) = sum_i softmax(theta)_i log P_i(y), theta fitted by maximising the
  log-likelihood of the gold objects under softmax_y(s) on the training facts.

Next to them, `majority` is the reference that reads no model: every test fact answered with the
relation's most frequent training object (Petroni et al.'s majority baseline). A model at or below
it knows the relation's answer type at best; above it, it knows facts.

Metrics: P@1, P@10 and MRR per relation on the test facts, for the manual prompt, every prompt,
every ensemble and the majority reference; macro-averaged over the relations that have test
facts. Memory: one relation's (facts x prompts x vocabulary) float32 log-probabilities at a time.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from longdoc.components.core.config import ProbeParams, TrackingParams, params_dict
from longdoc.components.core.io import (
    InputError,
    atomic_write_json,
    claim_output_dir,
    versions,
    write_manifest,
)
from longdoc.components.inference.cloze import ClozeRow, MaskedLM, resolve_checkpoint
from longdoc.components.inference.lama import (
    Fact,
    Prompt,
    Relation,
    Skipped,
    load_common_vocab,
    load_fact_dir,
    load_prompts,
    load_relations,
)

log = logging.getLogger(__name__)

METHODS = ("manual", "top1", "topk", "optimized", "majority")
METRICS = ("p_at_1", "p_at_10", "mrr")
_OPT_ITERATIONS = 100  # L-BFGS on the prompt logits theta (full batch, deterministic)
_MAX_REPORTED_SKIPS = 100


def detokenize(template: str) -> str:
    """LAMA's tokenized spacing as text: no space before . , ; : ! ? ) 's n't, none after (."""
    text = re.sub(r" ([.,;:!?)])", r"\1", template)
    text = re.sub(r" ('s|n't)\b", r"\1", text)
    return text.replace("( ", "(")


class ClozeBuilder:
    """Turns (prompt, subject) into a query row and objects into vocabulary ids."""

    def __init__(self, lm: MaskedLM, detok: bool = True) -> None:
        self.lm = lm
        self.detok = detok
        tok = lm.tokenizer
        self.cls, self.sep, self.mask = tok.cls_token_id, tok.sep_token_id, tok.mask_token_id

    def object_id(self, obj: str) -> int | None:
        """The one token of " <obj>", or None when the object is several tokens."""
        ids = self.lm.ids(" " + obj.strip())
        return ids[0] if len(ids) == 1 else None

    def row(self, template: str, subject: str) -> ClozeRow:
        """`<s> prompt-with-subject </s>` with `<mask>` for [Y]; the space before [Y] belongs to
        the object's token, so the mask takes its place."""
        text = " " + (detokenize(template) if self.detok else template).replace("[X]", subject)
        before, after = text.split("[Y]", 1)
        ids = [self.cls, *self.lm.ids(before.rstrip()), self.mask]
        mask = len(ids) - 1
        return ClozeRow([*ids, *self.lm.ids(after), self.sep], mask)


# --- The data of one relation --------------------------------------------------------------------


@dataclass
class RelationSet:
    """One relation ready to probe: its prompts (manual first), its facts with single-token
    objects split into train and test, gold ids and the objects not to count against each."""

    relation: Relation
    prompts: list[Prompt]
    train: list[Fact] = field(default_factory=list)
    test: list[Fact] = field(default_factory=list)
    gold: dict[Fact, int] = field(default_factory=dict)
    exclude: dict[Fact, list[int]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)


def relation_prompts(relation: Relation, extra: list[Prompt]) -> list[Prompt]:
    """The manual template, then the relation's extra prompts; a prompt that reads the same as
    an earlier one (after detokenizing) is left out."""
    out = [Prompt(relation.id, relation.template, "manual")]
    seen = {detokenize(relation.template)}
    for p in extra:
        if p.relation == relation.id and detokenize(p.template) not in seen:
            seen.add(detokenize(p.template))
            out.append(p)
    return out


def _split(facts: list[Fact], fraction: float, seed: int) -> tuple[list[Fact], list[Fact]]:
    """(train, test): the facts ordered by a seeded hash, the first round(n * fraction) train."""

    def key(f: Fact) -> str:
        return hashlib.sha256(f"{seed}:{f.relation}:{f.subject}:{f.object}".encode()).hexdigest()

    ordered = sorted(facts, key=key)
    n_train = round(len(ordered) * fraction)
    return ordered[:n_train], ordered[n_train:]


def _usable(
    facts: list[Fact], builder: ClozeBuilder, vocab: set[str] | None, counts: dict[str, int]
) -> tuple[list[Fact], dict[Fact, int]]:
    """The facts whose object is one token (and a common-vocabulary word), with their ids."""
    kept, gold = [], {}
    for f in facts:
        if vocab is not None and f.object.strip() not in vocab:
            counts["not_in_vocab"] += 1
            continue
        oid = builder.object_id(f.object)
        if oid is None:
            counts["multi_token"] += 1
            continue
        kept.append(f)
        gold[f] = oid
    return kept, gold


def relation_set(
    relation: Relation,
    prompts: list[Prompt],
    facts: list[Fact],
    train_facts: list[Fact] | None,
    builder: ClozeBuilder,
    params: ProbeParams,
    vocab: set[str] | None,
) -> RelationSet:
    counts = {"facts": len(facts), "multi_token": 0, "not_in_vocab": 0}
    kept, gold = _usable(list(dict.fromkeys(facts)), builder, vocab, counts)
    if train_facts is None:
        train, test = _split(kept, params.train_fraction, params.seed)
    else:
        scratch = {"multi_token": 0, "not_in_vocab": 0}
        train, train_gold = _usable(list(dict.fromkeys(train_facts)), builder, vocab, scratch)
        test, gold = kept, {**train_gold, **gold}
    objects: dict[str, set[int]] = {}
    for f, oid in gold.items():
        objects.setdefault(f.subject, set()).add(oid)
    exclude = {f: sorted(objects[f.subject] - {gold[f]}) for f in gold}
    counts.update(train=len(train), test=len(test), prompts=len(prompts))
    return RelationSet(relation, prompts, train, test, gold, exclude, counts)


# --- Ranks, metrics, ensembles -------------------------------------------------------------------


def gold_ranks(
    scores: torch.Tensor,
    gold: torch.Tensor,
    candidates: torch.Tensor | None = None,
    exclude: list[list[int]] | None = None,
) -> torch.Tensor:
    """Rank of each row's gold id: 1 + competitors scoring strictly higher. Competitors are the
    `candidates` (a vocabulary mask; None = all) less the row's `exclude` ids."""
    better = scores > scores.gather(1, gold[:, None])
    if candidates is not None:
        better &= candidates[None, :]
    for row, ids in enumerate(exclude or []):
        if ids:
            better[row, ids] = False
    return 1 + better.sum(1)


def rank_metrics(ranks: torch.Tensor) -> dict[str, Any]:
    """P@1, P@10 and MRR of a set of ranks (None each when there are none), and their count."""
    n = int(ranks.numel())
    if n == 0:
        return {"n": 0, **dict.fromkeys(METRICS)}
    r = ranks.double()
    return {
        "n": n,
        "p_at_1": float((r <= 1).double().mean()),
        "p_at_10": float((r <= 10).double().mean()),
        "mrr": float((1.0 / r).mean()),
    }


def macro_average(per_relation: list[dict[str, Any]]) -> dict[str, Any]:
    """Each metric averaged over the relations that have test facts (LAMA's macro average)."""
    scored = [m for m in per_relation if m["n"]]
    out: dict[str, Any] = {"relations": len(scored)}
    for k in METRICS:
        out[k] = sum(m[k] for m in scored) / len(scored) if scored else None
    return out


def majority_scores(train_gold: torch.Tensor, rows: int, vocab: int) -> torch.Tensor:
    """(rows, vocab) scores that rank objects by how many training facts have them, ties by
    token id: the answer a model gives that knows only the relation's most frequent object
    (the majority reference of Petroni et al. 2019). No model is read; a model whose P@1 is
    below it has not even learned which answers the relation takes."""
    counts = torch.bincount(train_gold, minlength=vocab).double()
    tie_break = torch.arange(vocab, dtype=torch.float64) / (2.0 * vocab)  # below one count
    return (counts - tie_break).expand(rows, vocab)


def prompt_order(train_metrics: list[dict[str, Any]]) -> list[int]:
    """Prompt indices, best training P@1 first (ties: MRR, then the earlier prompt)."""

    def key(i: int) -> tuple[float, float, int]:
        m = train_metrics[i]
        return (-(m["p_at_1"] or 0.0), -(m["mrr"] or 0.0), i)

    return sorted(range(len(train_metrics)), key=key)


def optimize_weights(
    log_probs: torch.Tensor, gold: torch.Tensor, candidates: torch.Tensor | None = None
) -> torch.Tensor:
    """softmax(theta) over prompts maximising mean log softmax_y(sum_i w_i log P_i(y))[gold] on
    the training facts; `log_probs` is (facts, prompts, vocab). No facts: uniform weights."""
    n_prompts = log_probs.shape[1]
    theta = torch.zeros(n_prompts, dtype=torch.float64, requires_grad=True)
    if log_probs.shape[0] == 0:
        return torch.softmax(theta.detach(), 0)
    lp = log_probs.double()

    def loss() -> torch.Tensor:
        scores = ensemble_scores(lp, torch.softmax(theta, 0))
        if candidates is not None:  # only the candidates compete (gold is always one of them)
            scores = scores.masked_fill(~candidates[None, :], float("-inf"))
        return -torch.log_softmax(scores, -1).gather(1, gold[:, None]).mean()

    def closure() -> torch.Tensor:
        opt.zero_grad()
        value = loss()
        value.backward()
        return value

    opt = torch.optim.LBFGS([theta], max_iter=_OPT_ITERATIONS, line_search_fn="strong_wolfe")
    opt.step(closure)
    return torch.softmax(theta.detach(), 0)


def ensemble_scores(log_probs: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(facts, vocab) scores sum_i weights_i log P_i(y) from (facts, prompts, vocab)."""
    return torch.einsum("p,fpv->fv", weights.to(log_probs.dtype), log_probs)


# --- Probing one relation ------------------------------------------------------------------------


def _log_probs(
    lm: MaskedLM,
    builder: ClozeBuilder,
    rs: RelationSet,
    facts: list[Fact],
    batch_tokens: int,
    global_mask: bool,
) -> torch.Tensor:
    """(facts, prompts, vocab) log-probabilities at the mask."""
    rows = [builder.row(p.template, f.subject) for f in facts for p in rs.prompts]
    lp = lm.mask_log_probs(rows, batch_tokens, global_mask)
    return lp.reshape(len(facts), len(rs.prompts), lm.model.config.vocab_size)


def probe_relation(
    lm: MaskedLM,
    builder: ClozeBuilder,
    rs: RelationSet,
    params: ProbeParams,
    candidates: torch.Tensor | None,
) -> dict[str, Any]:
    """Every prompt's training and test metrics and every method's test metrics."""
    lp_train = _log_probs(lm, builder, rs, rs.train, params.batch_tokens, params.global_mask)
    lp_test = _log_probs(lm, builder, rs, rs.test, params.batch_tokens, params.global_mask)
    g_train = torch.tensor([rs.gold[f] for f in rs.train], dtype=torch.long)
    g_test = torch.tensor([rs.gold[f] for f in rs.test], dtype=torch.long)
    ex_train = [rs.exclude[f] for f in rs.train]
    ex_test = [rs.exclude[f] for f in rs.test]

    def test_metrics(scores: torch.Tensor) -> dict[str, Any]:
        return rank_metrics(gold_ranks(scores, g_test, candidates, ex_test))

    prompts = []
    for i, p in enumerate(rs.prompts):
        train = rank_metrics(gold_ranks(lp_train[:, i], g_train, candidates, ex_train))
        entry = {"template": p.template, "source": p.source, "train": train}
        prompts.append({**entry, "test": test_metrics(lp_test[:, i])})
    order = prompt_order([p["train"] for p in prompts])
    top = order[: params.top_k]
    weights = optimize_weights(lp_train, g_train, candidates)
    methods = {
        "manual": test_metrics(lp_test[:, 0]),
        "top1": {**test_metrics(lp_test[:, order[0]]), "prompts": [order[0]]},
        "topk": {**test_metrics(lp_test[:, top].mean(1)), "prompts": top},
        "optimized": {
            **test_metrics(ensemble_scores(lp_test, weights)),
            "weights": [round(float(w), 4) for w in weights],
        },
        "majority": test_metrics(majority_scores(g_train, len(rs.test), lp_test.shape[-1])),
    }
    return {"label": rs.relation.label, "counts": rs.counts, "prompts": prompts, "methods": methods}


# --- The stage -----------------------------------------------------------------------------------


@dataclass
class ProbeData:
    relations: list[Relation]
    facts: dict[str, list[Fact]]
    train_facts: dict[str, list[Fact]] | None
    prompts: list[Prompt]
    vocab: set[str] | None
    skipped: list[Skipped]


def load_probe_data(params: ProbeParams) -> ProbeData:
    """Relations, facts, training facts, prompts and the common vocabulary; every malformed
    line is logged (file:line: reason) and kept for the report."""
    rels = load_relations(params.relations)
    skipped = list(rels.skipped)
    facts, bad = load_fact_dir(params.facts, rels.items)
    skipped += bad
    train = None
    if params.train_facts is not None:
        train, bad = load_fact_dir(params.train_facts, rels.items)
        skipped += bad
    prompts = load_prompts(params.prompts)
    skipped += prompts.skipped
    vocab = load_common_vocab(params.common_vocab) if params.common_vocab else None
    for s in skipped[:_MAX_REPORTED_SKIPS]:
        log.warning("probe: skipped %s", s)
    if len(skipped) > _MAX_REPORTED_SKIPS:
        log.warning("probe: ... and %d more skipped lines", len(skipped) - _MAX_REPORTED_SKIPS)
    if not any(facts.values()):
        raise InputError(
            f"{params.facts}: no facts for any relation of {params.relations} "
            "(expected <relation>.jsonl files)"
        )
    return ProbeData(rels.items, facts, train, prompts.items, vocab, skipped)


def _candidates(builder: ClozeBuilder, vocab: set[str] | None, size: int) -> torch.Tensor | None:
    """The vocabulary mask of common-vocabulary words that are one token (None: everything)."""
    if vocab is None:
        return None
    mask = torch.zeros(size, dtype=torch.bool)
    for word in vocab:
        oid = builder.object_id(word)
        if oid is not None:
            mask[oid] = True
    return mask


def run_probe(lm: MaskedLM, data: ProbeData, params: ProbeParams) -> dict[str, Any]:
    """The report body: per relation results and the macro averages per method."""
    builder = ClozeBuilder(lm, params.detokenize)
    candidates = _candidates(builder, data.vocab, lm.model.config.vocab_size)
    relations: dict[str, Any] = {}
    for rel in data.relations:
        if rel.id not in data.facts:
            continue
        train = data.train_facts.get(rel.id, []) if data.train_facts is not None else None
        prompts = relation_prompts(rel, data.prompts)
        rs = relation_set(rel, prompts, data.facts[rel.id], train, builder, params, data.vocab)
        relations[rel.id] = probe_relation(lm, builder, rs, params, candidates)
        log.info("probe: %s %s", rel.id, rs.counts)
    macro = {m: macro_average([r["methods"][m] for r in relations.values()]) for m in METHODS}
    counts = {
        k: sum(r["counts"][k] for r in relations.values())
        for k in ("facts", "multi_token", "not_in_vocab", "train", "test")
    }
    return {"relations": relations, "macro": macro, "counts": counts}


def _fmt(x: float | None) -> str:
    return "  n/a" if x is None else f"{x:5.3f}"


def report_table(body: dict[str, Any]) -> str:
    """The log's table: P@1 per relation and method, then the macro P@1 / P@10 / MRR."""
    head = f"{'relation':<10}{'test':>6}  " + "  ".join(f"{m:>9}" for m in METHODS)
    lines = ["P@1 on the test facts", head]
    for rid, r in body["relations"].items():
        cells = "  ".join(f"{_fmt(r['methods'][m]['p_at_1']):>9}" for m in METHODS)
        lines.append(f"{rid:<10}{r['counts']['test']:>6}  {cells}")
    for k in METRICS:
        cells = "  ".join(f"{_fmt(body['macro'][m][k]):>9}" for m in METHODS)
        lines.append(f"{'macro ' + k:<16}  {cells}")
    return "\n".join(lines)


def mlflow_metrics(body: dict[str, Any]) -> tuple[dict[str, float], dict[str, float]]:
    """(macro metrics per method, `probe_<method>_<metric>`; P@1 per relation and method,
    `probe_<relation>_<method>_p_at_1`), leaving out what has no test facts."""
    macro, per_relation = {}, {}
    for m in METHODS:
        for k in METRICS:
            if body["macro"][m][k] is not None:
                macro[f"probe_{m}_{k}"] = body["macro"][m][k]
    for rid, r in body["relations"].items():
        for m in METHODS:
            if r["methods"][m]["p_at_1"] is not None:
                per_relation[f"probe_{rid}_{m}_p_at_1"] = r["methods"][m]["p_at_1"]
    return macro, per_relation


def _pretrain_run(checkpoint: Path) -> str | None:
    """The MLflow run that trained `checkpoint`, from its manifest (pretrain writes it)."""
    try:
        manifest = json.loads((checkpoint / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return (manifest.get("results") or {}).get("run_id")


def _log_to_mlflow(
    params: ProbeParams, body: dict[str, Any], report: Path, checkpoint: Path
) -> str:
    """A `probe` run (params, metrics, the report); the macro metrics also go to the pretraining
    run of the checkpoint when it is in this store, so that run records what its model knows."""
    import mlflow

    macro, per_relation = mlflow_metrics(body)
    trained_by = _pretrain_run(checkpoint)
    with mlflow.start_run(run_name="probe") as run:
        mlflow.set_tag("stage", "probe")
        if trained_by:
            mlflow.set_tag("probed_run_id", trained_by)
        mlflow.log_params({f"probe.{k}": v for k, v in params_dict(params).items()})
        mlflow.log_metrics({**macro, **per_relation})
        mlflow.log_artifact(str(report))
    if trained_by:
        try:
            with mlflow.start_run(run_id=trained_by):
                mlflow.log_metrics(macro)
        except mlflow.exceptions.MlflowException:
            log.info("probe: pretraining run %s is not in this store", trained_by)
    return run.info.run_id


def probe(params: ProbeParams, tracking_params: TrackingParams) -> dict[str, Any]:
    """Probe `params.model` on the facts; write report.json, the metrics file and a manifest
    under `params.out`, log a `probe` MLflow run. Returns the summary (the manifest's results)."""
    from longdoc.components.core import tracking

    t0 = time.time()
    tracking.setup(tracking_params)
    data = load_probe_data(params)
    checkpoint = resolve_checkpoint(params.model)
    out = claim_output_dir(params.out, "probe", force=params.force)
    lm = MaskedLM.from_checkpoint(checkpoint, params.device)
    body = run_probe(lm, data, params)
    if not body["counts"]["test"]:
        log.warning("probe: no fact has a single-token object in this model's vocabulary")
    table = report_table(body)
    log.info("probe results\n%s", table)
    skipped = [str(s) for s in data.skipped]
    report = {
        "model": params.model,
        "checkpoint": str(checkpoint),
        "global_projections": lm.global_projections,
        **body,
        "skipped": skipped,
    }
    atomic_write_json(out / "report.json", report)
    run_id = _log_to_mlflow(params, body, out / "report.json", checkpoint)
    summary = {
        "run_id": run_id,
        "macro": body["macro"],
        "counts": {**body["counts"], "skipped_lines": len(skipped)},
        "report": str(out / "report.json"),
        "table": table,
    }
    atomic_write_json(params.metrics, summary)
    inputs = {"model": params.model, "checkpoint": str(checkpoint), "facts": str(params.facts)}
    write_manifest(
        out,
        stage="probe",
        inputs=inputs,
        params=params_dict(params),
        results=summary,
        versions=versions(),
        timings_s={"total": round(time.time() - t0, 3)},
    )
    return summary
