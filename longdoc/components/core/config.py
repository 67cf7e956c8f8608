"""Typed configuration: `params.yaml` parsed into one pydantic model per stage.

Why typed: a typo in a key or a negative learning rate should stop the run before any work is
done, with one line naming the key, instead of surfacing as a confusing failure an hour later.
Every model forbids unknown keys; ranges are declared next to the field they guard.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

PositiveInt = Annotated[int, Field(gt=0)]
NonNegInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0.0, lt=1.0)]


class ConfigError(ValueError):
    """A configuration problem, with a message meant to be shown to the user as one line."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SampleParams(_Section):
    """The embedded synthetic data set (`longdoc sample`)."""

    out: Path = Path("data/sample")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    seed: int = 0
    corpus_docs: PositiveInt = 240
    min_words: PositiveInt = 1000
    max_words: PositiveInt = 10000
    imdb_train: PositiveInt = 400
    imdb_test: PositiveInt = 200
    task_train: PositiveInt = 64  # WikiHop, TriviaQA, HotpotQA, Hyperpartisan train sizes
    task_dev: PositiveInt = 32
    score_docs: PositiveInt = 40  # unlabeled reviews in the archive that `score` reads

    @model_validator(mode="after")
    def _word_range(self) -> SampleParams:
        if self.min_words > self.max_words:
            raise ValueError("min_words must be <= max_words")
        return self


class IngestParams(_Section):
    """Archive ingestion into the Parquet corpus (`longdoc ingest`)."""

    sources: list[Path] = Field(default_factory=lambda: [Path("data/sample/corpus")], min_length=1)
    out: Path = Path("data/corpus")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    shard_max_docs: PositiveInt = 5000
    shard_max_chars: PositiveInt = 256 * 1024 * 1024  # text chars per shard (size bound)
    min_chars: PositiveInt = 1
    max_doc_chars: PositiveInt = 5_000_000
    max_member_bytes: PositiveInt = 64 * 1024 * 1024  # per archive member, decompressed
    max_total_bytes: PositiveInt | None = 256 * 1024**3  # per source, decompressed; None = no cap
    spacy_model: str = "blank:en"  # "blank:en" = spacy.blank("en") + sentencizer
    whitespace: Literal["paragraphs", "single_space", "keep"] = "paragraphs"
    decode_entities: bool = True  # &amp; &#8217; ... left in text/JSON/table records
    text_field: str = "text"  # JSON/JSONL record field or Parquet/Arrow column (dotted path)
    json_records_path: str | None = None  # dotted path of the record list in a .json object
    xml_record_path: str | None = None  # e.g. "article"; None = every child of the root
    near_dup_threshold: Annotated[float, Field(gt=0.0, le=1.0)] | None = None  # None = off
    near_dup_num_perm: Annotated[int, Field(ge=16, le=1024)] = 128  # MinHash permutations
    near_dup_shingle: Annotated[int, Field(ge=1, le=32)] = 5  # words per shingle
    workers: NonNegInt | None = None  # sentence-splitting processes; None = auto


class TokenizeParams(_Section):
    """Tokenizer training and Arrow shards (`longdoc tokenize`)."""

    corpus: Path = Path("data/corpus")
    out: Path = Path("data/shards")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    base_tokenizer: Path | None = None  # an HF tokenizer dir; None = train `tokenizer_model`
    tokenizer_model: Literal["bpe", "unigram"] = "bpe"  # byte-level BPE or byte-level unigram
    vocab_size: Annotated[int, Field(ge=300, le=1_000_000)] = 8000
    min_frequency: PositiveInt = 2
    # train the tokenizer on a deterministic sample of about this many million characters of the
    # train split (bounded memory at any corpus size); null = the whole split
    train_sample_mb: Annotated[float, Field(gt=0)] | None = 32.0
    seq_len: Annotated[int, Field(ge=16)] = 1024  # length of packed MLM sequences
    val_fraction: Fraction = 0.05
    seed: int = 0


class KernelsParams(_Section):
    """TVM attention kernels (`longdoc build-kernels`)."""

    out: Path = Path("data/kernels")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    dtypes: list[Literal["float32", "bfloat16"]] = Field(default_factory=lambda: ["float32"])
    head_dims: list[PositiveInt] = Field(default_factory=lambda: [32])
    targets: list[str] = Field(default_factory=lambda: ["llvm"])


