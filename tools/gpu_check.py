"""GPU readiness check (issue 21): one script that tells, on one GPU in a few minutes, whether every part of the
project that needs a GPU is ready for it, and writes the answer as a markdown table.

    bash tools/gpu_check.sh --out gpu_check.md                # on a GPU machine: about 8 minutes on one GPU
    bash tools/gpu_check.sh --dry-run --out /tmp/gpu_check.md # the same code paths on the CPU, smoke sizes, < 2 min

Sections (each row passes or says why it failed; one failure never stops the others; the exit status is 1 when any
row failed, 2 for bad arguments):
1. training: every registered experiment's `paper` preset (dry run: `smoke`) for `--steps` steps or until
   `--budget-s` seconds of training passed (less when earlier rows ran long: the whole check keeps within
   `--max-minutes`, default 8), with the config's mixed precision (`amp='auto'` is bf16 on CUDA; a preset that fixes
   `amp='off'` keeps it), logging and checkpointing on: steps/s after `--warmup` steps, peak CUDA memory, every
   logged loss finite, the checkpoint readable. A run out of time is stopped the way Ctrl-C stops one (SIGINT: the
   engine finishes the step, checkpoints it, then stops). By default the number of simulated training subjects is
   capped at `--data-cap` (building 210 simulated subjects takes minutes on the CPU and says nothing about the GPU);
   networks, crops and batch sizes are the paper's. `--full-data` keeps the preset's data.
2. resume: every experiment trained `--resume-steps` N steps in one go, and N/2 steps, then resumed to N in a
   fresh build (as a new process would): every parameter, buffer and EMA weight must be bit-identical. On CUDA this
   runs with `torch.use_deterministic_algorithms(True, warn_only=True)` (and CUBLAS_WORKSPACE_CONFIG from the
   wrapper); a row that differs names the non-deterministic operations PyTorch warned about.
3. lessons: every `#| gpu` cell of nbs/ is listed and checked without running it (each trains or evaluates a paper
   preset for hours): it compiles, the notebook's imports and definitions (imports, `def`s, classes: executed) provide
   every name it reads, and every call of a library function binds to that function's current signature.
4. benchmarks: benchmarks/kspace.py and benchmarks/recon.py with `--device`, benchmarks/ddpm.py with
   $MEDSYNTH_DEVICE (it has no device argument; DDIM-50 vs ancestral), and the NP loss (benchmarks/wasserstein.py
   is CPU-only: numpy's sort) timed here, forward + backward, on the device, and benchmarks/engine.py with `--device`
   (the engine's overhead over a bare loop, lowdose-gan `demo` at 200 steps: issue 21's target 4, <= 3 %).

Nothing here calls `.cuda()`: every tensor and model goes to `--device`. `--break EXPERIMENT` (or
$MEDSYNTH_GPU_CHECK_BREAK, comma-separated) makes that experiment's losses NaN, to see a failing row and the exit
status (tests/test_gpu_check.py)."""
from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import json
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")   # deterministic cuBLAS (read when CUDA starts)
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

BREAK_ENV = "MEDSYNTH_GPU_CHECK_BREAK"
DATA_FIELDS = ("n_subjects", "subjects", "train_subjects", "input_subjects", "target_subjects", "label_subjects")


@dataclass
class Row:
    "One line of the report: what was checked, its measured values, and why it failed (empty when it passed)."
    section: str
    name: str
    values: dict = field(default_factory=dict)
    why: str = ""

    @property
    def ok(self) -> bool: return not self.why


def _fail_reason(e: BaseException) -> str:
    "The exception as one line: type, message and the innermost frame of the project's code."
    msg = " ".join(str(e).split())[:300]
    tb = [f for f in traceback.extract_tb(e.__traceback__) if "medsynth_nb" in f.filename or "tools" in f.filename]
    where = f" (at {Path(tb[-1].filename).name}:{tb[-1].lineno})" if tb else ""
    return f"{type(e).__name__}: {msg}{where}"


def _sync(device: torch.device):
    if device.type == "cuda": torch.cuda.synchronize(device)


