"""The model card: written beside a copy of the weights in a folder the user names, never
into the installed package; custom weights with a card are hash-checked when loaded."""

import hashlib
import json
import shutil

import pytest
from click.testing import CliRunner

from thaldask.cli import main
from thaldask.errors import ModelWeightsError
from thaldask.thalnet.assets import models_dir, weights_path
from thaldask.thalnet.card import write_model_card
from thaldask.thalnet.inference import load_thalnet


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def test_write_model_card_writes_to_out_and_leaves_package_alone(tmp_path):
    before = _digests(models_dir())
    card = write_model_card(weights_path(), tmp_path / "card", notes="test")
    out = tmp_path / "card"
    assert sorted(p.name for p in out.iterdir()) == [".thaldask-outputs.json", "thalnet.json",
                                                     "thalnet.md", "thalnet.pt"]
    assert (out / "thalnet.pt").read_bytes() == weights_path().read_bytes()
    assert json.loads((out / "thalnet.json").read_text()) == json.loads(json.dumps(card, default=str))
    assert card["sha256"] == hashlib.sha256(weights_path().read_bytes()).hexdigest()
    assert card["training"]["notes"] == "test" and "# Model card" in (out / "thalnet.md").read_text()
    assert _digests(models_dir()) == before


def test_write_model_card_other_weights_in_out_raise_unless_overwrite(tmp_path):
    (tmp_path / "thalnet.pt").write_bytes(b"someone else's weights")
    with pytest.raises(ModelWeightsError, match="other weights"):
        write_model_card(weights_path(), tmp_path)
    assert (tmp_path / "thalnet.pt").read_bytes() == b"someone else's weights"
    write_model_card(weights_path(), tmp_path, overwrite=True)
    assert (tmp_path / "thalnet.pt").read_bytes() == weights_path().read_bytes()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_model_card_in_the_weights_own_folder_keeps_them(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copyfile(weights_path(), run / "thalnet.pt")
    write_model_card(run / "thalnet.pt", run)
    assert (run / "thalnet.pt").read_bytes() == weights_path().read_bytes()
    assert (run / "thalnet.json").exists()


def test_load_thalnet_checks_the_card_beside_custom_weights(tmp_path):
    write_model_card(weights_path(), tmp_path)
    assert load_thalnet("cpu", path=tmp_path / "thalnet.pt").meta["steps"] > 0
    card = json.loads((tmp_path / "thalnet.json").read_text())
    card["sha256"] = "0" * 64
    (tmp_path / "thalnet.json").write_text(json.dumps(card))
    with pytest.raises(ModelWeightsError, match="does not match the model card"):
        load_thalnet("cpu", path=tmp_path / "thalnet.pt")
    assert load_thalnet("cpu", path=tmp_path / "thalnet.pt", check_hash=False)


def test_model_card_command_writes_card_and_weights_load_through_option(tmp_path):
    from thaldask.segment import get_segmenter

    r = CliRunner().invoke(main, ["model-card", str(weights_path()), "--out", str(tmp_path / "c")])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output.strip().splitlines()[-1])["sha256"] == json.loads(
        (tmp_path / "c" / "thalnet.json").read_text())["sha256"]
    seg = get_segmenter("thalnet", weights=str(tmp_path / "c" / "thalnet.pt"))
    seg.load("cpu")
    assert seg.device == "cpu"


def test_model_card_command_missing_weights_one_line_exit_2(tmp_path):
    r = CliRunner().invoke(main, ["model-card", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "c")])
    assert r.exit_code == 2 and "not found" in r.output
    assert len(r.output.strip().splitlines()) == 1