class ModelParams(_Section):
    """Architecture of the long model built by `pretrain` when no base checkpoint is given."""

    hidden_size: PositiveInt = 128
    num_hidden_layers: PositiveInt = 2
    num_attention_heads: PositiveInt = 4
    intermediate_size: PositiveInt = 256
    attention_window: PositiveInt = 64  # HF convention: full window, w/2 on each side
    max_position_embeddings: Annotated[int, Field(ge=16)] = 4098
    attention_backend: Literal["auto", "torch", "tvm", "dense"] = "auto"
    dropout: Fraction = 0.1

    @model_validator(mode="after")
    def _shape(self) -> ModelParams:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("hidden_size must be divisible by num_attention_heads")
        if self.attention_window % 2:
            raise ValueError("attention_window must be even (w/2 tokens on each side)")
        return self


#: How the ranks of a torchrun job share the training (components.training.parallel).
ParallelMode = Literal["ddp", "fsdp", "tp"]


class PretrainParams(_Section):
    """Continued pretraining (`longdoc pretrain`): masked LM for the encoder (Longformer),
    BART's denoising for the encoder-decoder (LED)."""

    shards: Path = Path("data/shards")
    base: Path | None = None  # an HF checkpoint to continue from; None = fresh init from `model`
    # mlm: a Longformer (base or fresh); denoise: an LED base (`longdoc convert` of a BART)
    objective: Literal["mlm", "denoise"] = "mlm"
    out: Path = Path("data/checkpoints/pretrain")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    metrics: Path = Path("data/metrics/pretrain.json")  # DVC metrics file
    steps: PositiveInt = 2000
    batch_size: PositiveInt = 1  # packed rows per micro-batch (with piece_len: cut in pieces)
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    warmup_steps: NonNegInt = 200
    weight_decay: Annotated[float, Field(ge=0)] = 0.01
    mlm_probability: Annotated[float, Field(gt=0, lt=1)] = 0.15
    denoise_mask_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.3  # tokens masked, in spans
    denoise_poisson_lambda: Annotated[float, Field(gt=0)] = 3.0  # mean span length
    denoise_permute_sentences: bool = True  # shuffle the row's sentences before masking
    eval_batches: PositiveInt = 4
    seed: int = 0
    grad_accum: PositiveInt = 1  # micro-batches per optimizer step (per process)
    max_grad_norm: Annotated[float, Field(gt=0)] = 1.0
    bf16: bool = False  # bf16 autocast for the forward pass (CPU and CUDA)
    gradient_checkpointing: bool = False  # recompute activations in the backward pass
    checkpoint_every: NonNegInt = 50  # resumable checkpoint every N steps; 0 = never
    keep_checkpoints: PositiveInt = 2  # the newest N resumable checkpoints are kept
    parallel: ParallelMode = "ddp"  # under torchrun: ddp | fsdp | tp (training.parallel)
    tp_size: PositiveInt | None = None  # tp: ranks per tensor-parallel group; None = all
    # mlm from fresh init: train on pieces of this many tokens cut from the packed rows
    # (each of batch_size rows gives seq_len // piece_len), publish with their positions tiled
    # over the long ones
    piece_len: Annotated[int, Field(ge=2)] | None = 32

    @property
    def from_scratch_mlm(self) -> bool:
        """Whether `piece_len` applies: MLM from a fresh init. A base's long positions are
        trained already (tiling would overwrite them), and denoising always continues a base."""
        return self.objective == "mlm" and self.base is None


class ConvertParams(_Section):
    """Short -> long conversion of a RoBERTa (-> Longformer) or BART (-> LED) checkpoint
    (`longdoc convert`)."""

    base: Path | None = None  # a RoBERTa- or BART-architecture HF checkpoint dir (+ tokenizer)
    out: Path = Path("data/checkpoints/long")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    # tokens the long model takes; None: 4096 (RoBERTa base) or 16384 (BART base)
    max_positions: Annotated[int, Field(ge=16)] | None = None
    attention_window: PositiveInt | list[PositiveInt] = 512  # full window, per layer or all
    attention_backend: Literal["auto", "torch", "tvm", "dense"] = "auto"
    position_init: Literal["copy", "random"] = "copy"  # random: the paper's baseline

    @model_validator(mode="after")
    def _even(self) -> ConvertParams:
        windows = self.attention_window
        if any(w % 2 for w in (windows if isinstance(windows, list) else [windows])):
            raise ValueError("attention_window must be even (w/2 tokens on each side)")
        return self