# ------------------------------------------------------------------ 1. training: steps/s, memory, finite losses
def _nan_losses(task):
    "Make every phase's loss NaN (the `--break` option): the engine then refuses the first log row."
    for ph in task.phases:
        def broken(batch, ctx, _loss=ph.loss):
            res = _loss(batch, ctx)
            loss, metrics = res if isinstance(res, tuple) else (res, {})
            return loss * float("nan"), metrics
        ph.loss = broken


def build_task(exp, cfg, broken: bool):
    "The experiment's Task built exactly as `engine.train` builds it (under `seeded(config.seed)`)."
    from medsynth_nb.utils import seeded
    with seeded(cfg.seed): task = exp.build(cfg)
    if broken: _nan_losses(task)
    return task


def capped_config(exp, preset: str, cap: int | None, **overrides):
    "The preset's config with the numbers of simulated subjects capped at `cap` (kept when the cap is invalid)."
    cfg = exp.config(preset, **overrides)
    if not cap: return cfg, {}
    small = {k: min(getattr(cfg, k), cap) for k in DATA_FIELDS if hasattr(cfg, k) and getattr(cfg, k) > cap}
    if not small: return cfg, {}
    try: return exp.config(preset, **overrides, **small), small
    except (ValueError, TypeError): return cfg, {}


