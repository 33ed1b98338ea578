import pytest
from stats_synth import build_results


@pytest.fixture
def make_results():
    """Factory of results datasets with planted effects (see stats_synth.build_results)."""
    return build_results
