"""`thaldask tools install`: only the folder it makes is written; a failed build leaves nothing."""

from click.testing import CliRunner

from thaldask.cli import main


def test_install_refuses_a_folder_it_did_not_make(tmp_path):
    prefix = tmp_path / "mine"
    prefix.mkdir()
    (prefix / "notes.txt").write_text("keep")
    r = CliRunner().invoke(main, ["tools", "install", "samseg", "--prefix", str(prefix), "--python", "/bin/true"])
    assert r.exit_code == 2
    assert r.output.strip() == f"thaldask: error: {prefix}: exists and was not made by thaldask; choose another --prefix"
    assert sorted(p.name for p in prefix.iterdir()) == ["notes.txt"] and (prefix / "notes.txt").read_text() == "keep"


def test_a_failed_build_removes_what_it_made(tmp_path):
    prefix = tmp_path / "tools" / "samseg"
    r = CliRunner().invoke(main, ["tools", "install", "samseg", "--prefix", str(prefix), "--python", "/bin/false"])
    assert r.exit_code == 2
    assert "installing samseg: creating the virtual environment failed with status 1" in r.output
    assert r.output.count("\n") == 1 + r.output.count("creating a virtual environment")
    assert not prefix.exists()


def test_unknown_tool_is_one_line(tmp_path):
    r = CliRunner().invoke(main, ["tools", "install", "freesurfer", "--prefix", str(tmp_path / "x")])
    assert r.exit_code == 2 and "no installer for tool 'freesurfer'; installable: samseg" in r.output
    assert not (tmp_path / "x").exists()
