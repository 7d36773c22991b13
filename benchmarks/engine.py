"""Training-engine overhead: `engine.fit` against a bare PyTorch loop doing the same work, measured in one run.

Usage: python benchmarks/engine.py [--experiment lowdose-gan] [--preset demo] [--steps 40] [--repeats 5]
                                   [--log-every 10] [--ckpt-every 20] [--plot-every 100] [--threads 1] [--device cpu]
                                   [--profile]

Both sides get the same Task (built twice under `seeded(config.seed)`: the same initial weights), the same
micro-batches (a `DataStream` with the engine's seeds), the same loss generator, the same optimizers, EMA, schedulers
and step hooks, and the same number of steps. The bare loop is what one writes by hand: zero_grad, loss, backward,
optimizer step per phase repeat, then EMA, schedulers and hooks; no logging, no checkpoint, no progress bar. The
engine runs with logging and checkpointing on (log row every --log-every steps, a checkpoint every --ckpt-every steps
and at the end, losses.png every --plot-every steps and at the end), no progress bar. The two runs alternate (the
first of each pair switches), the medians over --repeats are compared (wall clock, and the process's CPU time,
which a shared CPU disturbs less), and the final weights of the two are checked
bit-identical (the same work was done). Model building is timed apart and excluded from both. The issue's target:
engine / bare <= 1.03. --profile adds a cProfile of one engine run: where the time above the bare loop goes.
"""
import argparse
import contextlib
import cProfile
import io
import pstats
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from medsynth_nb.config import get_experiment  # noqa: E402
from medsynth_nb.data import DataStream  # noqa: E402
from medsynth_nb.engine import Context, fit, resolve_amp  # noqa: E402
from medsynth_nb.run_state import EMA, forked_global_rng, seed_globals  # noqa: E402
from medsynth_nb.utils import derive_seed, get_device, make_generator, seeded  # noqa: E402


def build(exp, cfg):
    with seeded(cfg.seed): return exp.build(cfg)


def bare_loop(task, cfg, device: torch.device) -> dict:
    "The same training by hand (one process, fp32, grad_accum 1): returns the trained modules and the EMA copies."
    models = dict(task.models)
    for m in models.values(): m.to(device).train()
    emas = {k: EMA(models[k], cfg.ema, warmup=cfg.ema_warmup) for k in task.ema} if cfg.ema > 0 else {}
    with forked_global_rng(device):
        seed_globals(derive_seed(cfg.seed, 0, 0), device)
        loss_rng = make_generator(derive_seed(cfg.seed, 0, 1), device)
        stream = DataStream(task.data, cfg.batch_size, cfg.seed, 0, 1, device,
                            make_generator(derive_seed(cfg.seed, 0, 2), "cpu"), cfg.num_workers)
        ctx = Context(models, models, loss_rng, device, cfg, micro_batch=cfg.batch_size,
                      ema={k: e.module for k, e in emas.items()})
        for step in range(cfg.steps):
            ctx.step = step
            if task.before_step: task.before_step(ctx)
            for phase in task.phases:
                ctx.phase, opt = phase.name, task.optimizers[phase.optimizer]
                for _ in range(phase.repeats):
                    for m in models.values(): m.zero_grad(set_to_none=True)
                    out = phase.loss(stream.next(), ctx)
                    loss = out[0] if isinstance(out, tuple) else out
                    loss.backward()
                    opt.step()
            for k, e in emas.items(): e.update(models[k])
            for s in task.schedulers.values(): s.step()
            if task.after_step: task.after_step(ctx)
    return {**models, **{f"ema/{k}": e.module for k, e in emas.items()}}


def engine_run(task, cfg, device: torch.device, out: str, exp_name: str, preset: str) -> dict:
    res = fit(task, cfg, out, experiment=exp_name, preset=preset, device=device, progress=False)
    return {**res.models, **{f"ema/{k}": m for k, m in res.ema.items()}}


PARTS = {"Run.start (seed, config.json)": ("Run", "start"), "Run.log_step (log rows)": ("Run", "log_step"),
         "Run.checkpoint_step (torch.save)": ("Run", "checkpoint_step"),
         "Run.plot_step (losses.png)": ("Run", "plot_step"), "Run.finish": ("Run", "finish"),
         "_Meter.add (logged values, per update)": ("_Meter", "add")}


@contextlib.contextmanager
def timed_parts(totals: dict):
    "Time the engine's own steps (everything that is not the training itself) by wrapping them: seconds in `totals`."
    import medsynth_nb.engine as E
    saved = []
    for label, (cls, name) in PARTS.items():
        owner = getattr(E, cls); fn = getattr(owner, name)
        def wrapper(*args, _fn=fn, _label=label, **kw):
            t0 = time.perf_counter()
            try: return _fn(*args, **kw)
            finally: totals[_label] = totals.get(_label, 0.0) + time.perf_counter() - t0
        saved.append((owner, name, fn)); setattr(owner, name, wrapper)
    try: yield totals
    finally:
        for owner, name, fn in saved: setattr(owner, name, fn)


