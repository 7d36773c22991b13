"nbdev's doc processor runs on every notebook: imports in their own cells, exported cells executable on their own."
import warnings
from pathlib import Path

import pytest

NBS = Path(__file__).resolve().parent.parent / "nbs"


@pytest.mark.parametrize("nb", sorted(p.name for p in NBS.glob("*.ipynb")))
def test_doc_processor_runs(nb, monkeypatch):
    """What `nbdev_docs` does before rendering (the `exec_show_docs` processor): execute every exported cell and every
    cell holding an import, in order, in a fresh shell. It fails when a cell mixes imports with other code that needs
    earlier, unexported cells (nbdev warns "Found cells containing imports and other code"), or when exported code
    cannot run on its own."""
    from nbdev.processors import NBProcessor, add_show_docs, exec_show_docs, populate_language
    monkeypatch.chdir(NBS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        NBProcessor(NBS / nb, [populate_language, add_show_docs, exec_show_docs], rm_directives=False).process()
    mixed = [str(w.message).split("---")[1].strip().splitlines()[0] for w in caught
             if "containing imports and other code" in str(w.message)]
    assert not mixed, f"{nb}: cells mix imports with other code (move the imports to the import cell): {mixed}"
