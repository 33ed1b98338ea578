"""The whole pipeline: stage adapters for every stage, the validated run configuration,
``thaldask demo`` and ``thaldask run``.

- :func:`run_demo`: a synthetic cohort through every stage on a local cluster;
- :func:`run_config`: a real cohort as configured in YAML (see
  ``thaldask/data/example_config.yaml``).
"""

from thaldask.errors import SkipStage
from thaldask.pipeline.context import Context, Stage, pipeline_client
from thaldask.pipeline.demo import README_TEXT, run_demo
from thaldask.pipeline.run import load_config, run_config
from thaldask.pipeline.sections import SECTIONS, check_stages
from thaldask.pipeline.stages import STAGES, print_summary, run_stages

__all__ = [
    "Context",
    "Stage",
    "STAGES",
    "SECTIONS",
    "SkipStage",
    "check_stages",
    "load_config",
    "pipeline_client",
    "print_summary",
    "run_config",
    "run_demo",
    "run_stages",
    "README_TEXT",
]
