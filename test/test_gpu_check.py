"""scripts/gpu-check.sh and ``prune2drive bench targets``: the table that decides, from recorded rows and on a CPU.

No GPU here: the table's logic (GPU bandwidth table, floors, columns, captured paths, exit codes) is
checked on recorded rows, and the script's flow on a CPU with a tiny model, where every target is
"n/a (no GPU)" but a missing row, a failed step or a timeout still fails the run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
from conftest import REPO

from prune2drive_ros.bench.targets import (
    Row,
    RowLog,
    evaluate,
    identify_gpu,
    junit_row,
    read_rows,
    tail_of_ideal,
    uncaptured,
)
from prune2drive_ros.cli import main

CAPTURED_PATHS = {"vision": "graph", "prefix": "compiled-graph", "question": "compiled-graph", "decode": "graph"}


@pytest.mark.parametrize(("name", "memory", "label", "bandwidth"), [
    ("NVIDIA H100 80GB HBM3", 79.1, "H100 SXM", 3350),
    ("NVIDIA H100 PCIe", 79.1, "H100 PCIe", 2000),
    ("NVIDIA H100 NVL", 93.6, "H100 NVL", 3900),
    ("NVIDIA H200", 139.8, "H200", 4800),
    ("NVIDIA GH200 480GB", 94.5, "GH200", 4000),
    ("NVIDIA A100-SXM4-40GB", 39.4, "A100 40GB", 1555),
    ("NVIDIA A100-SXM4-80GB", 79.2, "A100 80GB SXM", 2039),
    ("NVIDIA A100 80GB PCIe", 79.2, "A100 80GB PCIe", 1935),
    ("NVIDIA L4", 22.0, "L4", 300),
    ("NVIDIA L40S", 44.4, "L40S", 864),
    ("NVIDIA GeForce RTX 4090", 23.6, "RTX 4090", 1008),
    ("Orin", 61.4, "Jetson AGX Orin", 204.8),
    ("Orin", 15.3, "Jetson Orin NX", 102.4),
    ("NVIDIA Thor", 122.8, "Jetson AGX Thor", 273),
])
def test_known_gpus_get_their_data_sheet_bandwidth(name, memory, label, bandwidth) -> None:
    spec = identify_gpu(name, memory)
    assert (spec.label, spec.bandwidth_gbs) == (label, bandwidth)


def test_unknown_gpu_is_not_guessed() -> None:
    assert identify_gpu("Tesla K80", 11.2) is None


def _h100_rows(device: str = "NVIDIA H100 80GB HBM3", **changes) -> list[Row]:
    """A full run's rows as a fast H100 SXM would record them (values picked to pass its column)."""
    values = {
        "memory_gib": 79.1, "copy_gbs": 2900.0, "tfps_ms": 0.8, "weights_bytes": 15.0e9, "configure_s": 41.0,
        "ttft_ms": 30.0, "question_ms": 4.0, "pre_vision_ms": 9.0, "prune_layer": 1.0, "layers": 32.0,
        "tail_flops_ratio": 9.0, "decode_b1_ms": 6.5, "decode_b8_ms": 8.0, "dense_ttft_ms": 150.0,
        "dense_question_ms": 5.0, "dense_pre_vision_ms": 9.0, "generate_ttft_ms": 160.0,
        "int4_decode_b1_ms": 3.0, "int8_decode_b1_ms": 4.0, "int4_llm_gb": 5.3, "int8_llm_gb": 8.6,
    } | changes
    return [Row("preset", "full"), Row("device", device)] + [Row(k, v) for k, v in values.items()]


def _table(tmp_path: Path, rows: list[Row], capsys, junit: str | None = None) -> tuple[int, dict[str, str]]:
    """Exit code and {measure: result} of ``prune2drive bench targets --rows`` on recorded rows."""
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(asdict(r)) + "\n" for r in rows))
    rc = main(["bench", "targets", "--rows", str(path), *(["--junit", junit] if junit else [])])
    lines = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("measure"))
    results = {}
    for line in lines[start + 1:]:
        if line.startswith("verdict"):
            break
        measure = line[:line.index("  ")]
        results[measure] = line.rsplit("  ", 1)[1].strip()
    return rc, results


def test_an_h100_sxm_is_judged_on_its_own_column(tmp_path, capsys) -> None:
    rc, results = _table(tmp_path, _h100_rows(), capsys)
    assert rc == 0
    assert len(results) == 11  # configure <= 60 s: judged in this column; int8 decode only reported
    assert set(results.values()) == {"pass", "reported"} and results["int8 decode, batch 1, vs bf16 (x)"] == "reported"


def test_another_gpu_is_judged_on_the_any_gpu_column_against_its_bandwidth(tmp_path, capsys) -> None:
    # 6.5 ms/token meets the H100's 7 ms, but an H200's floor is 15 GB / 4800 GB/s = 3.1 ms: 1.4x is 4.4 ms.
    rc, results = _table(tmp_path, _h100_rows("NVIDIA H200"), capsys)
    assert rc == 1
    assert results["decode, batch 1 (ms/token)"] == "FAIL"
    assert results["time to first token, retain 0.1, vision included (ms)"] == "pass"  # 30 <= 0.25 x 160
    assert results["capture + compile time at configure (s)"] == "reported"  # no bound in that column


