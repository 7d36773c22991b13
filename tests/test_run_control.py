"""Runs a user can watch and stop (issue 20, item 4): SIGINT/SIGTERM checkpoint then stop, the wall-clock checkpoint
cadence, the loss plot during training; every stop resumes bit-for-bit."""
import json, os, signal, subprocess, sys, time
from pathlib import Path

import pytest
import torch

from medsynth_nb import cli, engine
from medsynth_nb.engine import Run, train
from medsynth_nb.run_state import load_checkpoint, read_log

from test_engine import PY, ROOT, assert_identical, log_rows, sub_env

# the toy run, slowed to 50 ms a step so that a signal from outside lands mid-run (the weights do not change)
SLOW_TRAIN = r"""
import sys, time
from medsynth_nb import engine
real = engine.Run.train_step
def slow(self, step):
    real(self, step); time.sleep(0.05)
engine.Run.train_step = slow
from medsynth_nb.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _wait_rows(out: Path, n: int, proc, timeout=120):
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        log = out / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= n: return
        time.sleep(0.05)
    raise AssertionError("the run logged too few rows")


def test_sigterm_checkpoints_the_current_step_and_resume_is_exact(tmp_path):
    out, steps = tmp_path / "run", 60
    proc = subprocess.Popen([PY, "-c", SLOW_TRAIN, "train", "toy-regression", "--out", str(out), "--steps", str(steps),
                             "--no-progress"], env=sub_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        _wait_rows(out, 12, proc)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None: proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    ck = load_checkpoint(out)
    assert 12 <= ck["step"] < steps
    assert ck["step"] % 10, "a signal-time checkpoint expected, not only the ckpt_every=10 one"
    assert ck["step"] == max(r["step"] for r in read_log(out))        # the step the run stopped after
    assert (out / "losses.png").exists()
    assert cli.main(["train", "toy-regression", "--out", str(out), "--steps", str(steps), "--resume",
                     "--no-progress"]) == 0
    straight = train("toy-regression", "smoke", out=tmp_path / "straight", steps=steps, progress=False)
    assert_identical(load_checkpoint(straight.out), load_checkpoint(out))
    assert log_rows(straight.out) == log_rows(out)


def test_sigint_in_process_raises_keyboardinterrupt_after_a_checkpoint(tmp_path, monkeypatch):
    real = Run.train_step
    def interrupted(self, step):
        real(self, step)
        if step == 12: os.kill(os.getpid(), signal.SIGINT)
    monkeypatch.setattr(Run, "train_step", interrupted)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        train("toy-regression", "smoke", out=tmp_path / "run", steps=25, progress=False)
    assert signal.getsignal(signal.SIGINT) is before                  # the previous handler is back
    assert load_checkpoint(tmp_path / "run")["step"] == 13
    monkeypatch.setattr(Run, "train_step", real)
    resumed = train("toy-regression", "smoke", out=tmp_path / "run", steps=25, resume=True, progress=False)
    straight = train("toy-regression", "smoke", out=tmp_path / "straight", steps=25, progress=False)
    assert_identical(load_checkpoint(straight.out), load_checkpoint(resumed.out))


@pytest.mark.parametrize("minutes,expected", [(1e-9, [3, 4, 5, 6, 7]), (0.0, [7]), (60.0, [7])])
def test_wall_clock_cadence(tmp_path, minutes, expected):
    r = train("toy-regression", "smoke", out=tmp_path / "run", steps=7, ckpt_every=0, keep=5, ckpt_minutes=minutes,
              progress=False)
    assert sorted(int(p.stem.split("_")[1]) for p in (r.out / "checkpoints").glob("step_*.pt")) == expected


def test_wall_clock_checkpoint_resumes_bit_for_bit(tmp_path):
    kw = dict(ckpt_every=0, ckpt_minutes=1e-9, progress=False)
    straight = train("toy-regression", "smoke", out=tmp_path / "straight", steps=20, **kw)
    train("toy-regression", "smoke", out=tmp_path / "resumed", steps=20, **kw)
    ck = tmp_path / "resumed" / "checkpoints" / "step_00000018.pt"   # a clock-time one: as good as any
    (tmp_path / "part").mkdir()
    (tmp_path / "part" / "checkpoint.pt").write_bytes(ck.read_bytes())
    (tmp_path / "part" / "log.jsonl").write_text((tmp_path / "resumed" / "log.jsonl").read_text())
    resumed = train("toy-regression", "smoke", out=tmp_path / "part", steps=20, resume=True, **kw)
    assert_identical(load_checkpoint(straight.out), load_checkpoint(resumed.out))


@pytest.mark.parametrize("every,expected", [(5, [5, 10, 15, 20, 23]), (0, [23])])
def test_loss_plot_cadence(tmp_path, monkeypatch, every, expected):
    drawn, real = [], engine.write_loss_plot
    def spy(rows, path, title=None):
        drawn.append(rows[-1]["step"]); return real(rows, path, title)
    monkeypatch.setattr(engine, "write_loss_plot", spy)
    r = train("toy-regression", "smoke", out=tmp_path / "run", steps=23, plot_every=every, progress=False)
    assert drawn == expected
    assert (r.out / "losses.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("field,value,msg", [("ckpt_minutes", -1.0, "non-negative number of minutes"),
                                             ("ckpt_minutes", float("nan"), "ckpt_minutes"),
                                             ("plot_every", -1, "non-negative number of steps")])
def test_bad_cadence_values(field, value, msg):
    from medsynth_nb.config import TrainConfig
    with pytest.raises(ValueError, match=msg): TrainConfig(**{field: value})
