"""``prune2drive bench prefill`` and ``bench decode``: one table each, transformers generate vs ours."""

from __future__ import annotations

import re

from conftest import run_cli

SMALL = ["--hidden", "64", "--ffn", "128", "--layers", "2", "--repeats", "1", "--no-profile", "--device", "cpu"]


def test_bench_prefill_compares_generate_dense_and_pruned_and_reports_agreement() -> None:
    out = run_cli("bench", "prefill", *SMALL, "--retain", "0.1")
    assert out.returncode == 0, out.stderr
    rows = {line[:24].strip(): line[24:].split() for line in out.stdout.splitlines()}  # name column: 24 wide
    assert {"transformers generate", "ours dense", "ours tfps 0.1"} <= set(rows)
    ideal = float(rows["ours tfps 0.1"][5])
    assert 1.0 < ideal < 10.0  # pruning 90% of the visual tokens after one of two layers
    # fp32 on a CPU: ours dense must produce exactly generate's greedy tokens.
    assert re.search(r"ours dense vs generate, greedy, torch.float32: 8/8 tokens equal \(all equal\)", out.stdout)


def test_bench_decode_reports_batch_1_and_8_for_every_row() -> None:
    out = run_cli("bench", "decode", *SMALL, "--new-tokens", "3", "--no-generate")
    assert out.returncode == 0, out.stderr
    lines = [line for line in out.stdout.splitlines() if line.startswith("ours")]
    assert [line[:24].strip() for line in lines] == ["ours dense", "ours tfps 0.1"]
    for line in lines:
        b1, b8 = (float(x) for x in line[24:].split()[:2])
        assert b1 > 0 and b8 > 0
        assert line.rstrip().endswith("eager")  # no CUDA graphs on a CPU, and the table says so
