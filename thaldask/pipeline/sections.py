"""The ``stages:`` sections of a ``thaldask run`` configuration: every key each stage takes,
its type and meaning, checked before anything runs.

An unknown key is an error that names it and the closest valid key (``stages.report:
unknown key 'qc_randm' (did you mean 'qc_random'?)``), so a typo never silently falls back
to a default. The stats section takes the options of :data:`thaldask.stats.run.DEFAULTS`.
"""

from __future__ import annotations

from dataclasses import dataclass

from thaldask.config import check_keys
from thaldask.errors import ConfigError
from thaldask.stats.run import DEFAULTS as STATS_DEFAULTS

__all__ = ["Option", "SECTIONS", "STAGE_NAMES", "check_stages"]


@dataclass(frozen=True)
class Option:
    types: tuple[type, ...]
    description: str


_ENABLED = Option((bool,), "false switches the stage off")

#: every option of every stage section
SECTIONS: dict[str, dict[str, Option]] = {
    "synth": {
        "enabled": _ENABLED,
        "n_subjects": Option((int,), "synthetic subjects"),
        "shape": Option((str,), "small (field of view around the thalami), full or tiny"),
        "seed": Option((int,), "cohort seed"),
        "n_timepoints": Option((int,), "timepoints per subject"),
        "n_sites": Option((int,), "acquisition sites"),
        "gt_fraction": Option((int, float), "share of patients with manual ground truth"),
        "params": Option((dict,), "planted-effect parameters (thaldask.synth.default_params)"),
    },
    "ingest": {
        "enabled": _ENABLED,
        "overwrite": Option((bool,), "replace stored scans whose files changed"),
    },
    "segment": {
        "enabled": _ENABLED,
        "model": Option((str,), "segmenter name (thaldask segment --list)"),
        "contrasts": Option((list,), "contrasts to segment (default: stored T1w, FLAIR, R1)"),
        "ensembles": Option((list,), "ensembles such as T1w+FLAIR+R1 (default: all contrasts)"),
        "device": Option((str,), "auto, cpu or cuda (default: thaldask.segment.device)"),
        "batch_size": Option((int,), "scans per task (default: thaldask.segment.batch-size)"),
        "options": Option((dict,), "segmenter options, e.g. checkpoint for mindglide"),
    },
    "evaluate": {
        "enabled": _ENABLED,
        "surface": Option((bool,), "HD95 and ASSD besides overlap and volume"),
        "name": Option((str,), "results dataset name in the store"),
        "csv": Option((str,), "tidy metrics table path"),
    },
    "stats": {
        "enabled": _ENABLED,
        "config": Option((str,), "a stats YAML file instead of inline options"),
        **{k: Option((object,), "see thaldask/data/example_config.yaml") for k in STATS_DEFAULTS},
    },
    "report": {
        "enabled": _ENABLED,
        "out": Option((str,), "report folder, relative to the run's out"),
        "side": Option((str,), "thalamus side drawn in the figures: total, left or right"),
        "seed": Option((int,), "seed of the random visual-QC sample"),
        "qc_random": Option((int,), "random scans per method x contrast in visual QC"),
    },
}

#: the stages, in pipeline order
STAGE_NAMES = ("synth", "ingest", "segment", "evaluate", "stats", "report")


def _type_name(types) -> str:
    return " or ".join(t.__name__ for t in types)


def check_stages(stages, *, where: str = "stages") -> dict:
    """Check a ``stages:`` mapping; return it (sections as dicts, ``false`` kept).

    Raises
    ------
    ConfigError
        an unknown stage or key (with the closest valid name) or a value of the wrong type.
    """
    if stages is None:
        return {}
    if not isinstance(stages, dict):
        raise ConfigError(f"{where}: must be a mapping of stage name to its options")
    check_keys(stages, STAGE_NAMES, where=where)
    out = {}
    for name, sec in stages.items():
        if sec is None:
            sec = {}
        if sec is False:
            out[name] = False
            continue
        if not isinstance(sec, dict):
            raise ConfigError(f"{where}.{name}: expected a mapping of options or false, got {sec!r}")
        options = SECTIONS[name]
        check_keys(sec, options, where=f"{where}.{name}")
        for key, value in sec.items():
            types = options[key].types
            if value is None or object in types:
                continue
            if bool in types and not isinstance(value, bool) and int not in types:
                raise ConfigError(f"{where}.{name}.{key}: expected true or false, got {value!r}")
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                raise ConfigError(
                    f"{where}.{name}.{key}: expected {_type_name(types)}, got {value!r}"
                )
        out[name] = dict(sec)
    return out
