import pandas as pd
import pytest

from thaldask.cohort import validate_clinical
from thaldask.errors import ClinicalTableError, ThaldaskWarning

COLS = "subject,timepoint,site,group,age,sex,disease_duration,edss,sdmt,years_since_baseline,icv_mm3"


def test_validate_clinical_types_and_missing_values(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text(COLS + "\ns1,baseline,A,MS,34.5,F,3,2.5,51,0,1500000\ns2,baseline,A,HC,40,M,,,,0,1400000\n")
    df = validate_clinical(p)
    assert df["edss"].dtype == "float64" and pd.isna(df["edss"][1])
    assert df["group"].tolist() == ["MS", "HC"]
    assert "row" not in df.columns


def test_validate_clinical_every_problem_listed(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text(
        COLS + "\n"
        "s1,baseline,A,MS,34,F,3,2.3,51,0,1500000\n"      # 2 edss step
        "s2,baseline,A,XX,40,Q,1,11,50,0,1400000\n"        # 3 group, sex, edss range
        "s3,baseline,A,MS,abc,F,1,1,50,0,1400000\n"        # 4 age not a number
        "s1,baseline,A,MS,34,F,3,2.5,51,0,1500000\n"       # 5 duplicate of 2
    )
    with pytest.raises(ClinicalTableError) as ei:
        validate_clinical(p)
    probs = ei.value.problems
    assert len(probs) == 6, probs
    assert any("row 2: edss: 2.3 is not a multiple of 0.5" in x for x in probs)
    assert any("row 3: edss: 11 outside 0..10" in x for x in probs)
    assert any("row 3: group: 'XX'" in x for x in probs)
    assert any("row 3: sex: 'Q'" in x for x in probs)
    assert any("row 4: age: 'abc' is not a number" in x for x in probs)
    assert any("row 5: duplicate of row 2" in x for x in probs)


def test_validate_clinical_subjects_absent_from_manifest_warned(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text("subject,timepoint,edss\ns1,baseline,1\ns9,baseline,2\ns1,m12,2\n")
    man = pd.DataFrame({"subject": ["s1"], "timepoint": ["baseline"]})
    with pytest.warns(ThaldaskWarning, match="subjects absent from the manifest: s9.*scans absent.*s1/m12"):
        df = validate_clinical(p, manifest=man)
    assert len(df) == 3


def test_validate_clinical_group_and_sex_case_normalised(tmp_path):
    p = tmp_path / "clinical.csv"
    p.write_text("subject,timepoint,group,sex\ns1,baseline,ms,f\ns2,baseline,Hc,M\n")
    df = validate_clinical(p)
    assert df["group"].tolist() == ["MS", "HC"] and df["sex"].tolist() == ["F", "M"]


def test_manifest_check_cli_lists_every_problem(tmp_path):
    from click.testing import CliRunner

    from thaldask.cli import main

    man = tmp_path / "m.csv"
    man.write_text("subject,timepoint,kind,contrast,path\ns1,t,image,T1w,a.nii.gz\ns2,t,image,T1w,b.nii.gz\n")
    res = CliRunner().invoke(main, ["manifest", "check", str(man)])
    assert res.exit_code == 2
    assert "m.csv row 2: 'a.nii.gz': file not found" in res.output
    assert "m.csv row 3: 'b.nii.gz': file not found" in res.output
