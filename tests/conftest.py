"Shared pytest set-up: one torch thread, and hypothesis profiles so that property tests never make CI red by chance."
import os
import sys
from pathlib import Path

import torch
from hypothesis import HealthCheck, settings

# The tests run tiny networks and 64-value patches: on a shared 2-core machine one intra-op thread is many times
# faster than two (threads spin waiting for each other). Set once here for the whole session (seven test files
# used to set it each on their own, at import or in a fixture).
torch.set_num_threads(1)

# CI (and `make test`, which sets CI in .ci/run) runs every property test derandomized: the same examples each run,
# so a red build always means a changed behaviour. Locally `HYPOTHESIS_PROFILE=explore pytest` searches afresh.
settings.register_profile("ci", derandomize=True, print_blob=True, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# `tools/` (project tooling, not part of the package) is imported by the tests as `tools.site`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
