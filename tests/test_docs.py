"nbdev's doc processor runs on every notebook: imports in their own cells, exported cells executable on their own."
import json
import subprocess
import sys
from pathlib import Path

NBS = Path(__file__).resolve().parent.parent / "nbs"

# Runs in a child process: executing the notebooks' exported cells re-registers their experiments from `__main__`,
# which must not leak into the registry the other tests use.
_SCRIPT = r'''
import json, sys, warnings
from pathlib import Path
from nbdev.processors import NBProcessor, add_show_docs, exec_show_docs, populate_language
out = {}
for nb in sorted(Path(".").glob("*.ipynb")):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            NBProcessor(nb, [populate_language, add_show_docs, exec_show_docs], rm_directives=False).process(); err = None
        except Exception as e: err = f"{type(e).__name__}: {str(e)[:300]}"
    mixed = [str(w.message).split("---")[1].strip().splitlines()[0] for w in caught
             if "containing imports and other code" in str(w.message)]
    out[nb.name] = {"error": err, "mixed": mixed}
print(json.dumps(out))
'''


def test_doc_processor_runs_on_every_notebook():
    """What `nbdev_docs` does before rendering (the `exec_show_docs` processor): execute every exported cell and every
    cell holding an import, in order, in a fresh shell. It fails when a cell mixes imports with other code that needs
    earlier, unexported cells (nbdev warns "Found cells containing imports and other code"), or when exported code
    cannot run on its own."""
    r = subprocess.run([sys.executable, "-c", _SCRIPT], cwd=NBS, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert len(res) == len(list(NBS.glob("*.ipynb"))) >= 22
    bad = {nb: v for nb, v in res.items() if v["error"] or v["mixed"]}
    assert not bad, f"the doc processor fails (move imports into the import cell): {bad}"
