"""``prune2drive bench prefill`` and ``bench decode``: one table each, transformers generate vs ours."""

from __future__ import annotations

import re

import pytest
from conftest import run_cli

SMALL = ["--hidden", "64", "--ffn", "128", "--layers", "2", "--repeats", "1", "--no-profile", "--device", "cpu"]


def test_bench_prefill_compares_generate_dense_and_pruned_and_reports_agreement() -> None:
    out = run_cli("bench", "prefill", *SMALL, "--retain", "0.1")
    assert out.returncode == 0, out.stderr
    rows = {line[:24].strip(): line[24:].split() for line in out.stdout.splitlines()}  # name column: 24 wide
    assert {"transformers generate", "ours dense", "ours tfps 0.1"} <= set(rows)
    ttft, pre_vision, prefix, question, _, ideal = (float(x) for x in rows["ours tfps 0.1"][:6])
    assert ttft == pytest.approx(pre_vision + prefix + question, abs=0.2)  # TTFT's parts, the question on its own
    # One layer from K on over ~10% of the patches: attention's n^2 dominates a 64-wide model, so
    # the ideal is far above the 10x of the linear layers alone.
    assert ideal > 10.0
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
