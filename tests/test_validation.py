"""Validation while training (engine.validate_step): the hook's numbers in the log, its images in DIR/samples, DIR/best.pt
at the best step in the asked direction, the best kept across a resume, EMA weights in eval mode, no effect on the
training itself, and optional TensorBoard events."""
import json, sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from medsynth_nb.config import TrainConfig, supervised
from medsynth_nb.engine import fit
from medsynth_nb.run_state import load_checkpoint, read_log
from medsynth_nb.utils import seeded

XS = torch.tensor([[-1.0], [0.0], [1.0], [2.0]])
PAIRS = torch.utils.data.TensorDataset(XS, 2 * XS - 1)
HELD = torch.tensor([[-2.0], [0.5], [3.0]])


def line_task(validate=None, best="", dropout=0.0, **kw):
    with seeded(0): net = nn.Sequential(nn.Linear(1, 8), nn.Dropout(dropout), nn.Linear(8, 1))
    return supervised(net, torch.optim.SGD(net.parameters(), lr=0.05), PAIRS,
                      lambda b, ctx: F.mse_loss(ctx.models.model(b[0]), b[1]), validate=validate, best=best, **kw)


def held_mse(ctx):
    pred = ctx.models.model(HELD)
    return {"mse": F.mse_loss(pred, 2 * HELD - 1), "pred": pred.reshape(1, 1, 3)}


def bump(at):
    "A made-up metric that is smallest at step `at` (and largest far from it)."
    return lambda ctx: {"dist": float(abs(ctx.step - at))}


def test_metrics_logged_samples_drawn_best_is_the_minimum(tmp_path):
    res = fit(line_task(held_mse, best="val/mse"), TrainConfig(steps=30, batch_size=4, log_every=7, val_every=10),
              tmp_path / "r", progress=False)
    rows = read_log(res.out)
    val = [r for r in rows if "val/mse" in r]
    assert [r["step"] for r in val] == [10, 20, 30]
    assert [r["step"] for r in rows] == [7, 10, 14, 20, 21, 28, 30]   # validation steps write rows off the cadence
    # the logged value is the held-out error of the weights at that step (recomputed from the step checkpoint)
    last = load_checkpoint(res.out)
    net = line_task().models["model"]; net.load_state_dict(last["models"]["model"]); net.eval()
    assert val[-1]["val/mse"] == pytest.approx(F.mse_loss(net(HELD), 2 * HELD - 1).item(), rel=1e-6)
    best_step = min(val, key=lambda r: r["val/mse"])["step"]
    info = json.loads((res.out / "best.json").read_text())
    assert (info["metric"], info["step"], info["higher"]) == ("val/mse", best_step, False)
    assert load_checkpoint(res.out / "best.pt")["step"] == best_step
    assert sorted(p.name for p in (res.out / "samples").iterdir()) == [f"step_{s:08d}.png" for s in (10, 20, 30)]
    png = (res.out / "losses.png").read_bytes()            # the val/ curves get a second panel: a wider figure
    assert int.from_bytes(png[16:20], "big") == 1050


@pytest.mark.parametrize("spec, want", [("val/dist", 20), ("+val/dist", 5)])
def test_best_follows_the_metric_in_the_asked_direction(tmp_path, spec, want):
    res = fit(line_task(bump(20)), TrainConfig(steps=30, batch_size=4, val_every=5, best_metric=spec),
              tmp_path / "r", progress=False)
    ck = load_checkpoint(res.out / "best.pt")
    assert ck["step"] == want and ck["best"]["step"] == want
    assert ck["best"]["value"] == abs(want - 20)
    # best.pt is a whole checkpoint of that step: its weights equal the step checkpoint's when one was kept there
    if want == 20:
        step20 = torch.load(res.out / "checkpoints" / "step_00000020.pt", weights_only=True) \
            if (res.out / "checkpoints" / "step_00000020.pt").exists() else None
        assert step20 is None or torch.equal(step20["models"]["model"]["0.weight"], ck["models"]["model"]["0.weight"])


def test_best_survives_a_resume(tmp_path):
    out = tmp_path / "r"
    # the metric is best at step 10; the first run stops at 15 (checkpointed), the resumed run goes on to 40
    fit(line_task(bump(10), best="val/dist"), TrainConfig(steps=15, batch_size=4, val_every=5), out, progress=False)
    assert load_checkpoint(out / "best.pt")["step"] == 10
    res = fit(line_task(bump(10), best="val/dist"), TrainConfig(steps=40, batch_size=4, val_every=5), out, resume=True, progress=False)
    assert load_checkpoint(res.out / "best.pt")["step"] == 10     # not overwritten by a worse step after the resume
    assert load_checkpoint(res.out)["best"] == {"metric": "val/dist", "higher": False, "value": 0.0, "step": 10}