def test_the_decode_floor_is_weight_bytes_over_the_bandwidth(tmp_path, capsys) -> None:
    _table(tmp_path, _h100_rows("NVIDIA H200", decode_b1_ms=4.3), capsys)
    rows = read_rows(tmp_path / "rows.jsonl")
    _, values, verdicts = evaluate(rows, with_tests=False)
    assert values["decode_floor_ms"].value == pytest.approx(15e9 / 4800e9 * 1e3)
    assert next(v for v in verdicts if v.measure.startswith("decode, batch 1")).result == "pass"


def test_an_uncaptured_stage_fails_its_rows_whatever_the_time(tmp_path, capsys) -> None:
    problem = uncaptured(CAPTURED_PATHS | {"question": "eager (capture failed: RuntimeError: sync)"})
    assert problem == "question: eager (capture failed: RuntimeError: sync)"
    rows = [r if r.key != "decode_b1_ms" else Row(r.key, r.value, problem=problem) for r in _h100_rows()]
    rc, results = _table(tmp_path, rows, capsys)
    assert rc == 1
    assert results["decode, batch 1 (ms/token)"] == f"FAIL ({problem})"


def test_paths_contract() -> None:
    assert uncaptured(CAPTURED_PATHS) == ""
    assert uncaptured({"vision": "graph"}) == "prefix: not reported; question: not reported; decode: not reported"
    assert uncaptured(CAPTURED_PATHS | {"vision": "eager (cpu)"}) == "vision: eager (cpu)"


def test_rows_lost_to_a_timeout_fail_as_not_measured(tmp_path, capsys) -> None:
    rows = [r for r in _h100_rows() if r.key not in ("dense_ttft_ms", "generate_ttft_ms")]
    rc, results = _table(tmp_path, rows, capsys)
    assert rc == 1
    assert results["dense TTFT vs transformers generate (ms)"] == "FAIL (not measured)"
    assert results["T-FPS, 6 x 729 x 4096 (ms)"] == "pass"


def test_a_crash_fails_what_it_left_unmeasured_and_names_the_cause(tmp_path, capsys) -> None:
    rows = [r for r in _h100_rows() if r.key in ("preset", "device", "tfps_ms")]
    rows.append(Row("error", "RuntimeError", note="capture failed", problem="the benchmark stopped"))
    rc, results = _table(tmp_path, rows, capsys)
    assert rc == 1
    assert results["decode, batch 1 (ms/token)"] == "FAIL (not measured; stopped by RuntimeError: capture failed)"
    assert results["T-FPS, 6 x 729 x 4096 (ms)"] == "pass"


def test_visual_prefill_fraction_removes_the_dense_head_from_both_runs() -> None:
    # 32 layers, K = 1: the dense prefix of 64 ms is 2 ms of head and 62 of tail; the pruned one spends
    # 2 + 9.75 ms, a 6.36x tail speed-up where FLOPs allow 8x.
    assert tail_of_ideal(64.0, 11.75, 1 / 32, 8.0) == pytest.approx(62 / 9.75 / 8)
    with pytest.raises(ValueError, match="too noisy"):
        tail_of_ideal(64.0, 1.5, 1 / 32, 8.0)


def test_the_recorded_rows_give_the_visual_prefill_fraction(tmp_path, capsys) -> None:
    # dense prefix 150 - 5 - 9 = 136 ms (head 4.25), pruned 30 - 4 - 9 = 17 ms: (131.75 / 12.75) / 9 = 115%.
    _table(tmp_path, _h100_rows(), capsys)
    _, values, _ = evaluate(read_rows(tmp_path / "rows.jsonl"), with_tests=False)
    assert values["visual_prefill_of_ideal"].value == pytest.approx((136 - 4.25) / (17 - 4.25) / 9)


def test_timings_too_noisy_to_split_fail_on_a_gpu_and_are_no_fault_on_a_cpu(tmp_path, capsys) -> None:
    measure = "visual prefill (layer K on, question excluded), retain 0.1"
    noisy = _h100_rows(ttft_ms=15.0)  # pruned prefix 2 ms, below the dense head's 4.25 ms
    rc, results = _table(tmp_path, noisy, capsys)
    assert rc == 1 and results[measure].startswith("FAIL (no value: the pruned prefix")
    on_cpu = [Row("device", "cpu") if r.key == "device" else r for r in noisy]
    rc, results = _table(tmp_path, on_cpu, capsys)
    assert rc == 0 and results[measure] == "n/a (no GPU)"


def test_quick_runs_judge_only_what_does_not_depend_on_the_model_size(tmp_path, capsys) -> None:
    rows = [Row("preset", "quick") if r.key == "preset" else r for r in _h100_rows(decode_b1_ms=50.0)]
    rc, results = _table(tmp_path, rows, capsys)
    assert rc == 0
    assert results["decode, batch 1 (ms/token)"] == "dry run: fail"
    assert results["T-FPS, 6 x 729 x 4096 (ms)"] == "pass"