def check_training(exp, preset: str, device: torch.device, steps: int, budget_s: float, warmup: int,
                   cap: int | None, broken: bool, amp: str | None = None) -> Row:
    "Train `exp`'s `preset` on `device`: steps/s after `warmup` steps, peak CUDA memory, all logged losses finite."
    from medsynth_nb.engine import fit, resolve_amp
    from medsynth_nb.run_state import load_checkpoint, read_log
    row = Row("training", exp.name)
    try:
        cfg0 = exp.config(preset)
        over = dict(steps=steps, log_every=min(cfg0.log_every, 10), ckpt_every=max(1, steps // 2), plot_every=0)
        if amp and cfg0.amp == "auto": over["amp"] = amp
        t_build = time.perf_counter()
        while True:   # the cap doubles until the capped data fill one micro-batch (lip-car: 4 slices per subject)
            cfg, small = capped_config(exp, preset, cap, **over)
            task = build_task(exp, cfg, broken)
            n = len(task.data) if hasattr(task.data, "__len__") else None
            if not small or n is None or n >= cfg.batch_size // cfg.grad_accum: break
            cap *= 2
        row.values.update(preset=preset, amp=resolve_amp(cfg.amp, device),
                          data=", ".join(f"{k}={v}" for k, v in small.items()) or "preset's")
        if device.type == "cuda": torch.cuda.reset_peak_memory_stats(device)
        row.values["build_s"] = round(time.perf_counter() - t_build, 1)
        marks = {}
        user_hook = task.after_step
        def timing(ctx):
            out = user_hook(ctx) if user_hook else None
            done = ctx.step + 1
            if done == warmup or done == 1:
                _sync(device); marks[done] = time.perf_counter()
            late = budget_s and done > 1 and time.perf_counter() - marks[1] > budget_s and done < cfg.steps
            if late and "budget" not in marks:   # stop as Ctrl-C does: the engine checkpoints this step, then stops
                _sync(device); marks["end"], marks["done"], marks["budget"] = time.perf_counter(), done, True
                signal.raise_signal(signal.SIGINT)
            return out
        task.after_step = timing
        with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
            try:
                res = fit(task, cfg, out, experiment=exp.name, preset=preset, device=device, progress=False)
                _sync(device); marks["end"], marks["done"] = time.perf_counter(), res.step
            except KeyboardInterrupt:
                if "budget" not in marks: raise            # a real Ctrl-C stops the whole check
            done = marks["done"]
            rows = read_log(out)
            row.values["checkpoint"] = f"step {load_checkpoint(out)['step']}"
            ran_on = json.loads((Path(out) / "config.json").read_text()).get("device")
        start = warmup if warmup in marks and done > warmup else 1
        rate = round((done - start) / (marks["end"] - marks[start]), 3) if done > start else None
        row.values.update(steps=done, device=ran_on, steps_per_s=rate)
        if device.type == "cuda":
            row.values["peak_mem_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        losses = [(r["step"], k, v) for r in rows for k, v in r.items() if k.endswith("/loss")]
        bad = [(s, k, v) for s, k, v in losses if not math.isfinite(v)]
        row.values["losses_finite"] = not bad and bool(losses)
        if done < cfg.steps: row.values["note"] = f"stopped after {done} of {cfg.steps} steps ({budget_s:.0f} s budget)"
        if not losses: row.why = "no loss was logged"
        elif bad: row.why = f"{bad[0][1]} = {bad[0][2]} at step {bad[0][0]}"
        if rows: row.values["last_loss"] = {k: round(v, 4) for k, v in rows[-1].items() if k.endswith("/loss")}
    except Exception as e:
        row.why = _fail_reason(e)
    finally:
        if device.type == "cuda": torch.cuda.empty_cache()
    return row


# ------------------------------------------------------------------ 2. resume bit-for-bit
@contextlib.contextmanager
def deterministic(device: torch.device):
    "Deterministic kernels on CUDA (warn_only: the warnings name the operations that have none); nothing on CPU."
    if device.type != "cuda":
        yield []
        return
    old = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
           torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield caught
    finally:
        torch.use_deterministic_algorithms(old[0], warn_only=old[1])
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = old[2], old[3]


def compare_states(a: dict, b: dict) -> str:
    "'' when the two {name: module} dicts hold bit-identical tensors, else the first difference."
    if sorted(a) != sorted(b): return f"different modules: {sorted(a)} vs {sorted(b)}"
    for k in sorted(a):
        sa, sb = a[k].state_dict(), b[k].state_dict()
        for n in sa:
            x, y = sa[n].detach().cpu(), sb[n].detach().cpu()
            if x.shape != y.shape or x.dtype != y.dtype or not torch.equal(x, y):
                diff = (x.double() - y.double()).abs().max().item() if x.shape == y.shape else float("nan")
                return f"{k}.{n} differs (max |diff| {diff:.3g})"
    return ""


def check_resume(exp, preset: str, device: torch.device, n: int, cap: int | None, broken: bool) -> Row:
    "N steps in one go vs N/2 steps, then a fresh build resumed to N: parameters, buffers and EMA bit-identical."
    from medsynth_nb.engine import fit, resolve_amp
    from medsynth_nb.run_state import read_log
    row = Row("resume", exp.name)
    try:
        over = dict(log_every=1, ckpt_every=0, plot_every=0)
        cfg, small = capped_config(exp, preset, cap, steps=n, **over)
        half = cfg.replace(steps=n // 2)
        row.values.update(preset=preset, steps=f"{n} vs {n // 2}+{n - n // 2}", amp=resolve_amp(cfg.amp, device))
        kw = dict(experiment=exp.name, preset=preset, device=device, progress=False)
        with deterministic(device) as caught, tempfile.TemporaryDirectory(prefix="gpu-check-resume-") as d:
            straight = fit(build_task(exp, cfg, broken), cfg, Path(d) / "straight", **kw)
            fit(build_task(exp, half, broken), half, Path(d) / "resumed", **kw)
            resumed = fit(build_task(exp, cfg, broken), cfg, Path(d) / "resumed", resume=True, **kw)
            strip = lambda rows: [{k: v for k, v in r.items() if k != "time_s"} for r in rows]
            same_log = strip(read_log(Path(d) / "straight")) == strip(read_log(Path(d) / "resumed"))
        diff = compare_states(straight.models, resumed.models) or compare_states(straight.ema, resumed.ema)
        row.values["bit_exact"] = not diff and same_log
        if diff or not same_log:
            ops = sorted({str(w.message).split(" does not have a deterministic")[0] for w in caught
                          if "deterministic" in str(w.message)})
            row.why = (diff or "the log rows differ") + (f"; non-deterministic ops: {', '.join(ops)}" if ops else "")
    except Exception as e:
        row.why = _fail_reason(e)
    return row


# ------------------------------------------------------------------ 3. lessons' `#| gpu` cells
def _directives(src: str) -> list[str]:
    from tools.lessons import directives
    return directives(src)


def _strip_magics(src: str) -> str:
    return "\n".join("" if l.lstrip().startswith(("%", "!")) else l for l in src.splitlines())


_DEFINITIONS = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def _placeholder_call(call: ast.Call):
    "(n positional, keyword names) of a call, or None when it unpacks *args/**kwargs (cannot be bound statically)."
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords): return None
    return len(call.args), [k.arg for k in call.keywords]


def check_gpu_cells(nb_path: Path) -> list[Row]:
    """The notebook's `#| gpu` cells, each checked without running it: it compiles, every name it reads comes from
    the notebook (imports, definitions, earlier cells) and every call of an imported function binds to its signature."""
    import builtins
    import inspect
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    cells = [(i, "".join(c["source"])) for i, c in enumerate(nb["cells"]) if c["cell_type"] == "code"]
    gpu = [(i, s) for i, s in cells if "gpu" in _directives(s)]
    if not gpu: return []
    ns: dict = {"__name__": "__gpu_check__"}
    assigned: set[str] = set()                  # names any earlier cell binds (values not computed here)
    setup_error = ""
    cwd = os.getcwd()
    os.chdir(nb_path.parent)                    # the notebooks run in nbs/ (relative paths)
    try:
        rows = []
        for i, src in cells:
            flags = _directives(src)
            try: tree = ast.parse(_strip_magics(src))
            except SyntaxError as e:
                if "gpu" in flags: rows.append(Row("lessons", f"{nb_path.name} cell {i}", why=f"SyntaxError: {e}"))
                continue
            if "gpu" in flags:
                rows.append(_check_cell(nb_path, i, tree, ns, assigned, setup_error, builtins, inspect))
            if "eval:false" in flags: continue
            for node in tree.body:
                for t in ast.walk(node):
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store): assigned.add(t.id)
                    if isinstance(t, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef)): assigned.add(t.name)
                    if isinstance(t, (ast.Import, ast.ImportFrom)):
                        assigned.update((a.asname or a.name).split(".")[0] for a in t.names)
                if "gpu" not in flags and isinstance(node, _DEFINITIONS):
                    try: exec(compile(ast.Module([node], []), f"{nb_path.name}[{i}]", "exec"), ns)
                    except Exception as e: setup_error = setup_error or f"cell {i}: {_fail_reason(e)}"
        return rows
    finally:
        os.chdir(cwd)


def _check_cell(nb_path, i, tree, ns, assigned, setup_error, builtins, inspect) -> Row:
    row = Row("lessons", f"{nb_path.name} cell {i}")
    local = set()
    for t in ast.walk(tree):
        if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store): local.add(t.id)
        if isinstance(t, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef, ast.Lambda)):
            args = t.args if not isinstance(t, ast.ClassDef) else None
            if args: local.update(a.arg for a in args.args + args.kwonlyargs + args.posonlyargs)
            if not isinstance(t, ast.Lambda): local.add(t.name)
        if isinstance(t, (ast.Import, ast.ImportFrom)):
            local.update((a.asname or a.name).split(".")[0] for a in t.names)
        if isinstance(t, ast.comprehension):
            for n in ast.walk(t.target):
                if isinstance(n, ast.Name): local.add(n.id)
    read = sorted({t.id for t in ast.walk(tree) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Load)})
    unknown = [n for n in read if n not in ns and n not in assigned and n not in local and not hasattr(builtins, n)]
    calls, bad_calls = [], []
    for t in ast.walk(tree):
        if not (isinstance(t, ast.Call) and isinstance(t.func, ast.Name) and t.func.id in ns): continue
        fn = ns[t.func.id]
        if not callable(fn) or getattr(fn, "__module__", "") in ("builtins", None): continue
        calls.append(t.func.id)
        spec = _placeholder_call(t)
        if spec is None: continue
        try: sig = inspect.signature(fn)
        except (TypeError, ValueError): continue
        try: sig.bind(*range(spec[0]), **{k: None for k in spec[1]})
        except TypeError as e: bad_calls.append(f"{t.func.id}(): {e}")
    row.values.update(calls=", ".join(sorted(set(calls))) or "—", run="no (paper preset: hours)")
    whys = []
    if unknown: whys.append(f"names not defined by the notebook: {', '.join(unknown)}")
    if bad_calls: whys.append("; ".join(bad_calls))
    if setup_error and (unknown or bad_calls): whys.append(f"(setup: {setup_error})")
    row.why = " ".join(whys)
    return row


