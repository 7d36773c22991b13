"""tools/gpu_check.sh (issue 21, GPU readiness): its --dry-run runs the GPU check's code paths on the CPU at smoke size.
One full dry run with one experiment broken on purpose (its losses made NaN through $MEDSYNTH_GPU_CHECK_BREAK):
a row per experiment in the training and resume tables, resume bit-exact for the others, the broken one failing with
its reason while every other row still ran, exit status 1. A clean short run exits 0. No wall-clock time is asserted."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tools" / "gpu_check.sh"
sys.path.insert(0, str(ROOT))
from tools import gpu_check  # noqa: E402
from medsynth_nb.config import list_experiments  # noqa: E402

BROKEN = "toy-wgan"


def _run(args, env_extra=None, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **(env_extra or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _table(md: str, section: str) -> dict[str, dict]:
    "The rows of one section's markdown table: name → {column: cell}."
    block = md.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    lines = [l for l in block.splitlines() if l.startswith("|")]
    cols = [c.strip() for c in lines[0].strip("|").split(" | ")]
    rows = {}
    for l in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", l.strip()[1:-1])]
        rows[cells[0]] = dict(zip(cols, cells))
    return rows


@pytest.fixture(scope="module")
def broken_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu") / "gpu_check.md"
    p = _run(["--dry-run", "--out", str(out)], {gpu_check.BREAK_ENV: BROKEN})
    return p, out.read_text() if out.exists() else ""


def test_dry_run_has_a_row_per_experiment_and_resume_is_bit_exact(broken_run):
    p, md = broken_run
    names = [e.name for e in list_experiments() if not e.name.startswith("_")]   # "_...": registered by other tests here
    assert len(names) >= 10 and md, p.stdout + p.stderr
    for head in ("**device**: cpu", "**torch**: " + torch.__version__, "**date**: ", "dry run"):
        assert head in md
    train, resume = _table(md, "training"), _table(md, "resume")
    assert sorted(train) == sorted(names) == sorted(resume)
    for n in names:
        if n == BROKEN: continue
        assert train[n]["status"] == "ok" and train[n]["losses_finite"] == "yes", train[n]
        assert train[n]["device"] == "cpu" and train[n]["steps"] == "4" and train[n]["preset"] == "smoke"
        assert float(train[n]["steps_per_s"]) > 0
        assert resume[n]["status"] == "ok" and resume[n]["bit_exact"] == "yes", resume[n]
    assert _table(md, "lessons"), "the #| gpu cells of nbs/ are listed"
    assert all(r["status"] == "ok" for r in _table(md, "lessons").values())
    bench = _table(md, "benchmarks")
    assert len(bench) == 5 and all(r["status"] == "ok" for r in bench.values()), bench
    engine = bench["benchmarks/engine.py --device: engine vs bare loop (fp32)"]["result"]
    assert "final weights identical (same work done): yes" in engine and "RATIO engine / bare" in engine


def test_a_broken_experiment_fails_its_rows_and_the_exit_status_but_not_the_others(broken_run):
    p, md = broken_run
    assert p.returncode == 1, p.stdout + p.stderr
    train, resume = _table(md, "training"), _table(md, "resume")
    assert train[BROKEN]["status"].startswith("FAILED: FloatingPointError") and "nan" in train[BROKEN]["status"]
    assert resume[BROKEN]["status"].startswith("FAILED:")
    assert "failed" in md.split("## training")[0]
    # every other row ran and passed, the sections after the failing training row included
    assert all(r["status"] == "ok" for n, r in [*train.items(), *resume.items()] if n != BROKEN)
    assert _table(md, "lessons") and len(_table(md, "benchmarks")) == 5


def test_a_clean_run_exits_zero_and_an_unknown_option_is_refused(tmp_path):
    out = tmp_path / "g.md"
    p = _run(["--dry-run", "--out", str(out), "--experiments", "toy-regression", "--skip", "lessons", "benchmarks"])
    assert p.returncode == 0, p.stdout + p.stderr
    md = out.read_text()
    assert list(_table(md, "training")) == ["toy-regression"]
    assert _table(md, "resume")["toy-regression"]["bit_exact"] == "yes"
    assert _run(["--dry-run", "--steps", "1"]).returncode == 2


def test_rows_past_the_time_limit_are_reported_as_not_run(tmp_path):
    out = tmp_path / "g.md"
    p = _run(["--dry-run", "--out", str(out), "--experiments", "toy-regression", "--skip", "lessons", "benchmarks",
              "--max-minutes", "0.0001"])
    assert p.returncode == 1, p.stdout + p.stderr
    md = out.read_text()
    for section in ("training", "resume"):
        assert _table(md, section)["toy-regression"]["status"].startswith("FAILED: not run: "), md


def test_resume_comparison_sees_one_ulp():
    "The bit-exact comparison fails on the smallest change of one weight (a tolerance would hide it)."
    torch.manual_seed(0)
    a, b = nn.Linear(3, 2), nn.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    assert gpu_check.compare_states({"m": a}, {"m": b}) == ""
    with torch.no_grad(): b.weight[1, 2] = torch.nextafter(b.weight[1, 2], torch.tensor(2.0))
    assert "m.weight differs" in gpu_check.compare_states({"m": a}, {"m": b})
    assert "different modules" in gpu_check.compare_states({"m": a}, {"n": b})


def test_no_literal_cuda_calls_and_the_device_argument_is_used():
    "No `x.cuda()` call anywhere in the script's code (tensors and models go `.to(device)`); --device decides."
    tree = ast.parse((ROOT / "tools" / "gpu_check.py").read_text())
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
    assert calls and not [n.lineno for n in calls if n.func.attr == "cuda"], "use .to(device), never .cuda()"
    assert any(n.func.attr == "to" for n in calls)
    args = gpu_check.parse_args(["--dry-run"])
    assert args.device == torch.device("cpu") and args.preset == "smoke"
    assert gpu_check.parse_args(["--dry-run", "--device", "meta"]).device == torch.device("meta")
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            gpu_check.parse_args([])   # the default is CUDA: refused (exit 2) where there is none


def test_resume_check_catches_a_resume_that_forgets_the_random_streams(monkeypatch):
    "The same check the table reports: a resume that does not restore the RNG streams is reported as not bit-exact."
    from medsynth_nb.config import get_experiment
    from medsynth_nb.run_state import RNGStreams
    exp, cpu = get_experiment("toy-regression"), torch.device("cpu")    # dropout: the loss stream matters
    assert gpu_check.check_resume(exp, "smoke", cpu, 6, None, False).values["bit_exact"] is True
    monkeypatch.setattr(RNGStreams, "load_state_dict", lambda self, sd: None)
    row = gpu_check.check_resume(exp, "smoke", cpu, 6, None, False)
    assert row.values["bit_exact"] is False and "differs" in row.why


def test_a_run_out_of_time_stops_like_ctrl_c_with_a_checkpoint():
    "The training row's time budget stops the run through the engine's SIGINT path: the step is checkpointed."
    from medsynth_nb.config import get_experiment
    row = gpu_check.check_training(get_experiment("toy-regression"), "smoke", torch.device("cpu"), steps=30,
                                   budget_s=1e-9, warmup=1, cap=None, broken=False)
    assert row.ok, row.why
    assert row.values["steps"] == 2 and row.values["checkpoint"] == "step 2"
    assert "stopped after 2 of 30" in row.values["note"]
    assert row.values["steps_per_s"] > 0 and row.values["losses_finite"] is True
