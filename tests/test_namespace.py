"""The project installs one import name, `longdoc`, and coexists with Hugging Face's `kernels`
distribution (required by transformers >= 5.25) whatever the working directory is.

Run in subprocesses on purpose: the collision depended on what `sys.path[0]` was (the repo root
under `python -m pytest`, a Prefect worker or `torchrun -m`), which an in-process test can't vary.
"""

import subprocess
import sys
from importlib.metadata import distribution
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

CHECK = """
import transformers.integrations.hub_kernels
import kernels, torch
from longdoc.kernels import attention, SlidingWindow
from longdoc.components.modeling.model import LongdocConfig, LongformerForMaskedLM
assert 'site-packages' in kernels.__file__, kernels.__file__  # Hugging Face's, never ours
assert hasattr(kernels, 'get_kernel'), dir(kernels)
q = torch.randn(1, 40, 2, 8)
assert attention(q, q, q, SlidingWindow(4)).shape == q.shape
config = LongdocConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    num_attention_heads=2, intermediate_size=32, attention_window=8,
    max_position_embeddings=80)
model = LongformerForMaskedLM(config).eval()
out = model(input_ids=torch.randint(5, 50, (2, 37)), attention_mask=torch.ones(2, 37))
assert out.logits.shape == (2, 37, 50)
print('ok')
"""


@pytest.mark.parametrize("where", ["repo root", "elsewhere"])
def test_hf_kernels_and_longdoc_coexist(where, tmp_path):
    cwd = REPO if where == "repo root" else tmp_path
    proc = subprocess.run(
        [sys.executable, "-c", CHECK], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("ok")


def test_python_dash_m_longdoc_is_the_command(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "longdoc", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "usage: longdoc" in proc.stdout


def test_only_longdoc_is_installed_at_top_level():
    top_level = distribution("longdoc").read_text("top_level.txt")
    assert top_level is not None and top_level.split() == ["longdoc"]
    for generic in ("components", "flows", "kernels"):
        assert not (REPO / generic / "__init__.py").exists(), f"{generic}/ shadows other packages"