class ProbeParams(_Section):
    """LAMA-style knowledge probing with prompt ensembles (`longdoc probe`)."""

    model: str = "data/checkpoints/pretrain"  # a masked-LM checkpoint dir or an MLflow URI
    relations: Path = Path("data/sample/lama/relations.jsonl")  # LAMA's relations.jsonl
    facts: Path = Path("data/sample/lama/TREx")  # <relation>.jsonl per relation
    prompts: list[Path] = Field(default_factory=lambda: [Path("data/sample/lama/prompts")])
    train_facts: Path | None = None  # facts to fit the ensembles on; None = split `facts`
    train_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    common_vocab: Path | None = None  # one word a line (LAMA's common vocabulary); None = all
    top_k: PositiveInt = 3  # prompts averaged by the rank-based ensemble
    detokenize: bool = True  # "[X] was born in [Y] ." is read as "... in [Y]."
    global_mask: bool = True  # global attention on the mask (false: local window only)
    out: Path = Path("data/probe")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    metrics: Path = Path("data/metrics/probe.json")  # DVC metrics file
    batch_tokens: PositiveInt = 16384  # rows x longest row per forward pass
    device: str = "auto"  # auto = cuda when present, else cpu
    seed: int = 0

    @property
    def model_dir(self) -> Path | None:
        """The checkpoint directory when `model` is a path (None for an MLflow URI)."""
        return None if ":/" in self.model else Path(self.model)


def _registered_task(name: str) -> str:
    """A task name the registry (components.tasks) knows; imported here, on use, because task
    modules import this package's siblings."""
    from longdoc.components.tasks import task_names, unknown_task_message

    if name not in task_names():
        raise ValueError(unknown_task_message(name))
    return name


#: A registered task's name (components.tasks.register adds to them).
TaskName = Annotated[str, AfterValidator(_registered_task)]


class GenerationParams(_Section):
    """How a sequence-to-sequence model writes its output (summaries): fine-tuning saves these
    as the checkpoint's generation config, so its dev predictions, `longdoc score` and the
    served model all generate alike."""

    num_beams: PositiveInt = 4
    max_new_tokens: PositiveInt = 128
    min_new_tokens: NonNegInt = 0
    no_repeat_ngram_size: NonNegInt = 3  # 0 = off
    length_penalty: float = 2.0  # beam search: > 1 favours longer outputs