def same_weights(a: dict, b: dict) -> bool:
    return sorted(a) == sorted(b) and all(
        torch.equal(x, y) for k in a for x, y in zip(a[k].state_dict().values(), b[k].state_dict().values()))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", default="lowdose-gan")
    p.add_argument("--preset", default="demo")
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--ckpt-every", type=int, default=20)
    p.add_argument("--plot-every", type=int, default=100, help="losses.png cadence (the default of every preset)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: fairest on a shared CPU; 0: torch's)")
    p.add_argument("--device", default=None, help="default: $MEDSYNTH_DEVICE, else CUDA when present, else CPU")
    p.add_argument("--profile", action="store_true", help="cProfile one engine run (top functions by own time)")
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    dev = get_device(a.device)
    exp = get_experiment(a.experiment)
    cfg = exp.config(a.preset, steps=a.steps, log_every=a.log_every, ckpt_every=a.ckpt_every,
                     plot_every=a.plot_every)
    if cfg.grad_accum != 1 or resolve_amp(cfg.amp, dev) != "off":
        cfg = cfg.replace(grad_accum=1, amp="off")         # the bare loop is fp32 without accumulation
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    print(f"device {dev}, threads {torch.get_num_threads()}, {exp.name} '{a.preset}' at {cfg.steps} steps "
          f"(batch {cfg.batch_size}, phases " + ", ".join(f"{ph.name}x{ph.repeats}" for ph in build(exp, cfg).phases)
          + f"), engine: log every {cfg.log_every}, checkpoint every {cfg.ckpt_every} + end, plot every "
          f"{cfg.plot_every} + end; median of {a.repeats} interleaved pairs")

    times, cpu, builds, identical = {"bare": [], "engine": []}, {"bare": [], "engine": []}, [], []
    for r in range(a.repeats + 1):                          # pair 0 warms up (imports, allocator, matplotlib)
        order = ("bare", "engine") if r % 2 else ("engine", "bare")
        finals = {}
        for kind in order:
            t0 = time.perf_counter(); task = build(exp, cfg); builds.append(time.perf_counter() - t0)
            with tempfile.TemporaryDirectory(prefix="bench-engine-") as out:
                sync(); t0, c0 = time.perf_counter(), time.process_time()
                finals[kind] = (bare_loop(task, cfg, dev) if kind == "bare"
                                else engine_run(task, cfg, dev, out, exp.name, a.preset))
                sync(); dt, dc = time.perf_counter() - t0, time.process_time() - c0
            if r: times[kind].append(dt); cpu[kind].append(dc)
        identical.append(same_weights(finals["bare"], finals["engine"]))
    med = {k: statistics.median(v) for k, v in times.items()}
    mcpu = {k: statistics.median(v) for k, v in cpu.items()}
    pairs = [e / b for e, b in zip(times["engine"], times["bare"])]
    for k in ("bare", "engine"):
        print(f"  {k:7s} wall {med[k]:8.3f} s ({1e3 * med[k] / cfg.steps:.1f} ms/step; runs: "
              + ", ".join(f"{t:.2f}" for t in times[k]) + f"), CPU time {mcpu[k]:.3f} s")
    print(f"  model build (excluded): median {statistics.median(builds):.2f} s")
    print(f"final weights identical (same work done): {'yes' if all(identical) else 'NO'} ({sum(identical)} of "
          f"{len(identical)} pairs)")
    print(f"engine overhead: {1e3 * (med['engine'] - med['bare']) / cfg.steps:+.2f} ms/step, "
          f"{med['engine'] - med['bare']:+.3f} s per run")
    print(f"RATIO engine / bare: {med['engine'] / med['bare']:.3f} wall "
          f"(median of pairs {statistics.median(pairs):.3f}), "
          f"{mcpu['engine'] / mcpu['bare']:.3f} CPU time (target <= 1.03)")

    totals = {}
    with timed_parts(totals), tempfile.TemporaryDirectory(prefix="bench-engine-") as out:
        task = build(exp, cfg); sync(); t0 = time.perf_counter()
        engine_run(task, cfg, dev, out, exp.name, a.preset); sync(); whole = time.perf_counter() - t0
    own = sum(totals.values())
    print(f"where the engine's own time goes (one more engine run, {whole:.2f} s, its parts wrapped and timed):")
    for label in PARTS:
        t = totals.get(label, 0.0)
        print(f"  {label:42s} {t:7.3f} s  {1e3 * t / cfg.steps:6.2f} ms/step  {100 * t / med['bare']:5.1f} % of bare")
    print(f"RATIO (bare + engine's own parts) / bare: {(med['bare'] + own) / med['bare']:.3f} "
          "(less noisy than the wall-clock ratio on a shared machine)")

    if a.profile:
        task = build(exp, cfg)
        prof = cProfile.Profile()
        with tempfile.TemporaryDirectory(prefix="bench-engine-") as out:
            prof.enable(); engine_run(task, cfg, dev, out, exp.name, a.preset); prof.disable()
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(
            r"engine\.py|run_state\.py|data\.py|matplotlib|torch/serialization|tqdm", 25)
        print("\ncProfile of one engine run (cumulative time, engine/run_state/data/matplotlib/torch.save lines):")
        print("\n".join(s.getvalue().splitlines()[:60]))
    return med["engine"] / med["bare"]


if __name__ == "__main__":
    main()
