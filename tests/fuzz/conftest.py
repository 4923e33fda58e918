"""Property-based fuzzing of the runtime's doors. Bounded in the normal test run (profile `bounded`); `make fuzz`
runs the same properties with profile `fuzz` (K8SGPU_FUZZ_EXAMPLES examples each, default 20000) and the atheris
targets in tests/fuzz/atheris/."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile("bounded", max_examples=int(os.environ.get("K8SGPU_FUZZ_EXAMPLES", "60")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], derandomize=True)
settings.register_profile("fuzz", max_examples=int(os.environ.get("K8SGPU_FUZZ_EXAMPLES", "20000")), deadline=None,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "bounded"))
