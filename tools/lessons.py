"""Lessons with their outputs: execute notebooks in place, store a hash of their code, and check it later.

    python tools/lessons.py run [nbs/12_lowdose_gan.ipynb ...]    # `make lessons [NB=...]`
    python tools/lessons.py check [nbs/...]                        # which notebooks' outputs are stale

`run` executes a notebook the way `nbdev_test --flags slow` does (in `nbs/`, smoke-size cells plus the `#| slow`
demo cells), but keeps the outputs. Cells it does not run (`#| gpu` without a CUDA device, `#| eval: false`,
`#| notest`) keep their code and get one clearly labelled "not run here" output. It then writes, into the notebook's
metadata under `medsynth` (kept by `nbdev_clean` through `allowed_metadata_keys` in settings.ini), the sha256 of the
code cells, the command, the time taken and where it ran. The file is replaced atomically and only when every cell ran;
a failing cell leaves the committed notebook as it was. `check` (and `tests/test_lessons.py`) compares the stored hash
with the code beside it, so outputs never describe code that has since changed."""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterable, Sequence

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path: sys.path.insert(0, str(ROOT))   # `python tools/lessons.py` from anywhere

from medsynth_nb.utils import atomic_write

META_KEY = "medsynth"                       # notebook-metadata key; settings.ini: allowed_metadata_keys = medsynth
COMMAND = "make lessons"
NOT_RUN_FLAGS = ("gpu", "notest")           # nbdev test flags (settings.ini tst_flags) whose cells `run` leaves out
FIGURE_DPI = 72                             # PNG outputs at a modest resolution: the whole set stays small


def directives(src: str) -> list[str]:
    "The nbdev directives (`#| ...`) at the top of a code cell, without the `#|`, spaces removed around ':'."
    out = []
    for line in src.splitlines():
        s = line.strip()
        if not s: continue
        if not s.startswith("#|"): break
        out.append(" ".join(s[2:].split()).replace(" :", ":").replace(": ", ":"))
    return out


def not_run_reason(src: str, cuda: bool = False) -> str | None:
    "Why `run` leaves a code cell out (None when it runs): `eval: false`, or a flag it does not run here."
    for d in directives(src):
        if d == "eval:false": return "`#| eval: false`: shown, never executed"
        if d == "gpu" and not cuda: return "`#| gpu`: needs a CUDA GPU; `make lessons` on a GPU machine runs it"
        if d == "notest": return "`#| notest`: left out of the lesson run"
    return None


def code_hash(nb: dict) -> str:
    "sha256 over the code cells' sources, in order (markdown edits do not make outputs stale)."
    srcs = ["".join(c["source"]) if isinstance(c["source"], list) else c["source"]
            for c in nb["cells"] if c["cell_type"] == "code"]
    return hashlib.sha256(json.dumps(srcs, ensure_ascii=False).encode("utf-8")).hexdigest()


