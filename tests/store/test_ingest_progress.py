"""Ingest shows its progress through the one display, with the right counts."""

from thaldask.store import ingest


def test_ingest_progress_counts_every_scan_off_a_terminal(small_cohort, tmp_path, capsys):
    ingest(small_cohort, tmp_path / "s.zarr", progress=True)
    err = capsys.readouterr().err.splitlines()
    lines = [x for x in err if x.startswith("ingest: ")]
    assert lines[0] == "ingest: 0/3 scans (0%)" or lines[0].startswith("ingest: 1/3 scans")
    assert lines[-1].startswith("ingest: 3/3 scans (100%)")


def test_ingest_without_progress_prints_no_progress_line(small_cohort, tmp_path, capsys):
    ingest(small_cohort, tmp_path / "s.zarr", progress=False)
    assert "ingest:" not in capsys.readouterr().err
