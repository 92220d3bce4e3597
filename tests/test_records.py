"""metrics.json carries its schema version, and a metrics.json written before versions existed still reads:
carotid-compare accepts an evaluation folder whose metrics.json lacks the keys added since."""

from __future__ import annotations

import json
import shutil

import pytest

from carotid import compare
from carotid.core.errors import UserError
from carotid.core.run_dir import RunDir
from carotid.evaluation.records import METRICS_SCHEMA, read_metrics

ADDED_SINCE_0_1 = ("schema_version", "operating_points", "subgroups", "subgroup_min_persons", "decoding", "counts")


def test_metrics_json_has_its_schema_and_an_old_one_still_reads(trained_run, tmp_path):
    evaluation = RunDir(trained_run).evaluation()
    written = json.loads(evaluation.metrics.read_text(encoding="utf-8"))
    assert written["schema_version"] == METRICS_SCHEMA

    old = tmp_path / "eval_old"
    shutil.copytree(evaluation.path, old)
    legacy = {key: value for key, value in written.items() if key not in ADDED_SINCE_0_1}
    (old / "metrics.json").write_text(json.dumps(legacy), encoding="utf-8")
    record = read_metrics(old / "metrics.json")
    assert record["schema_version"] == 1 and record["operating_points"] == [] and record["subgroups"] is None
    assert record["person"] == written["person"] and record["threshold"] == written["threshold"]

    assert compare.main([str(evaluation.path), str(old), "--out", str(tmp_path / "cmp"), "--bootstrap", "20"]) == 0
    result = json.loads((tmp_path / "cmp" / "compare.json").read_text(encoding="utf-8"))
    assert result["n_persons"] == written["n_persons"]


def test_a_file_that_is_not_a_metrics_json_is_a_user_error(tmp_path):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"hello": 1}), encoding="utf-8")
    with pytest.raises(UserError, match="not a carotid metrics.json"):
        read_metrics(path)
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="not a readable metrics.json"):
        read_metrics(path)