# ------------------------------------------------------------------ 4. benchmarks on the device
def _run_script(args: Sequence[str], env: dict, timeout: int) -> tuple[int, str]:
    p = subprocess.run([sys.executable, *args], cwd=ROOT, env={**os.environ, **env}, capture_output=True,
                       text=True, timeout=timeout)
    return p.returncode, (p.stdout + p.stderr)


def _script_row(name: str, args: Sequence[str], env: dict, keep: Callable[[str], bool], timeout: int) -> Row:
    row = Row("benchmarks", name)
    try:
        rc, out = _run_script(args, env, timeout)
        lines = [" ".join(l.split()) for l in out.splitlines() if l.strip()]
        kept = [l.strip("| ").replace(" | ", ": ", 1).replace(" | ", " s/slice (paper ") + ")" if l.startswith("|")
                else l for l in lines if keep(l)]
        row.values["result"] = " / ".join(kept) or (lines[-1] if lines else "")
        if rc != 0: row.why = f"exit status {rc}: {lines[-1] if lines else 'no output'}"
    except subprocess.TimeoutExpired: row.why = f"did not finish within {timeout} s"
    except Exception as e: row.why = _fail_reason(e)
    return row


def np_loss_row(device: torch.device, dry: bool, repeats: int) -> Row:
    "Forward + backward of the NP loss (exact W1 between paired patches) on the device: median ms."
    from medsynth_nb.utils import make_generator
    from medsynth_nb.wasserstein import wasserstein_patch_loss
    shape, n = ((2, 1, 32, 32), 8) if dry else ((8, 1, 256, 256), 8)
    row = Row("benchmarks", f"NP loss fwd+bwd {tuple(shape)}, n={n}")
    try:
        g = make_generator(0, "cpu")
        pred = torch.rand(shape, generator=g).to(device).requires_grad_(True)
        tgt = torch.rand(shape, generator=g).to(device)
        l1 = lambda: (pred - tgt).abs().mean()
        np_ = lambda: wasserstein_patch_loss(pred, tgt, n)
        times = {"np": [], "l1": []}
        for k in range(repeats + 2):
            for name, f in (("np", np_), ("l1", l1)):
                pred.grad = None
                _sync(device); t0 = time.perf_counter()
                loss = f(); loss.backward()
                _sync(device)
                if k >= 2: times[name].append(1e3 * (time.perf_counter() - t0))
        if not math.isfinite(loss.item()) or pred.grad is None: raise FloatingPointError("loss or gradient missing")
        med = {k: statistics.median(v) for k, v in times.items()}
        row.values["result"] = f"NP {med['np']:.2f} ms, l1 {med['l1']:.2f} ms, NP/l1 {med['np'] / med['l1']:.1f}x"
    except Exception as e: row.why = _fail_reason(e)
    return row


