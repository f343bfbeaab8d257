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
