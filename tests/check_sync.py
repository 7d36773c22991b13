"""Fail when `nbdev_export` or `nbdev_clean` would change a file: the library must match the notebooks,
and the notebooks must be clean. Run by `make test` before the tests (it leaves the tree exported and cleaned)."""
import hashlib, subprocess, sys
from pathlib import Path

root = Path(__file__).resolve().parent.parent
bin_dir = Path(sys.executable).parent

def snapshot():
    files = [p for d in ("nbs", "medsynth_nb") for p in (root / d).rglob("*")
             if p.is_file() and "__pycache__" not in p.parts and ".ipynb_checkpoints" not in p.parts]
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}

before = snapshot()
for cmd in ("nbdev_export", "nbdev_clean"):
    subprocess.run([str(bin_dir / cmd)], cwd=root, check=True)
after = snapshot()
changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
if changed:
    print("nbdev_export / nbdev_clean changed these files (export and clean, then commit them):")
    for k in changed: print("  ", k)
    sys.exit(1)
print(f"sync: {len(after)} files in nbs/ and medsynth_nb/ unchanged by nbdev_export and nbdev_clean")