def benchmark_rows(device: torch.device, dry: bool, timeout: int) -> list[Row]:
    dev = str(device)
    one = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    if dry:
        ks = ["benchmarks/kspace.py", "--device", dev, "--repeats", "2", "--size", "64", "64", "--coils", "2"]
        rc = ["benchmarks/recon.py", "--device", dev, "--shape", "32", "32", "--coils", "2", "--features", "4",
              "--slices", "1", "--repeats", "1", "--cs", "fista"]
        dd = ["benchmarks/ddpm.py", "--batch", "1", "--size", "16", "--ancestral-steps-timed", "2"]
        en = ["benchmarks/engine.py", "--device", dev, "--experiment", "toy-regression", "--preset", "smoke",
              "--steps", "6", "--log-every", "2", "--ckpt-every", "3", "--repeats", "1"]
    else:
        ks = ["benchmarks/kspace.py", "--device", dev, "--repeats", "30"]
        rc = ["benchmarks/recon.py", "--device", dev, "--repeats", "3", "--cs", "fista"]
        dd = ["benchmarks/ddpm.py", "--threads", "0"]
        en = ["benchmarks/engine.py", "--device", dev, "--steps", "200", "--log-every", "10", "--ckpt-every", "100",
              "--repeats", "3", "--threads", "0"]
    return [
        _script_row("benchmarks/kspace.py --device", ks, one, lambda l: l.startswith(("speed-up", "device")), timeout),
        _script_row("benchmarks/recon.py --device (unrolled reconstruction)", rc, one,
                    lambda l: l.startswith(("| unrolled", "| plain", "ratios")), timeout),
        _script_row("benchmarks/ddpm.py ($MEDSYNTH_DEVICE): DDIM sampling", dd, {**one, "MEDSYNTH_DEVICE": dev},
                    lambda l: l.startswith(("DDIM-50", "RATIO ancestral", "device")), timeout),
        np_loss_row(device, dry, 3 if dry else 20),
        _script_row("benchmarks/engine.py --device: engine vs bare loop (fp32)", en, one,
                    lambda l: l.startswith(("RATIO", "Run.plot_step", "final weights")),
                    timeout if dry else max(timeout, 300)),   # 2 x 3 runs of 200 demo steps: 90 s was too short on an H200
    ]


