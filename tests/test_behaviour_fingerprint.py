"""scripts/behaviour_fingerprint.py: a recording compares equal to itself and a changed number is reported."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from conftest import load_script


def test_a_recording_matches_itself_and_a_changed_metric_is_found(tmp_path, monkeypatch, capsys):
    fingerprint = load_script("behaviour_fingerprint")
    monkeypatch.chdir(Path(fingerprint.__file__).resolve().parents[1])  # `python -m metarl` in the repository
    assert fingerprint.record(tmp_path / "before", ["random"]) == 0
    shutil.copytree(tmp_path / "before", tmp_path / "after")
    assert fingerprint.compare(tmp_path / "before", tmp_path / "after") == 0
    assert "random: identical" in capsys.readouterr().out

    metrics = tmp_path / "after" / "random" / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    records[1]["meta/return_pre_adapt"] += 1e-9
    metrics.write_text("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
    assert fingerprint.compare(tmp_path / "before", tmp_path / "after") == 1
    assert "random/metrics.jsonl: differs, largest |difference| 1e-09 at [1]/meta/return_pre_adapt" in (
        capsys.readouterr().out
    )

    # a results field added since the recording is named and left out; one that disappeared is a difference
    metrics.write_text((tmp_path / "before" / "random" / "metrics.jsonl").read_text())
    results_path = tmp_path / "after" / "random" / "results.json"
    results = json.loads(results_path.read_text())
    results_path.write_text(json.dumps({**results, "new_field": [1.0]}, indent=2, sort_keys=True) + "\n")
    assert fingerprint.compare(tmp_path / "before", tmp_path / "after") == 0
    out = capsys.readouterr().out
    assert "random/results.json: new fields, not in the recording: new_field" in out and "random: identical" in out
    del results["test_returns"]
    results_path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    assert fingerprint.compare(tmp_path / "before", tmp_path / "after") == 1
    out = capsys.readouterr().out
    assert "keys differ (['test_returns'])" in out and "random: identical" not in out