class GenerationOverrides(_Section):
    """`score.generation`: GenerationParams' settings replacing a summarizer's own for one
    scoring run; null keeps what fine-tuning saved with the checkpoint."""

    num_beams: PositiveInt | None = None
    max_new_tokens: PositiveInt | None = None
    min_new_tokens: NonNegInt | None = None
    no_repeat_ngram_size: NonNegInt | None = None
    length_penalty: float | None = None

    def given(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


class FinetuneTask(_Section):
    """Where one task's data is and where its fine-tuned model and metrics go."""

    data: Path  # the task's files in their official layout
    out: Path  # checkpoint directory
    metrics: Path  # DVC metrics file; prediction files are written beside it
    epochs: PositiveInt | None = None  # None = finetune.epochs
    lr: Annotated[float, Field(gt=0, le=1)] | None = None  # None = finetune.lr
    batch_size: PositiveInt | None = None  # None = finetune.batch_size
    # this task's truncated baseline; None = finetune.baseline_max_len
    baseline_max_len: Annotated[int, Field(ge=16)] | None = None
    generation: GenerationParams | None = None  # seq2seq tasks; None = the defaults
    # seq2seq tasks: keep the warm-started encoder as it is and train the decoder (and the
    # shared embeddings through it); the encoder then runs without backward, so a step costs
    # about half and the same time buys twice the decoder updates
    freeze_encoder: bool = False


def _default_tasks() -> dict[str, FinetuneTask]:
    """One entry per registered task, reading the task's files where `longdoc sample` writes
    them."""
    from longdoc.components.tasks import all_tasks

    return {
        t.name: FinetuneTask(
            data=Path("data/sample") / t.sample_dir,
            out=Path(f"data/checkpoints/{t.name}"),
            metrics=Path(f"data/metrics/finetune_{t.name}.json"),
            epochs=t.epochs,
            **t.finetune_defaults,
        )
        for t in all_tasks()
    }


class FinetuneParams(_Section):
    """Fine-tuning on a task (`longdoc finetune`) next to a truncated baseline.

    `task` picks the task one command runs; the pipeline (and `dvc repro`) runs every task in
    `tasks`. `data`/`out`/`metrics` left null resolve to `tasks[task]`'s; set they override it
    for this run only (the `--data/--out` flags).
    """

    task: TaskName = "imdb"
    tasks: dict[TaskName, FinetuneTask] = Field(default_factory=_default_tasks)
    data: Path | None = None
    out: Path | None = None
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    metrics: Path | None = None
    base: Path = Path("data/checkpoints/pretrain")
    max_len: Annotated[int, Field(ge=16)] = 4096
    windows: bool = True  # inputs over max_len: overlapping windows (true) or truncation
    window_overlap: NonNegInt = 256  # tokens shared by neighbouring windows
    baseline_max_len: Annotated[int, Field(ge=16)] | None = 512  # truncated; null = no baseline
    epochs: PositiveInt = 3
    batch_size: PositiveInt = 4
    # a step's examples run in forward passes of up to this many tokens (windows x longest
    # window); an example over it runs alone. 4096: one window of the default max_len
    batch_tokens: PositiveInt = 4096
    lr: Annotated[float, Field(gt=0, le=1)] = 1e-3
    warmup_ratio: Fraction = 0.1
    max_train_samples: PositiveInt | None = None
    max_eval_samples: PositiveInt | None = None
    register_model: bool = True
    seed: int = 0
    parallel: ParallelMode = "ddp"  # under torchrun: ddp | fsdp | tp (training.parallel)
    tp_size: PositiveInt | None = None  # tp: ranks per tensor-parallel group; None = all

    @model_validator(mode="after")
    def _resolve_task_paths(self) -> FinetuneParams:
        entry = self.tasks.get(self.task)
        if entry is None and self.data is None:
            raise ValueError(
                f"task {self.task!r} is not in finetune.tasks: add it there or set finetune.data"
            )
        # __dict__: plain assignment would re-run this validator (validate_assignment)
        if self.data is None:
            self.__dict__["data"] = entry.data
        if self.out is None:
            self.__dict__["out"] = entry.out if entry else Path(f"data/checkpoints/{self.task}")
        if self.metrics is None:
            default = Path(f"data/metrics/finetune_{self.task}.json")
            self.__dict__["metrics"] = entry.metrics if entry else default
        return self

    def for_task(self, task: str) -> FinetuneParams:
        """These parameters for another task: its paths from `tasks`, everything else shared.
        Explicit data/out/metrics overrides belong to the task they were given for."""
        if task == self.task:
            return self
        fields = self.model_dump(exclude={"data", "out", "metrics"})  # (force is excluded too)
        return FinetuneParams.model_validate({**fields, "task": task, "force": self.force})

    def _task_or_shared(self, key: str) -> Any:
        """`key` from the task's entry when it sets one, else this section's shared value."""
        return getattr(self.tasks.get(self.task), key, None) or getattr(self, key)

    @property
    def task_epochs(self) -> int:
        return self._task_or_shared("epochs")

    @property
    def task_lr(self) -> float:
        return self._task_or_shared("lr")

    @property
    def task_batch_size(self) -> int:
        return self._task_or_shared("batch_size")

    @property
    def task_baseline_max_len(self) -> int | None:
        """The truncated baseline's length for `task`: its entry's, else `baseline_max_len`
        (None: no baseline; an entry cannot bring one back), never more than `max_len` (a
        truncated baseline reads no more than the long model)."""
        entry = self.tasks.get(self.task)
        if self.baseline_max_len is None or entry is None or entry.baseline_max_len is None:
            return self.baseline_max_len
        return min(entry.baseline_max_len, self.max_len)

    @property
    def task_freeze_encoder(self) -> bool:
        entry = self.tasks.get(self.task)
        return entry is not None and entry.freeze_encoder

    @property
    def task_generation(self) -> GenerationParams:
        entry = self.tasks.get(self.task)
        return (entry.generation if entry is not None else None) or GenerationParams()


class ScoreParams(_Section):
    """Batch scoring with a registered model (`longdoc score`)."""

    source: Path = Path("data/sample/score/inbox.tar.gz")
    inputs: list[Path] = Field(default_factory=list)  # when given (--input), scored, not source
    model_uri: str = "models:/longdoc-imdb@champion"
    out: Path = Path("data/predictions")
    force: bool = Field(default=False, exclude=True)  # may replace a foreign out (per run)
    # tokens a document is read in: lowers the model's own (a classifier's fine-tuned window,
    # a summarizer's encoder positions); None = the model's own
    max_len: Annotated[int, Field(ge=16)] | None = None
    batch_tokens: PositiveInt = 16384  # rows x longest row per forward pass
    chunk_docs: PositiveInt = 256  # documents per Parquet part (and per resume checkpoint)
    bf16: bool = False
    device: str = "auto"  # auto = cuda when present, else cpu
    text_field: str = "text"  # JSON/JSONL field or Parquet column of the text
    question_field: str | None = None  # QA models: the record field holding the question
    zero_shot: str | None = None  # a name in zeroshot.classifiers: score with that instead
    generation: GenerationOverrides = Field(default_factory=GenerationOverrides)  # summarizers

    def sources(self) -> list[Path]:
        return list(self.inputs) or [self.source]


class RunnerParams(_Section):
    """Where the data stages (ingest, tokenize, score) run their coarse work units: in the
    stage's own process (`local`), or as Prefect tasks on a Dask cluster (`dask`): a
    `distributed.LocalCluster` of `n_workers` processes started for the run, or, with `address`,
    the user's running cluster. Outputs are the same either way, so it is in no fingerprint."""

    kind: Literal["local", "dask"] = "local"
    address: str | None = None  # a running Dask scheduler, e.g. tcp://10.0.0.5:8786
    n_workers: PositiveInt = 2  # LocalCluster worker processes (ignored with an address)
    threads_per_worker: PositiveInt = 1  # units a worker runs at once (LocalCluster)

    @model_validator(mode="after")
    def _address_needs_dask(self) -> RunnerParams:
        if self.address and self.kind != "dask":
            raise ValueError("address is a Dask scheduler: set kind: dask to use it")
        return self


class PipelineParams(_Section):
    """How `longdoc pipeline` runs the stages (not what they compute: in no fingerprint).

    `jobs`: stages that run a model (probe, each fine-tuning task) and do not depend on each
    other run side by side in this many processes, the cores shared out among them. `auto` is
    1 where a CUDA device is visible (the jobs would share it) and 2 on a CPU with 2 or more
    cores: a small model gains little from a second thread, and each job's serial parts
    (Python, evaluation, saving) overlap the other's compute."""

    jobs: PositiveInt | Literal["auto"] = "auto"


class ZeroShotLabel(_Section):
    """One label of a zero-shot classifier: what it means, and the words that say it."""

    description: str = Field(min_length=1)  # fills {labels} in the template
    words: list[str] = Field(min_length=1)  # verbalizers: single tokens at the mask


class ZeroShotClassifier(_Section):
    """A classifier made of a masked LM and a prompt (`longdoc score --zero-shot NAME`)."""

    model: str = "data/checkpoints/pretrain"  # a masked-LM checkpoint dir or an MLflow URI
    template: str  # read after the document; {mask} once, {labels} optional
    labels: dict[str, ZeroShotLabel]
    calibrate: bool = True  # divide by the probabilities an empty document gets
    max_len: Annotated[int, Field(ge=16)] = 4096  # tokens per window (document + prompt)
    window_overlap: NonNegInt = 256

    @model_validator(mode="after")
    def _prompt(self) -> ZeroShotClassifier:
        if self.template.count("{mask}") != 1:
            raise ValueError("template must contain {mask} exactly once")
        if re.search(r"[{}]", re.sub(r"\{(mask|labels)\}", "", self.template)):
            raise ValueError("template may only use the placeholders {labels} and {mask}")
        if len(self.labels) < 2:
            raise ValueError("a classifier needs at least two labels")
        return self


def _default_zero_shot() -> dict[str, ZeroShotClassifier]:
    """The sample's two classification tasks, with the labels their fine-tuned models use."""
    sentiment = "In short, is this {labels}? It was {mask}."
    stance = "Is this {labels}? Its tone is {mask}."
    return {
        "imdb": ZeroShotClassifier(
            template=sentiment,
            labels={
                "neg": ZeroShotLabel(
                    description="a negative review", words=["dreadful", "awful", "tedious"]
                ),
                "pos": ZeroShotLabel(
                    description="a positive review", words=["brilliant", "superb", "wonderful"]
                ),
            },
        ),
        "hyperpartisan": ZeroShotClassifier(
            template=stance,
            labels={
                "false": ZeroShotLabel(
                    description="a balanced report", words=["balanced", "careful", "reasonable"]
                ),
                "true": ZeroShotLabel(
                    description="a one-sided attack", words=["disgraceful", "corrupt", "shameful"]
                ),
            },
        ),
    }


class ZeroShotParams(_Section):
    """Named zero-shot classifiers; `score.zero_shot` picks one."""

    classifiers: dict[str, ZeroShotClassifier] = Field(default_factory=_default_zero_shot)


# MLflow's set_tracking_uri exports MLFLOW_TRACKING_URI so that child processes inherit the
# store. A value this process exported itself is not the user's override: honouring it would
# send every later stage in the same process (a notebook, the in-process runner) to the first
# stage's store, whatever its own `tracking.uri` says. `core.tracking` records each export here.
_exported_tracking_uri: str | None = None


def note_tracking_export(before: str | None, after: str | None) -> None:
    """MLFLOW_TRACKING_URI was ``before`` until MLflow set it to ``after``: ``after`` is this
    process's own unless ``before`` was the user's (set, and not an earlier export)."""
    global _exported_tracking_uri
    if before is None or before == _exported_tracking_uri:
        _exported_tracking_uri = after


class TrackingParams(_Section):
    """MLflow tracking; MLFLOW_TRACKING_URI, when set, overrides `uri`."""

    uri: str = "sqlite:///mlflow.db"
    experiment: str = "longdoc"

    def resolved_uri(self) -> str:
        """The store runs go to: the standard MLFLOW_TRACKING_URI wins over `uri`, unless this
        process exported it itself (through MLflow, for an earlier stage)."""
        env = os.environ.get("MLFLOW_TRACKING_URI")
        if env and env != _exported_tracking_uri:
            return env
        return self.uri


class Params(_Section):
    sample: SampleParams = Field(default_factory=SampleParams)
    ingest: IngestParams = Field(default_factory=IngestParams)
    tokenize: TokenizeParams = Field(default_factory=TokenizeParams)
    kernels: KernelsParams = Field(default_factory=KernelsParams)
    model: ModelParams = Field(default_factory=ModelParams)
    pretrain: PretrainParams = Field(default_factory=PretrainParams)
    convert: ConvertParams = Field(default_factory=ConvertParams)
    probe: ProbeParams = Field(default_factory=ProbeParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    score: ScoreParams = Field(default_factory=ScoreParams)
    zeroshot: ZeroShotParams = Field(default_factory=ZeroShotParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    runner: RunnerParams = Field(default_factory=RunnerParams)
    pipeline: PipelineParams = Field(default_factory=PipelineParams)

    @model_validator(mode="after")
    def _zero_shot_known(self) -> Params:
        name = self.score.zero_shot
        if name is not None and name not in self.zeroshot.classifiers:
            known = ", ".join(sorted(self.zeroshot.classifiers)) or "none"
            raise ValueError(f"score.zero_shot: {name!r} is not in zeroshot.classifiers ({known})")
        return self


def _one_line(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(p) for p in first["loc"] if p != "[key]") or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    extra = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{origin}: {key}: {msg}{extra}"


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set {item!r}: expected section.key=value")
    try:  # YAML scalars: 3 -> int, 1e-3 -> float, null -> None, [a, b] -> list
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """PyYAML's message on one line, with the 1-based line and column where it stopped."""
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    context = getattr(exc, "context", None)
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
    return f"{where}{problem}" + (f" ({context})" if context else "")


def load_params(path: Path | str | None = "params.yaml", overrides: list[str] = ()) -> Params:
    """Read `path` (missing file = all defaults), apply `section.key=value` overrides, validate."""
    data: dict[str, Any] = {}
    origin = "defaults"
    if path is not None:
        p = Path(path)
        if p.exists():
            origin = str(p)
            try:
                loaded = yaml.safe_load(p.read_text()) or {}
            except yaml.YAMLError as exc:
                raise ConfigError(f"{p}: not valid YAML: {_yaml_problem(exc)}") from None
            if not isinstance(loaded, dict):
                raise ConfigError(f"{p}: expected a mapping of sections at the top level")
            data = loaded
        elif str(path) != "params.yaml":
            raise ConfigError(f"{p}: params file not found")
    for item in overrides:
        keys, value = _parse_override(item)
        node = data
        for k in keys[:-1]:
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {k} is not a section")
        node[keys[-1]] = value
        origin = f"{origin} + --set"
    try:
        return Params.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_one_line(err, origin)) from None


def params_dict(section: BaseModel) -> dict[str, Any]:
    """JSON-friendly dict of a section (paths as strings), for manifests and MLflow params."""
    return section.model_dump(mode="json")
