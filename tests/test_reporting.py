"""report_to=: the TensorBoard event files and the offline W&B run hold exactly the metrics.jsonl records.

Both trackers are read back with their own readers (TensorBoard's EventAccumulator; the W&B run file through
W&B's protobuf records), never through lorarlhf, and compared with metrics.jsonl. No network: W&B runs offline.
"""

from __future__ import annotations

import json
import sys
import time

import pytest

import lorarlhf
from lorarlhf.cli import _overrides
from lorarlhf.methods.dpo import DPOConfig
from lorarlhf.reporting import check_installed

# sft (2 steps) then dpo (3 steps): two stages, so the shared step axis is tested too.
RUN = dict(method="dpo", sft=True, sft_steps=2, steps=3, batch_size=4, lr=1e-3, quantize=None, samples=0)
WANDB_RECORD_TYPES = {1: "full", 2: "first", 3: "middle", 4: "last"}


def pairs(n: int = 16) -> list[dict]:
    return [{"prompt": f"Question {i}:", "chosen": "a cat yes", "rejected": "a cat no"} for i in range(n)]


def records_of(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def expected_scalars(out) -> dict[str, list[tuple[int, float]]]:
    """metrics.jsonl as tag -> [(run step, value)]: sft's steps first, dpo's after them."""
    records = records_of(out)
    assert [(r["stage"], r["step"]) for r in records] == [("sft", 1), ("sft", 2), ("dpo", 1), ("dpo", 2), ("dpo", 3)]
    first = {"sft": 0, "dpo": 2}
    scalars: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for name, value in record.items():
            if name not in ("stage", "step"):
                scalars.setdefault(name, []).append((first[record["stage"]] + record["step"], value))
    return scalars


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B offline and silent, its config, cache and data directories inside tmp_path."""
    for name in ("WANDB_API_KEY", "WANDB_DIR", "WANDB_NAME", "WANDB_RUN_ID", "WANDB_RESUME", "WANDB_PROJECT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # no capture of the test's stdout/stderr
    monkeypatch.setenv("WANDB_DISABLE_CODE", "true")
    for name in ("CONFIG", "CACHE", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / "wandb-home" / name.lower()))


@pytest.mark.kernels
def test_tensorboard_holds_every_record_at_its_run_step(tiny_model_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    lorarlhf.align(str(tiny_model_dir), pairs(), output_dir=out, report_to="tensorboard", **RUN)
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    expected = expected_scalars(out)
    assert sorted(events.Tags()["scalars"]) == sorted(expected)
    assert "sft/loss" in expected and "dpo/loss" in expected
    for tag, points in expected.items():
        read = [(event.step, event.value) for event in events.Scalars(tag)]
        assert [step for step, _ in read] == [step for step, _ in points], tag
        # event files hold float32
        assert [value for _, value in read] == pytest.approx([v for _, v in points], rel=1e-6, nan_ok=True), tag


def wandb_records(path) -> list:
    """The protobuf Records of a .wandb run file: a ":W&B" header, then leveldb-log chunks (crc32, length,
    type) in 32 KiB blocks, a record split over blocks as first/middle/last chunks."""
    from wandb.proto import wandb_internal_pb2

    data, block = path.read_bytes(), 32768
    assert data[:4] == b":W&B"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        if block - position % block < 7:  # too little of the block left for a header: padding
            position += block - position % block
            continue
        length, kind = int.from_bytes(data[position + 4 : position + 6], "little"), data[position + 6]
        if length == 0 and kind == 0:  # zero padding at the end of a block
            position += block - position % block
            continue
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if WANDB_RECORD_TYPES[kind] in ("full", "last"):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(path, timeout: float = 60) -> list:
    """The run file's records once W&B's service has written its exit record: run.finish() returns when the
    run is over, and the service writes the file's last rows (the final history row among them) just after."""
    deadline = time.monotonic() + timeout
    while True:
        records = wandb_records(path)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.1)


@pytest.mark.kernels
def test_wandb_offline_run_holds_the_history_config_and_final_metrics(tiny_model_dir, tmp_path, offline_wandb, capfd):
    out = tmp_path / "run"
    result = lorarlhf.align(str(tiny_model_dir), pairs(), output_dir=out, report_to="wandb", **RUN)
    captured = capfd.readouterr()
    assert "wandb" not in (captured.out + captured.err).lower()  # silent, as WANDB_SILENT asks
    (run_dir,) = (out / "wandb").glob("offline-run-*")  # offline, inside output_dir
    (run_file,) = run_dir.glob("run-*.wandb")
    records = finished_records(run_file)

    history: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        if record.WhichOneof("record_type") == "history":
            for item in record.history.item:
                key = item.key or "/".join(item.nested_key)
                if not key.startswith("_"):  # W&B's own _step, _runtime, _timestamp
                    history.setdefault(key, []).append((record.history.step.num, json.loads(item.value_json)))
    expected = expected_scalars(out)
    assert sorted(history) == sorted(expected)
    for key, points in expected.items():
        assert [step for step, _ in history[key]] == [step for step, _ in points], key
        assert [v for _, v in history[key]] == pytest.approx([v for _, v in points], nan_ok=True), key

    (run,) = [record.run for record in records if record.WhichOneof("record_type") == "run"]
    config = {item.key: json.loads(item.value_json) for item in run.config.update}
    assert config["method"] == "dpo" and config["sft_steps"] == 2 and config["report_to"] == "wandb"
    assert run.project == "lorarlhf" and run.display_name == "run"  # defaults: WANDB_PROJECT, WANDB_NAME unset
    summary = {}
    for record in records:
        if record.WhichOneof("record_type") == "summary":
            summary.update({item.key: json.loads(item.value_json) for item in record.summary.update})
    final = json.loads((out / "metrics.json").read_text())
    assert final == result.metrics
    assert {key: summary[key] for key in final} == pytest.approx(final, nan_ok=True)
    exit_codes = [record.exit.exit_code for record in records if record.WhichOneof("record_type") == "exit"]
    assert exit_codes == [0]


def test_report_to_names_trackers_and_refuses_anything_else():
    assert DPOConfig().trackers == ()
    assert DPOConfig(report_to="tensorboard").trackers == ("tensorboard",)
    assert DPOConfig(report_to=["wandb", "tensorboard", "wandb"]).trackers == ("wandb", "tensorboard")
    assert DPOConfig(report_to="all").trackers == ("tensorboard", "wandb")
    assert DPOConfig(report_to=[]).trackers == ()
    # the command line: --set report_to=tensorboard,wandb
    overrides = _overrides("dpo", ["report_to=tensorboard, wandb"])
    assert DPOConfig(**overrides).trackers == ("tensorboard", "wandb")
    for bad in ("mlflow", ["tensorboard", "comet"], "", 1, None):
        with pytest.raises(ValueError, match=r"report_to=.* is not supported; choose one of \('none', 'all', "):
            DPOConfig(report_to=bad)


@pytest.mark.parametrize("tracker", ["wandb", "tensorboard"])
def test_a_missing_tracker_package_fails_before_the_model_loads(tracker, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, tracker, None)  # `import wandb` now raises ImportError, as if not installed
    message = f"report_to='{tracker}' needs the {tracker} package: pip install {tracker}"
    with pytest.raises(ImportError, match=message.replace("(", r"\(")):
        check_installed((tracker,))
    with pytest.raises(ImportError, match=message):  # the model path does not exist: it was never read
        lorarlhf.align(str(tmp_path / "no-model"), pairs(), output_dir=tmp_path / "run", report_to=tracker, **RUN)
    assert not (tmp_path / "run").exists()