def read_json_nb(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file(): raise FileNotFoundError(f"notebook: no file at {path}")
    return json.loads(path.read_text(encoding="utf-8"))


def stale_reason(path: str | os.PathLike) -> str | None:
    "None when the notebook's outputs were produced from the code it holds now; else why not."
    nb = read_json_nb(path)
    if not any(c["cell_type"] == "code" for c in nb["cells"]): return None     # nothing to execute (index)
    meta = nb.get("metadata", {}).get(META_KEY)
    if not meta or "code_sha256" not in meta: return "never executed by `make lessons` (no outputs recorded)"
    if meta["code_sha256"] != code_hash(nb): return "its code cells changed after its outputs were produced"
    return None


def _not_run_output(reason: str) -> dict:
    text = f"Not run here — {reason}."
    return {"output_type": "display_data", "metadata": {},
            "data": {"text/markdown": [f"*{text}*"], "text/plain": [text]}}


def _mplrc(folder: Path) -> Path:
    rc = folder / "matplotlibrc"
    rc.write_text(f"figure.dpi: {FIGURE_DPI}\nsavefig.dpi: {FIGURE_DPI}\n", encoding="utf-8")
    return rc


def execute(path: str | os.PathLike, # the notebook to execute in place
            timeout: int = 7200, # seconds per cell
            cuda: bool | None = None, # run `#| gpu` cells (default: when torch sees a CUDA device)
            ) -> dict:
    "Execute the notebook at `path` in place (see the module docstring); return what was stored under `medsynth`."
    import nbformat
    from nbclient import NotebookClient
    from nbdev.clean import clean_nb
    from nbdev.config import get_config
    from execnb.nbio import nb2str
    path = Path(path).resolve()
    raw = read_json_nb(path)
    if cuda is None:
        import torch
        cuda = torch.cuda.is_available()
    nb = nbformat.reads(json.dumps(raw), as_version=4)
    skipped = {}
    for i, c in enumerate(nb.cells):
        if c.cell_type != "code": continue
        why = not_run_reason(c.source, cuda)
        if why: skipped[i], c.source = why, ""          # nbclient skips empty cells
    env_keys = ("MEDSYNTH_SIZE", "MATPLOTLIBRC", "MEDSYNTH_RESULTS")
    env_before = {k: os.environ.get(k) for k in env_keys}
    t0 = time.time()
    with tempfile.TemporaryDirectory() as td:
        os.environ.update(MEDSYNTH_SIZE="smoke", MATPLOTLIBRC=str(_mplrc(Path(td))))
        os.environ.pop("MEDSYNTH_RESULTS", None)
        try:
            client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                    resources={"metadata": {"path": str(path.parent)}})
            cell_seconds = {}
            def _timed(cell, cell_index, **kw):      # nbclient hook: per-cell wall time
                cell_seconds[cell_index] = time.time()
            def _done(cell, cell_index, **kw):
                cell_seconds[cell_index] = round(time.time() - cell_seconds[cell_index], 1)
            client.on_cell_execute, client.on_cell_executed = _timed, _done
            client.execute()
        finally:
            for k, v in env_before.items():
                if v is None: os.environ.pop(k, None)
                else: os.environ[k] = v
    seconds = round(time.time() - t0, 1)
    executed = json.loads(nbformat.writes(nb))
    for i, (c, e) in enumerate(zip(raw["cells"], executed["cells"])):
        if c["cell_type"] != "code": continue
        c["outputs"] = [_not_run_output(skipped[i])] if i in skipped else e.get("outputs", [])
    import torch
    long_cells = {str(i): s for i, s in sorted(cell_seconds.items()) if isinstance(s, float) and s >= 30}
    meta = {"code_sha256": code_hash(raw), "command": f"{COMMAND} NB={path.parent.name}/{path.name}",
            "seconds": seconds, "cells_over_30s": long_cells, "not_run": len(skipped),
            "ran_on": f"{os.cpu_count()} CPU cores" + (", CUDA" if cuda else ", no GPU"),
            "torch": torch.__version__, "python": platform.python_version()}
    raw.setdefault("metadata", {})[META_KEY] = meta
    cfg = get_config(path=ROOT)                       # the project's nbdev_clean settings, wherever the notebook is
    clean_nb(raw, cfg.clear_all, cfg.get("allowed_metadata_keys").split(),
             cfg.get("allowed_cell_metadata_keys").split(), cfg.clean_ids)
    with atomic_write(path) as tmp: Path(tmp).write_text(nb2str(raw), encoding="utf-8")
    return meta


def lesson_paths(names: Sequence[str] = (), nbs: str | os.PathLike = ROOT / "nbs") -> list[Path]:
    "The notebooks named (or every notebook in `nbs` with code cells, in lesson order)."
    if names:
        out = [Path(n) for n in names]
        missing = [str(p) for p in out if not p.is_file() or p.suffix != ".ipynb"]
        if missing: raise FileNotFoundError(f"NB: expected existing .ipynb files, got {missing}")
        return out
    return [p for p in sorted(Path(nbs).glob("*.ipynb")) if not p.name.startswith(("_", "."))
            and any(c["cell_type"] == "code" for c in read_json_nb(p)["cells"])]


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="tools/lessons.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="execute notebooks in place, keeping their outputs")
    r.add_argument("notebooks", nargs="*"); r.add_argument("--timeout", type=int, default=7200)
    c = sub.add_parser("check", help="list notebooks whose outputs are stale")
    c.add_argument("notebooks", nargs="*")
    a = p.parse_args(argv)
    try:
        paths = lesson_paths(a.notebooks)
        if a.cmd == "check":
            bad = [(q, stale_reason(q)) for q in paths]
            bad = [(q, why) for q, why in bad if why]
            for q, why in bad: print(f"{q.name}: {why}")
            print(f"{len(paths) - len(bad)} of {len(paths)} notebooks have fresh outputs")
            return 1 if bad else 0
        failed = []
        for q in paths:
            t0 = time.time()
            try:
                meta = execute(q, timeout=a.timeout)
                print(f"{q.name:40s} {meta['seconds']:8.1f} s  ({meta['not_run']} cells not run here)", flush=True)
            except Exception as e:     # report and go on: the notebook on disk is left as it was
                msg = str(e).strip().splitlines()
                failed.append(q.name)
                print(f"{q.name:40s} {time.time() - t0:8.1f} s  FAILED ({type(e).__name__}): "
                      f"{' | '.join(msg[-3:]) if msg else ''}", flush=True)
        if failed: raise RuntimeError(f"{len(failed)} notebook(s) failed and were left unchanged: {failed}")
    except (FileNotFoundError, RuntimeError) as e:
        print(f"{p.prog}: error: {e}", file=sys.stderr); return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
