"""Hand-written CSV: BOM, field counts, encodings, delimiters and decimal commas."""

import pytest
from helpers.cohort import HEADER, digests, good_image, one_line

from thaldask.cohort import read_clinical, read_manifest, read_table, validate, validate_clinical
from thaldask.errors import ClinicalTableError, ManifestError


def test_read_manifest_utf8_bom_read(tmp_path):
    good_image(tmp_path / "a.nii.gz")
    p = tmp_path / "m.csv"
    p.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\r\ns1,t,,image,T1w,,,a.nii.gz\r\n".encode())
    df = validate(p)
    assert df["subject"].tolist() == ["s1"] and df["shape"].iloc[0] == (8, 8, 8)


def test_read_manifest_field_count_mismatch_one_error(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(f"{HEADER}\ns1,t,,image,T1w,,,sub-01/anat/a,b.nii.gz\ns2,t,,image,T1w,,,b.nii.gz\n")
    before = digests(tmp_path)
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    assert one_line(str(ei.value)) == "m.csv row 2: 9 fields but the header has 8 (an unquoted comma?)"
    assert ei.value.problems == [str(ei.value)]
    assert digests(tmp_path) == before


def test_read_manifest_several_short_rows_each_named(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(f"{HEADER}\ns1,t,image\ns2,t,,image,T1w,,,b.nii.gz\ns3,t\n")
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    assert ei.value.problems == [
        "m.csv row 2: 3 fields but the header has 8",
        "m.csv row 4: 2 fields but the header has 8",
    ]
    assert one_line(str(ei.value)).startswith("m.csv: 2 rows with a wrong field count; first: m.csv row 2")


def test_read_manifest_trailing_empty_cells_and_quoted_comma_accepted(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(f'{HEADER},,\ns1,t,,image,T1w,,,"a,b.nii.gz",,\n\n')
    df = read_manifest(p)
    assert df["path"].tolist() == ["a,b.nii.gz"] and df["row"].tolist() == [2]


def test_read_manifest_latin1_refused_with_line_and_column(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(f"{HEADER}\ns1,t,,image,T1w,,,a.nii.gz\ns2,t,M\xfcnchen,image,T1w,,,b.nii.gz\n".encode("latin-1"))
    before = digests(tmp_path)
    with pytest.raises(ManifestError) as ei:
        read_manifest(p)
    assert one_line(str(ei.value)) == "m.csv line 3: not UTF-8 (byte 0xfc at column 7); save the file as UTF-8"
    assert digests(tmp_path) == before


def test_read_manifest_utf16_refused(tmp_path):
    p = tmp_path / "m.csv"
    p.write_bytes(f"{HEADER}\n".encode("utf-16"))
    with pytest.raises(ManifestError, match="saved as UTF-16; save the file as UTF-8"):
        read_manifest(p)


def test_read_manifest_semicolon_delimiter_and_comment_lines(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("# exported by hand\n" + HEADER.replace(",", ";") + "\ns1;t;;image;T1w;;;a.nii.gz\n")
    df = read_manifest(p)
    assert df["path"].tolist() == ["a.nii.gz"] and df["row"].tolist() == [3]


def test_read_manifest_duplicate_column_refused(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text(HEADER + ",path\ns1,t,,image,T1w,,,a.nii.gz,b.nii.gz\n")
    with pytest.raises(ManifestError, match=r"^m.csv row 1: column 'path' appears more than once"):
        read_manifest(p)


def test_read_manifest_empty_file_refused(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("\n\n")
    with pytest.raises(ManifestError, match="manifest is empty"):
        read_manifest(p)


def test_read_clinical_latin1_refused_with_line(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_bytes("subject,timepoint,site\ns1,t,A\ns2,t,B\ns03,t,Montr\xe9al\n".encode("latin-1"))
    before = digests(tmp_path)
    with pytest.raises(ClinicalTableError) as ei:
        read_clinical(p)
    assert one_line(str(ei.value)) == (
        "clinical.csv line 4: not UTF-8 (byte 0xe9 at column 12); save the file as UTF-8"
    )
    assert digests(tmp_path) == before


def test_read_clinical_bom_read(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_bytes(b"\xef\xbb\xbfsubject,timepoint,age\ns1,t,40\n")
    assert validate_clinical(p)["age"].tolist() == [40.0]


def test_read_clinical_field_count_mismatch_one_error(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text("subject,timepoint,age\ns1,t,27,5\ns2,t,30\n")
    with pytest.raises(ClinicalTableError) as ei:
        read_clinical(p)
    assert str(ei.value) == "clinical.csv row 2: 4 fields but the header has 3 (an unquoted comma?)"


def test_validate_clinical_decimal_comma_named(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text('subject,timepoint,age,edss\ns1,t,"27,5",2\ns2,t,"31,0","3,5"\ns3,t,"40,2",1\n')
    with pytest.raises(ClinicalTableError) as ei:
        validate_clinical(p)
    probs = ei.value.problems
    assert probs == [
        "clinical.csv row 2: age: '27,5' looks like a decimal comma (and 2 more rows); "
        "write numbers with a point (27.5)",
        "clinical.csv row 3: edss: '3,5' looks like a decimal comma; write numbers with a point (3.5)",
    ]


def test_validate_clinical_semicolon_table_with_decimal_comma_named(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text("subject;timepoint;age\ns1;t;27,5\n")
    with pytest.raises(ClinicalTableError, match=r"row 2: age: '27,5' looks like a decimal comma"):
        validate_clinical(p)


def test_read_table_same_reader_for_both(tmp_path):
    p = tmp_path / "t.tsv"
    p.write_text("a\tb\n1\t2\n")
    df = read_table(p, what="table")
    assert df.columns.tolist() == ["row", "a", "b"] and df.iloc[0].tolist() == [2, "1", "2"]


def test_read_manifest_comment_with_unbalanced_quote_ignored(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text('# note: "draft\n' + HEADER + "\ns1,t,,image,T1w,,,a.nii.gz\n")
    assert read_manifest(p)["row"].tolist() == [3]