def test_validation_does_not_change_training(tmp_path):
    "A hook that draws random numbers (global RNG and ctx.rng) and runs dropout nets: the trained weights are bit-identical."
    def noisy(ctx):
        torch.rand(3); torch.rand(2, generator=ctx.rng)
        return {"loss": ctx.models.model(HELD).sum()}
    a = fit(line_task(dropout=0.3), TrainConfig(steps=12, batch_size=2, seed=3), tmp_path / "a", progress=False)
    b = fit(line_task(noisy, dropout=0.3), TrainConfig(steps=12, batch_size=2, seed=3, val_every=3), tmp_path / "b",
            progress=False)
    for k, v in a.models["model"].state_dict().items(): assert torch.equal(v, b.models["model"].state_dict()[k]), k


def test_hook_sees_ema_weights_in_eval_mode_and_the_same_generator(tmp_path):
    seen = []
    def spy(ctx):
        m = ctx.models.model
        seen.append((m.training, [p.detach().clone() for p in m.parameters()], torch.rand(2, generator=ctx.rng)))
        return {"x": 0.0}
    res = fit(line_task(spy, dropout=0.3), TrainConfig(steps=6, batch_size=2, ema=0.9, val_every=3), tmp_path / "r",
              progress=False)
    assert [s[0] for s in seen] == [False, False]
    ema = [p.detach() for p in res.ema["model"].parameters()]
    raw = [p.detach() for p in res.models["model"].parameters()]
    assert all(torch.equal(a, b) for a, b in zip(seen[-1][1], ema))          # the EMA copy, not the raw weights
    assert not all(torch.equal(a, b) for a, b in zip(ema, raw))
    assert torch.equal(seen[0][2], seen[1][2])                                 # same random numbers at every call
    assert res.models["model"].training                                        # training mode is given back


def test_no_validation_without_a_hook_and_only_at_the_end_by_default(tmp_path):
    calls = []
    fit(line_task(lambda ctx: calls.append(ctx.step) or {"x": 1.0}), TrainConfig(steps=8, batch_size=4), tmp_path / "a",
        progress=False)
    assert calls == [8]
    res = fit(line_task(), TrainConfig(steps=3, batch_size=4, val_every=1), tmp_path / "b", progress=False)
    assert not (res.out / "best.pt").exists() and not (res.out / "samples").exists()


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    res = fit(line_task(held_mse), TrainConfig(steps=10, batch_size=4, log_every=5, val_every=5), tmp_path / "r",
              progress=False)
    acc = EventAccumulator(str(res.out / "tensorboard"), size_guidance={"images": 0}); acc.Reload()
    rows = {r["step"]: r for r in read_log(res.out)}
    got = {e.step: e.value for e in acc.Scalars("val/mse")}
    assert sorted(got) == [5, 10]
    for step, v in got.items(): assert v == pytest.approx(rows[step]["val/mse"], rel=1e-6)
    assert [e.step for e in acc.Scalars("train/loss")] == [5, 10]
    assert [e.step for e in acc.Images("samples/pred")] == [5, 10]


def test_runs_without_tensorboard(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # as if the package were not installed
    res = fit(line_task(held_mse), TrainConfig(steps=4, batch_size=4, val_every=2), tmp_path / "r", progress=False)
    assert not (res.out / "tensorboard").exists()
    assert [r["step"] for r in read_log(res.out) if "val/mse" in r] == [2, 4]


def test_tensorboard_off(tmp_path):
    res = fit(line_task(), TrainConfig(steps=2, batch_size=4, tensorboard=False), tmp_path / "r", progress=False)
    assert not (res.out / "tensorboard").exists()


def test_hook_runs_the_raw_model_in_eval_mode_without_ema(tmp_path):
    modes = []
    res = fit(line_task(lambda ctx: modes.append(ctx.models.model.training) or {"x": 0.0}, dropout=0.3),
              TrainConfig(steps=4, batch_size=2, val_every=2), tmp_path / "r", progress=False)
    assert modes == [False, False] and res.models["model"].training