# ------------------------------------------------------------------ the report
def _cell(v) -> str:
    if v is None: return "—"
    if isinstance(v, bool): return "yes" if v else "**no**"
    if isinstance(v, dict): return ", ".join(f"{k}={x}" for k, x in v.items()) or "—"
    return str(v).replace("|", "\\|")


def render(rows: list[Row], header: dict) -> str:
    "The report: a header (device, torch, date, mode) and one table per section, every failed row saying why."
    out = ["# GPU readiness check", ""]
    out += [f"- **{k}**: {v}" for k, v in header.items()]
    n_bad = sum(not r.ok for r in rows)
    failed = f", **{n_bad} failed**" if n_bad else ""
    out += [f"- **result**: {len(rows) - n_bad} of {len(rows)} rows passed{failed}", ""]
    for section in dict.fromkeys(r.section for r in rows):
        rs = [r for r in rows if r.section == section]
        cols = list(dict.fromkeys(k for r in rs for k in r.values))
        out += [f"## {section}", "", "| " + " | ".join(["name", "status", *cols]) + " |",
                "|" + "---|" * (len(cols) + 2)]
        for r in rs:
            status = "ok" if r.ok else f"FAILED: {_cell(r.why)}"
            out.append("| " + " | ".join([r.name, status, *(_cell(r.values.get(c)) for c in cols)]) + " |")
        out.append("")
    return "\n".join(out)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        return f"{device} ({p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda})"
    return f"{device} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def parse_args(argv):
    p = argparse.ArgumentParser(prog="tools/gpu_check.sh", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="gpu_check.md", help="markdown report to write")
    p.add_argument("--dry-run", action="store_true", help="CPU, smoke presets, tiny step counts (< 2 minutes)")
    p.add_argument("--device", default=None, help="device to check (default: cuda; --dry-run: cpu)")
    p.add_argument("--preset", default=None, help="training preset (default: paper; --dry-run: smoke)")
    p.add_argument("--steps", type=int, default=None, help="training steps per experiment (default 300; dry: 4)")
    p.add_argument("--budget-s", type=float, default=None, help="training seconds per experiment at most (default 15)")
    p.add_argument("--warmup", type=int, default=None, help="steps left out of steps/s (default 10; dry: 1)")
    p.add_argument("--data-cap", type=int, default=2, help="simulated training subjects at most (default 2)")
    p.add_argument("--full-data", action="store_true", help="keep the preset's numbers of subjects")
    p.add_argument("--amp", default=None, choices=("bf16", "fp16", "off"),
                   help="precision where the config leaves it 'auto' (default: the config's)")
    p.add_argument("--resume-preset", default=None, help="preset of the resume check (default: demo; dry: smoke)")
    p.add_argument("--resume-steps", type=int, default=None, help="N of the resume check (default 20; dry: 4)")
    p.add_argument("--experiments", nargs="*", default=None, help="only these experiments (default: all)")
    p.add_argument("--skip", nargs="*", default=[], choices=("training", "resume", "lessons", "benchmarks"))
    p.add_argument("--break", dest="broken", nargs="*", default=None, metavar="EXPERIMENT",
                   help=f"make these experiments' losses NaN (also ${BREAK_ENV}, comma-separated)")
    p.add_argument("--bench-timeout", type=int, default=None, help="seconds per benchmark script (default 90)")
    p.add_argument("--max-minutes", type=float, default=8.0,
                   help="the whole check's time: training gets 55 %%, resume up to 85 %%, then lessons and benchmarks; "
                        "rows past their share are reported as not run (0: no limit)")
    a = p.parse_args(argv)
    dry = a.dry_run
    a.device = torch.device(a.device or ("cpu" if dry else "cuda"))
    a.preset = a.preset or ("smoke" if dry else "paper")
    a.steps = a.steps or (4 if dry else 300)
    a.budget_s = a.budget_s if a.budget_s is not None else (0 if dry else 15.0)
    a.warmup = a.warmup if a.warmup is not None else (1 if dry else 10)
    a.resume_preset = a.resume_preset or ("smoke" if dry else "demo")
    a.resume_steps = a.resume_steps or (4 if dry else 20)
    a.bench_timeout = a.bench_timeout or (60 if dry else 90)
    a.cap = None if a.full_data else a.data_cap
    env = [s.strip() for s in os.environ.get(BREAK_ENV, "").split(",") if s.strip()]
    a.broken = set(a.broken or []) | set(env)
    if a.device.type == "cuda" and not torch.cuda.is_available():
        p.error(f"--device: {a.device} asked for, but this PyTorch ({torch.__version__}) sees no CUDA device; "
                "use --dry-run (CPU) or --device cpu")
    if a.steps < 2 or a.resume_steps < 2: p.error("--steps and --resume-steps: expected at least 2")
    return a


