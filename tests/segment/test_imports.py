"""The runtime and the CLI modules import without torch; the model loads with a segmenter."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["thaldask.segment", "thaldask.commands.segment",
                                    "thaldask.commands.thalnet", "thaldask.cli"])
def test_import_module_does_not_import_torch(module):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_skip_stage_is_a_thaldask_error_and_pipeline_keeps_its_name():
    from thaldask.errors import SkipStage, ThaldaskError
    from thaldask.pipeline import SkipStage as PipelineSkipStage

    assert PipelineSkipStage is SkipStage and issubclass(SkipStage, ThaldaskError)
