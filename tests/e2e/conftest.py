import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# The smallest configuration that still runs every stage for real.
TINY = {
    "sample": {
        "corpus_docs": 10,
        "min_words": 200,
        "max_words": 400,
        "imdb_train": 16,
        "imdb_test": 8,
        "task_train": 4,
        "task_dev": 2,
        "score_docs": 4,
    },
    "tokenize": {"vocab_size": 400, "seq_len": 128},
    "kernels": {"head_dims": [16]},
    "model": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 64,
        "attention_window": 16,
        "max_position_embeddings": 514,
    },
    "pretrain": {"steps": 3, "batch_size": 2, "eval_batches": 1, "warmup_steps": 1},
    # baseline 128: room for WikiHop's query + candidates with the tiny tokenizer
    "finetune": {"epochs": 1, "max_len": 512, "baseline_max_len": 128, "batch_size": 4},
    "score": {"max_len": 512},
    # probe and the fine-tuning tasks side by side, whatever the cores (tests use 1 thread each)
    "pipeline": {"jobs": 2},
}


def cli_env(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    env.update(
        PREFECT_HOME=str(home / ".prefect"),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="120",
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
    )
    return env


def run(cmd: list[str], cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    res = subprocess.run(
        cmd, cwd=cwd, env=cli_env(cwd), capture_output=True, text=True, timeout=timeout
    )
    if res.returncode != 0:
        pytest.fail(
            f"{' '.join(cmd)} exited {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-6000:]}"
        )
    return res


def copy_repo(dest: Path) -> None:
    """The repo's own files (tracked or not ignored), as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