def main(argv: Sequence[str] | None = None) -> int:
    a = parse_args(argv)
    t_start = time.perf_counter()
    from medsynth_nb.config import get_experiment, list_experiments
    exps = list_experiments()
    if a.experiments: exps = [get_experiment(n) for n in a.experiments]
    unknown = a.broken - {e.name for e in exps}
    if unknown: print(f"gpu_check: warning: --break names no checked experiment: {sorted(unknown)}", file=sys.stderr)
    rows: list[Row] = []
    def done(r: Row):
        rows.append(r)
        print(f"[{time.perf_counter() - t_start:6.1f} s] {r.section:10s} {r.name:40s} "
              f"{'ok' if r.ok else 'FAILED: ' + r.why}", flush=True)
    limit = 60 * a.max_minutes if a.max_minutes else math.inf
    elapsed = lambda: time.perf_counter() - t_start
    def late(section: str, name: str, share: float) -> bool:
        "Past `share` of --max-minutes: the row is not run and says so (it counts as failed: nothing was checked)."
        if elapsed() <= share * limit: return False
        done(Row(section, name, why=f"not run: {share:.0%} of --max-minutes {a.max_minutes:g} used up"))
        return True
    if "training" not in a.skip:
        for i, e in enumerate(exps):   # each run's budget shrinks when earlier ones (builds included) took longer
            if late("training", e.name, 0.55): continue
            budget = a.budget_s
            if budget and limit < math.inf:
                budget = min(budget, max(2.0, 0.7 * (0.55 * limit - elapsed()) / (len(exps) - i)))
            done(check_training(e, a.preset, a.device, a.steps, budget, a.warmup, a.cap, e.name in a.broken, a.amp))
    if "resume" not in a.skip:
        for e in exps:
            if late("resume", e.name, 0.85): continue
            done(check_resume(e, a.resume_preset, a.device, a.resume_steps, a.cap, e.name in a.broken))
    if "lessons" not in a.skip:
        for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
            try:
                for r in check_gpu_cells(nb): done(r)
            except Exception as e: done(Row("lessons", nb.name, why=_fail_reason(e)))
    if "benchmarks" not in a.skip:
        for r in benchmark_rows(a.device, a.dry_run, a.bench_timeout): done(r)
    header = {"device": device_name(a.device), "torch": torch.__version__, "python": platform.python_version(),
              "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "mode": "dry run (CPU code paths, smoke sizes)" if a.dry_run else "full",
              "training": f"preset {a.preset}, {a.steps} steps"
                          + (f" or at most {a.budget_s:g} s each, " if a.budget_s else " each, ")
                          + f"warm-up {a.warmup} steps, "
                          + ("preset's data" if a.cap is None else f"at most {a.cap} simulated subjects"),
              "resume": f"preset {a.resume_preset}, N = {a.resume_steps}",
              "seconds": round(time.perf_counter() - t_start, 1)}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(render(rows, header) + "\n", encoding="utf-8")
    n_bad = sum(not r.ok for r in rows)
    print(f"gpu_check: {len(rows) - n_bad} of {len(rows)} rows passed; report in {a.out}", flush=True)
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
