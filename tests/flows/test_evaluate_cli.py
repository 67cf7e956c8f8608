"""`longdoc evaluate`: metrics as JSON on stdout for a predictions file in the official format;
user errors as one line on stderr with exit 1 (no traceback). Runs the real console entry point
in a subprocess, as a user would."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from longdoc.flows.cli import build_parser

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "longdoc", "evaluate", *args],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _hotpot_gold(tmp_path: Path) -> Path:
    ctx = [["A", ["A is a band.", " It formed in Ohio."]], ["B", ["B is a band."]]]
    gold = [
        {"_id": "h1", "question": "?", "answer": "yes", "supporting_facts": [["A", 0], ["B", 0]],
         "context": ctx, "type": "comparison", "level": "hard"},
        {"_id": "h2", "question": "?", "answer": "Ohio", "supporting_facts": [["A", 1]],
         "context": ctx, "type": "bridge", "level": "hard"},
    ]  # fmt: skip
    path = tmp_path / "hotpot_dev_distractor_v1.json"
    path.write_text(json.dumps(gold))
    return path


def test_evaluate_prints_official_metrics_as_json(tmp_path):
    gold = _hotpot_gold(tmp_path)
    preds = tmp_path / "pred.json"
    # h1: answer right, sp half (p 1, r .5); h2: answer "in Ohio" (p .5, r 1), sp exact
    preds.write_text(
        json.dumps(
            {"answer": {"h1": "Yes", "h2": "in Ohio"}, "sp": {"h1": [["A", 0]], "h2": [["A", 1]]}}
        )
    )
    res = run_cli("--task", "hotpotqa", "--gold", str(gold), "--predictions", str(preds),
                  "--out", str(tmp_path / "m.json"), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert m["task"] == "hotpotqa" and m["n"] == 2
    assert m["em"] == pytest.approx(0.5)
    assert m["f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["sp_em"] == pytest.approx(0.5)
    assert m["sp_f1"] == pytest.approx((2 / 3 + 1) / 2)
    # joint: h1 p 1*1, r 1*.5 -> f1 2/3; h2 p .5*1, r 1*1 -> f1 2/3
    assert m["joint_f1"] == pytest.approx(2 / 3)
    assert json.loads((tmp_path / "m.json").read_text()) == m
    # the directory works as --gold too
    res = run_cli("--task", "hotpotqa", "--gold", str(tmp_path), "--predictions", str(preds),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0 and json.loads(res.stdout)["joint_f1"] == pytest.approx(2 / 3)


def test_semeval_run_file_for_hyperpartisan(tmp_path):
    truth = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<articles>\n'
        '<article id="1" hyperpartisan="true" labeled-by="article" url="u"/>\n'
        '<article id="2" hyperpartisan="false" labeled-by="article" url="u"/>\n</articles>\n'
    )
    gold = tmp_path / "ground-truth-test-byarticle-20181207.xml"
    gold.write_text(truth)
    run = tmp_path / "run.txt"
    run.write_text("1 true 0.8\n2 true 0.6\n")
    res = run_cli("--task", "hyperpartisan", "--gold", str(gold), "--predictions", str(run),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert (m["accuracy"], m["precision"], m["recall"]) == (0.5, 0.5, 1.0)
    assert m["f1"] == pytest.approx(2 / 3)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"answer": {"h1": "yes"}}', 'expected a JSON object with "answer" and "sp"'),
        ('{"answer": {}, "sp": {"h1": [["A", "0"]]}}', "list of [title, sentence index] pairs"),
        ("{not json", "predictions file is not valid JSON"),
    ],
)
def test_bad_predictions_are_one_line(tmp_path, content, message):
    gold = _hotpot_gold(tmp_path)
    preds = tmp_path / "pred.json"
    preds.write_text(content)
    res = run_cli("--task", "hotpotqa", "--gold", str(gold), "--predictions", str(preds),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"longdoc: error: {preds}")
    assert message in lines[0]
    assert "Traceback" not in res.stdout + res.stderr


def test_missing_gold_is_one_line(tmp_path):
    preds = tmp_path / "p.json"
    preds.write_text("{}")
    res = run_cli("--task", "wikihop", "--gold", str(tmp_path / "nope.json"),
                  "--predictions", str(preds), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 1
    assert res.stderr.strip() == f"longdoc: error: WikiHop gold not found: {tmp_path / 'nope.json'}"


def test_help_and_task_choices():
    parser = build_parser()
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["evaluate", "--help"])
    assert exit_.value.code == 0
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args(["evaluate", "--task", "squad", "--gold", "g", "--predictions", "p"])
    assert exit_.value.code == 2
    args = parser.parse_args(["evaluate", "--task", "imdb", "--gold", "g", "--predictions", "p"])
    assert (args.task, args.gold, args.predictions, args.out) == ("imdb", "g", "p", None)


def test_malformed_gold_record_is_a_warning_and_counted(tmp_path):
    gold = _hotpot_gold(tmp_path)
    records = json.loads(gold.read_text())
    records.append({"_id": "broken", "answer": "x"})  # no question, no context
    gold.write_text(json.dumps(records))
    preds = tmp_path / "pred.json"
    preds.write_text(json.dumps({"answer": {"h1": "yes", "h2": "Ohio"}, "sp": {}}))
    res = run_cli("--task", "hotpotqa", "--gold", str(gold), "--predictions", str(preds),
                  cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert (m["n"], m["gold_skipped"], m["em"], m["missing_sp"]) == (2, 1, 1.0, 2)
    assert f"gold record skipped: {gold}[2]: missing field 'context'" in res.stderr


def test_mismatched_ids_are_explained_on_stderr(tmp_path):
    root = tmp_path / "aclImdb" / "test"
    for label, name in (("pos", "0_9.txt"), ("neg", "0_2.txt"), ("neg", "1_1.txt")):
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / name).write_text("a review")
    preds = tmp_path / "p.json"
    preds.write_text(json.dumps({"0": "pos", "test/neg/0": "neg"}))  # "0": folder missing
    res = run_cli("--task", "imdb", "--gold", str(tmp_path / "aclImdb"), "--predictions",
                  str(preds), cwd=tmp_path)  # fmt: skip
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout)
    assert (m["accuracy"], m["missing"], m["extra"]) == (pytest.approx(1 / 3), 2, 1)
    assert "2 of 3 gold ids have no prediction" in res.stderr
    assert "1 prediction ids are not in the gold set (ignored), e.g. '0'" in res.stderr
    assert "gold ids look like 'test/neg/0'" in res.stderr
