"""Files and fixed input layout of the shipped ``thalnet`` model (no torch needed).

The weights, their model card and the held-out anatomy ship in ``thaldask/data/models``;
nothing here writes there (see :mod:`thaldask.thalnet.card` for writing a card beside
weights of your own).
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from thaldask._shared.paths import file_sha256
from thaldask.errors import ModelWeightsError

__all__ = ["SLOTS", "models_dir", "weights_path", "model_card", "card_beside", "sha256"]

#: input channels of the region-of-interest network, in order; a single contrast of any
#: kind goes in the first slot, missing slots are zeroed
SLOTS = ("T1w", "FLAIR", "R1")


def models_dir() -> Path:
    """Folder of the shipped model files (inside the installed package; read only)."""
    return Path(str(resources.files("thaldask") / "data" / "models"))


def weights_path(name: str = "thalnet") -> Path:
    """Path of the shipped weights file of a built-in model."""
    return models_dir() / f"{name}.pt"


def model_card(name: str = "thalnet") -> dict:
    """The model card (JSON) shipped beside the weights.

    Raises
    ------
    ModelWeightsError
        the card is missing.
    """
    path = models_dir() / f"{name}.json"
    if not path.exists():
        raise ModelWeightsError(f"{path}: model card missing; reinstall thaldask")
    return json.loads(path.read_text())


def card_beside(weights) -> Path:
    """Where the model card of a weights file lives: ``NAME.json`` in the same folder."""
    weights = Path(weights)
    return weights.with_name(weights.name.removesuffix(".pt") + ".json")


#: hex SHA-256 of a file
sha256 = file_sha256
