"""Report v3 (bench/quality_backbone.py): each cell's rate is chosen on seed 0's validation accuracy and test
accuracy is reported at it for every seed; the targets table compares the best learngene with random init and
weight selection at the same size, and its probe with the frozen ancestry's."""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from bench.quality_backbone import FROZEN, _cells, markdown, next_time_of_day  # noqa: E402


def run(val: dict[str, float], test: dict[str, float], probe: float) -> dict:
    return {"probe": {"val_accuracy": probe, "test_accuracy": probe},
            "finetune": {rate: {"val_accuracy": val[rate], "test_accuracy": test[rate]} for rate in val}}


def data() -> dict:
    results = {
        # seed 0 tries both rates; 0.001 wins on validation though 0.0003 wins on test
        "front fit|fashion|6x192x3|10|0": run({"0.001": 0.7, "0.0003": 0.6}, {"0.001": 0.60, "0.0003": 0.9}, 0.5),
        "front fit|fashion|6x192x3|10|1": run({"0.001": 0.5}, {"0.001": 0.70}, 0.6),
        "front fit|fashion|6x192x3|10|2": run({"0.001": 0.5}, {"0.001": 0.65}, 0.55),
        # one seed only: not a candidate for "best", however high
        "tleg fit|fashion|6x192x3|10|0": run({"0.001": 0.9}, {"0.001": 0.99}, 0.9),
        "random|fashion|6x192x3|10|0": run({"0.001": 0.5}, {"0.001": 0.40}, 0.3),
        "weight-selection|fashion|6x192x3|10|0": run({"0.001": 0.5}, {"0.001": 0.70}, 0.4),
        f"{FROZEN}|fashion|12x384x6|10|0": {"probe": {"val_accuracy": 0.8, "test_accuracy": 0.8}, "finetune": {}},
    }
    return {"results": results, "learngenes": {}, "descendants": {}, "skipped": [], "loadavg": []}


def test_rate_chosen_on_seed_zeros_validation_and_reported_on_test() -> None:
    cell = _cells(data())[("front fit", "fashion", "6x192x3", 10)]
    assert cell["rate"] == 0.001
    assert cell["finetune"] == [0.60, 0.70, 0.65]
    assert cell["probe"] == [0.5, 0.6, 0.55]


def test_targets_row_compares_the_best_learngene_at_the_same_size() -> None:
    report = markdown(data())
    row = next(line for line in report.splitlines() if line.startswith("| fashion | 10 | d6 w192 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "front fit"  # tleg fit scores more, on one seed
    assert cells[4] == "+0.250"  # 0.65 - 0.40
    assert cells[5] == "-0.050"  # 0.65 - 0.70: loses to weight selection, and says so
    assert cells[6] == "0.687"  # probe 0.55 / ancestry 0.80, three decimals: a 0.898 must not read as 0.90


def test_merging_a_merged_file_keeps_every_earlier_pass() -> None:
    """Merging report v3's merged raw file with a new pass listed the merged file as one pass, losing its record
    of the passes before it."""
    from bench.quality_backbone import merged

    first = {**data(), "setup": {"train_steps": 600}, "inits": [{"label": "pool train"}]}
    second = {**data(), "setup": {"train_steps": 1200}, "inits": [{"label": "tleg train"}]}
    third = {**data(), "setup": {"train_steps": 2400}, "inits": [{"label": "pool train d4 2400"}]}
    again = merged([merged([first, second]), third])
    assert [p["inits"] for p in again["passes"]] == [["pool train"], ["tleg train"], ["pool train d4 2400"]]


def test_a_deadline_past_midnight_is_tomorrows_time_not_todays() -> None:
    """Regression: --deadline 00:05 given at 22:10 was today's 00:05, long past, and the pass ran nothing."""
    import time

    evening = time.mktime((2026, 12, 31, 22, 10, 0, 0, 0, -1))  # the month's and the year's last day
    after_midnight = next_time_of_day("00:05", evening)
    assert time.localtime(after_midnight)[:5] == (2027, 1, 1, 0, 5)
    later_today = next_time_of_day("23:55", evening)
    assert time.localtime(later_today)[:5] == (2026, 12, 31, 23, 55)
    assert next_time_of_day("22:10", evening) > evening  # the very minute: the next day's


def test_every_fine_tuned_target_has_targets_rows_and_every_target_a_best_probe() -> None:
    """With ``--finetune mnist`` a pass fine-tunes MNIST descendants too: MNIST gets its rows in the targets table;
    the best-by-probe table ranks every target (it left out the fine-tuned one, so Fashion-MNIST's best frozen
    body was nowhere)."""
    d = data()
    for key, value in list(d["results"].items()):
        d["results"][key.replace("|fashion|", "|mnist|")] = value
    report = markdown(d).splitlines()
    targets = report[report.index("## Targets"):]
    assert any(line.startswith("| mnist | 10 | d6 w192 | front fit | +0.250 |") for line in targets)
    probes = [line for line in targets if line.startswith(("| fashion | 10 | d6 w192 | front fit | 0.550",
                                                          "| mnist | 10 | d6 w192 | front fit | 0.550"))]
    assert len(probes) == 2


def test_a_terminated_report_stops_the_service_it_started(tmp_path: Path) -> None:
    """Regression: ``kill`` of a running report (SIGTERM) ended the report's process alone; the service it had
    started kept condensing on both cores, beside the next pass's timings. Now the service goes with it."""
    import contextlib
    import os
    import signal
    import subprocess
    import time

    script = ("import sys, time; from pathlib import Path; sys.path.insert(0, sys.argv[1]);"
              "from bench.quality_backbone import exit_on_sigterm, service; exit_on_sigterm();\n"
              "with service(Path(sys.argv[2])) as (url, pid):\n"
              "    print(pid, flush=True); time.sleep(600)")
    (tmp_path / "data").mkdir()
    report = subprocess.Popen([sys.executable, "-c", script, str(ROOT), str(tmp_path / "data")],
                              stdout=subprocess.PIPE, text=True)
    try:
        served = int(report.stdout.readline())
        assert Path(f"/proc/{served}").exists()
        report.send_signal(signal.SIGTERM)
        assert report.wait(90) == 128 + signal.SIGTERM
        deadline = time.monotonic() + 10
        while Path(f"/proc/{served}").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not Path(f"/proc/{served}").exists(), "the service outlived the report"
    finally:
        report.kill()
        for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
            with contextlib.suppress(OSError):
                if str(tmp_path) in Path(f"/proc/{pid}/environ").read_bytes().decode(errors="replace"):
                    os.kill(int(pid), signal.SIGKILL)


def test_a_deadline_after_the_last_measurement_records_nothing_skipped(tmp_path: Path) -> None:
    """Regression (pass 59): a deadline that fell just after the last measurement wrote '0 measurement(s) not run'
    into the report's skipped list. Only measurements the deadline really left out are recorded, as one entry."""
    from bench.quality_backbone import Runner

    runner = Runner(tmp_path, tmp_path / "raw.json", deadline=None)
    try:
        assert runner.drop_at_deadline() == 0
        assert runner.data["skipped"] == []
        runner.queue_cell(("random", "mnist", (4, 192, 3), 10), None)
        runner.queue_cell(("random", "mnist", (4, 192, 3), 100), None)
        assert runner.drop_at_deadline() == 2
        assert runner.data["skipped"] == [{"cell": "deadline", "error": "2 measurement(s) not run"}]
    finally:
        runner.pool.shutdown(wait=False, cancel_futures=True)