def test_unknown_gpu_uses_the_measured_copy_bandwidth_and_says_so(tmp_path, capsys) -> None:
    _, results = _table(tmp_path, _h100_rows("NVIDIA Future X1", decode_b1_ms=7.0), capsys)
    # 15 GB / 2900 GB/s = 5.2 ms; 1.4x = 7.2 ms.
    assert results["decode, batch 1 (ms/token)"] == "pass"
    ctx, _, _ = evaluate(read_rows(tmp_path / "rows.jsonl"), with_tests=False)
    assert "not in the bandwidth table" in ctx.bandwidth_note and ctx.bandwidth_gbs == 2900.0


def _junit(tmp_path: Path, tests: int, failures: int = 0, errors: int = 0, skipped: int = 0) -> str:
    path = tmp_path / "junit.xml"
    path.write_text(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" '
                    f'failures="{failures}" errors="{errors}" skipped="{skipped}"/></testsuites>')
    return str(path)


def test_gpu_tests_must_all_run_and_pass_on_a_gpu(tmp_path, capsys) -> None:
    measure = "gpu-marked tests not passed (pytest -m gpu)"
    rc, results = _table(tmp_path, _h100_rows(), capsys, _junit(tmp_path, 12))
    assert rc == 0 and results[measure] == "pass"
    rc, results = _table(tmp_path, _h100_rows(), capsys, _junit(tmp_path, 12, skipped=1))
    assert rc == 1 and results[measure] == "FAIL (gpu-marked tests were skipped on a GPU)"
    rc, results = _table(tmp_path, _h100_rows(), capsys, str(tmp_path / "missing.xml"))
    assert rc == 1 and results[measure].startswith("FAIL (no pytest report")


def test_on_a_cpu_skipped_gpu_tests_are_expected_but_failures_are_not(tmp_path) -> None:
    assert not junit_row(_junit(tmp_path, 5, skipped=5), on_gpu=False).problem
    assert junit_row(_junit(tmp_path, 5, errors=1, skipped=4), on_gpu=False).problem == "gpu-marked tests failed"
    assert junit_row(_junit(tmp_path, 0), on_gpu=False).problem == "no gpu-marked test was collected"


def test_row_log_writes_each_row_before_returning(tmp_path) -> None:
    printed = []
    log = RowLog(tmp_path / "rows.jsonl", echo=lambda line, flush: printed.append((line, flush)))
    log.add(Row("tfps_ms", 0.5, "ms", "note"))
    assert printed == [(printed[0][0], True)] and "tfps_ms" in printed[0][0]
    assert read_rows(tmp_path / "rows.jsonl")["tfps_ms"].value == 0.5  # on disk already, not at exit
    with (tmp_path / "rows.jsonl").open("a") as f:
        f.write('{"key": "ttft_ms", "val')  # a line cut short by a kill
    assert set(read_rows(tmp_path / "rows.jsonl")) == {"tfps_ms"}


def _gpu_check(tmp_path: Path, *args: str, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(["bash", "scripts/gpu-check.sh", *args], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHON": sys.executable, "OUT": str(tmp_path / "out"), **(env or {})})


def test_gpu_check_cpu_dry_run_prints_rows_as_measured_and_ends_with_the_table(tmp_path) -> None:
    proc = _gpu_check(tmp_path, "--cpu")
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("row  "):
                break
        # The first row reached the pipe while the run goes on: rows are not held back to the end.
        assert proc.poll() is None, "".join(lines)
        lines += proc.stdout.readlines()
    finally:
        rc = proc.wait(timeout=600)
    out = "".join(lines)
    assert rc == 0, out
    assert "transformers 5." in out and "pytest " in out and "torch CUDA" in out  # every version printed
    table = (tmp_path / "out" / "table.txt").read_text()
    results = [line.rsplit("  ", 1)[1] for line in table.splitlines()[table.splitlines().index(
        next(x for x in table.splitlines() if x.startswith("measure"))) + 1:] if not line.startswith("verdict")]
    assert len(results) == 12 and set(results) == {"n/a (no GPU)"}, table
    rows = read_rows(tmp_path / "out" / "rows.jsonl")
    assert {"tfps_ms", "configure_s", "ttft_ms", "decode_b1_ms", "decode_b8_ms", "dense_ttft_ms",
            "generate_ttft_ms"} <= set(rows)
    assert rows["agreement"].value == "3/3"  # fp32 on a CPU: ours dense is exactly generate


def test_gpu_check_that_runs_out_of_time_still_prints_the_table_and_fails(tmp_path) -> None:
    proc = _gpu_check(tmp_path, "--cpu", env={"GPU_CHECK_TESTS_S": "1", "GPU_CHECK_BENCH_S": "1"})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 1, out
    assert "benchmarks: timed out after 1 s" in out
    assert "FAIL (not measured)" in out and "FAIL (no pytest report" in out
