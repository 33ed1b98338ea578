import importlib
import sys
import textwrap

import numpy as np
import pytest

import thaldask.segment.registry as registry
from thaldask.errors import (
    MissingDependencyError,
    ModelWeightsError,
    SegmenterError,
    SegmenterImportWarning,
)
from thaldask.segment import Segmenter, get_segmenter, list_segmenters, register_segmenter


def test_list_segmenters_builtins_present():
    names = list_segmenters()
    assert {"thalnet", "thalnet-multi", "mindglide"} <= set(names)


def test_get_segmenter_unknown_name_raises_with_choices():
    with pytest.raises(SegmenterError, match="unknown segmenter 'nope'.*thalnet"):
        get_segmenter("nope")


def test_register_segmenter_duplicate_name_raises():
    class A(Segmenter):
        name = "thalnet"

    with pytest.raises(ValueError, match="already registered"):
        register_segmenter(A)


def test_check_contrast_multi_on_single_model_raises():
    seg = get_segmenter("thalnet")
    with pytest.raises(SegmenterError, match="takes one contrast"):
        seg.check_contrast("T1w+R1")
    multi = get_segmenter("thalnet-multi")
    assert multi.check_contrast("T1w+FLAIR+R1") == ["T1w", "FLAIR", "R1"]
    with pytest.raises(SegmenterError, match="does not accept contrast 'PD'"):
        multi.check_contrast("T1w+PD")


def _dist(tmp_path, name, entry):
    d = tmp_path / f"{name}-0.1.dist-info"
    d.mkdir()
    (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (d / "entry_points.txt").write_text(f"[thaldask.segmenters]\n{entry}\n")


def test_entry_points_good_plugin_registers_broken_plugin_warns(tmp_path, monkeypatch):
    (tmp_path / "tdk_good_plugin.py").write_text(textwrap.dedent('''
        import numpy as np
        from thaldask.segment import Segmenter, Prediction

        class Box(Segmenter):
            name = "box"
            def load(self, device="auto"):
                self.device = "cpu"
            def predict(self, image, affine, *, contrast):
                lab = np.zeros(np.shape(image), np.uint8)
                lab[1, 1, 1], lab[-2, -2, -2] = 1, 2
                return Prediction(lab)
    '''))
    _dist(tmp_path, "tdk_good", "box = tdk_good_plugin:Box")
    _dist(tmp_path, "tdk_bad", "broken = tdk_missing_module_xyz:Nothing")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    monkeypatch.setattr(registry, "_ENTRY_POINTS_LOADED", False)
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_FROM_ENTRY_POINTS", set())
    with pytest.warns(SegmenterImportWarning, match="'broken'"):
        names = list_segmenters()
    assert "box" in names and "broken" not in names
    seg = get_segmenter("box")
    seg.load("cpu")
    out = seg.predict(np.zeros((4, 4, 4)), np.eye(4), contrast="T1w")
    assert out.labels.dtype == np.uint8 and set(np.unique(out.labels)) == {0, 1, 2}
    sys.modules.pop("tdk_good_plugin", None)


def test_mindglide_without_label_ids_or_checkpoint_one_line_error(tmp_path):
    seg = get_segmenter("mindglide")
    with pytest.raises((SegmenterError, MissingDependencyError)) as e:
        seg.load("cpu")
    assert "\n" not in str(e.value)
    seg = get_segmenter("mindglide", label_ids="3", checkpoint=str(tmp_path / "missing.pt"))
    with pytest.raises((ModelWeightsError, MissingDependencyError)) as e:
        seg.load("cpu")
    assert "\n" not in str(e.value)
