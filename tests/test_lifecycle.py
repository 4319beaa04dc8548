"""One lifecycle for run, score, merge and classify (fairbench/pipeline.py), and run.json's one typed schema."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fairbench import runner
from fairbench.cli.main import main
from fairbench.config import build_config
from fairbench.errors import UserError
from fairbench.io import read_jsonl
from fairbench.outputs.rundir import RUN_JSON, RunRecord, read_record, write_record
from fairbench.pipeline import ImageSource, execute
from fairbench.sources import Existing, Generate, Import, Merge
from fairbench.spec import resolve


class _Stop(Exception):
    pass


def test_every_entry_point_hands_one_source_to_the_one_lifecycle(monkeypatch, original, tmp_path):
    seen: list[str] = []

    def spy(source: ImageSource):
        seen.append(type(source).__name__)
        raise _Stop

    monkeypatch.setattr(runner, "execute", spy)
    cfg = build_config(None, n=3, limit=2, dtype="float32", out=str(tmp_path / "a"), progress=False).with_model_defaults()
    table = tmp_path / "prompts.csv"
    rows = read_jsonl(original / "manifest.jsonl")
    names = [r["key"].replace("/", "-") + ".png" for r in rows]  # unique in one flat folder
    pd.DataFrame({"image": names, "prompt_id": [r["prompt_id"] for r in rows],
                  "sample_idx": [r["sample_idx"] for r in rows]}).to_csv(table, index=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for r, name in zip(rows, names):
        shutil.copy(original / r["image"], flat / name)
    for call in (lambda: runner.run_one(resolve(cfg)), lambda: runner.classify_run(original, "synthface", {}),
                 lambda: runner.score_run(flat, table, cfg.model_copy(update={"out": str(tmp_path / "b")}),
                                          suite="occupations")):
        with pytest.raises(_Stop):
            call()
    assert seen == ["Generate", "Existing", "Import"]
    # merge needs shards to get as far as its source; its function names the same two things
    assert {"execute", "Merge"} <= set(runner.merge_run.__code__.co_names)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


class _Replay(ImageSource):
    """A source that places a finished run's images again and records every call the lifecycle makes."""

    def __init__(self, original: Path, run_dir: Path):
        self.original, self.run_dir = original, run_dir
        self.cfg = build_config(None, **{**read_record(original).spec, "out": str(run_dir)}).with_model_defaults()
        self.calls: list[str] = []

    def check(self) -> None:
        locked = (self.run_dir / ".fairbench.lock").exists()
        self.calls.append("check under the lock" if locked else "check")

    def prepare(self, device, detector, classifier) -> None:
        assert not self.run_dir.exists()  # nothing is written before the lifecycle's step 3
        self.calls.append("prepare")

    def start(self) -> RunRecord:
        self.calls.append("start")
        old = read_record(self.original)
        return RunRecord(spec=self.cfg.model_dump(), suite=old.suite, model=old.model, status="generating")

    def images(self, record: RunRecord) -> list[dict]:
        assert json.loads((self.run_dir / RUN_JSON).read_text())["status"] == "generating"
        self.calls.append("images")
        shutil.copytree(self.original / "images", self.run_dir / "images")
        return read_jsonl(self.original / "manifest.jsonl")


def test_the_lifecycle_runs_its_steps_in_order_and_labels_like_a_run(original, tmp_path):
    source = _Replay(original, tmp_path / "replayed")
    outcome = execute(source)
    assert source.calls == ["check", "prepare", "check under the lock", "start", "images"]
    record = read_record(outcome.run_dir)
    assert record.status == "complete" and record.classifier["name"] == "synthface"
    assert pd.read_parquet(outcome.run_dir / "labels.parquet").equals(pd.read_parquet(original / "labels.parquet"))
    for name in ("metrics.json", "tables/summary.csv"):
        assert (outcome.run_dir / name).read_bytes() == (original / name).read_bytes()


def test_run_json_reads_back_through_its_schema_unchanged(original, tmp_path):
    write_record(tmp_path, read_record(original))
    assert json.loads((tmp_path / RUN_JSON).read_text()) == json.loads((original / RUN_JSON).read_text())


def _record(**change) -> dict:
    doc = {"spec": {"method": "vanilla"}, "status": "complete", "suite": {"name": "occupations"}}
    doc.update(change)
    return {k: v for k, v in doc.items() if v is not None}


@pytest.mark.parametrize(("doc", "named"), [
    (_record(colour="blue"), "'colour'"),                          # an unknown key
    (_record(status=None), "status"),                              # a missing key
    (_record(status="half done"), "status"),                       # a value outside the lifecycle's
    (_record(spec={"method": "vanilla", "n": -3}), "spec"),        # a spec a run cannot have
    (_record(spec={"method": "vanilla", "colour": 1}), "colour"),  # a spec key no option has
    (_record(n_units=-1), "n_units"),
    (_record(model=["synthface"]), "model"),
    (_record(suite={"version": 2}), "suite.name"),
])
def test_a_malformed_run_record_is_one_line_naming_the_field(tmp_path, capsys, doc, named):
    (tmp_path / RUN_JSON).write_text(json.dumps(doc))
    with pytest.raises(UserError, match=named) as err:
        read_record(tmp_path)
    assert str(tmp_path / RUN_JSON) in str(err.value) and "\n" not in str(err.value)
    assert main(["report", str(tmp_path)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_a_record_missing_a_spec_key_reads_it_at_its_default(tmp_path):
    (tmp_path / RUN_JSON).write_text(json.dumps(_record()))
    spec = read_record(tmp_path).spec
    assert spec["n"] == 16 and spec["split"] == "test" and spec["method"] == "vanilla"


def test_sources_are_the_four_ways_images_enter_a_run():
    assert all(issubclass(s, ImageSource) for s in (Generate, Import, Merge, Existing))
