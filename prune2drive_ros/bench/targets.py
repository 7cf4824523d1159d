"""The GPU targets table that ``scripts/gpu-check.sh`` ends with: measured rows in, pass or fail out.

Torch-free, so the table can be computed again from recorded rows (``prune2drive bench targets --rows``)
on any machine. ``bench.check`` measures the rows; this module names the GPU, derives the decode floor
(weight bytes / memory bandwidth) and the visual-prefill fraction, and judges every target against
the column that applies: the H100 SXM column on an H100 SXM, the "any GPU" column elsewhere.

A new target (issue 19: weights memory per format, int4 vs bf16 decode) is one ``Target`` entry in
``TARGETS`` plus the row ``bench.check`` measures for it.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

# -- the GPU -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GpuSpec:
    pattern: str
    """Regular expression matched against ``torch.cuda.get_device_name()``."""
    label: str
    bandwidth_gbs: float
    """Peak memory bandwidth from the vendor's data sheet, GB/s (10^9 bytes)."""
    min_memory_gib: float = 0.0
    """For names several memory sizes share (Jetson Orin reports "Orin" on every module)."""


# First match wins: the more specific names come first ("GH200" before "H200", "H100 PCIe" before "H100").
KNOWN_GPUS: tuple[GpuSpec, ...] = (
    GpuSpec(r"GH200", "GH200", 4000),
    GpuSpec(r"H200", "H200", 4800),
    GpuSpec(r"H100.*PCIe", "H100 PCIe", 2000),
    GpuSpec(r"H100.*NVL", "H100 NVL", 3900),
    GpuSpec(r"H100", "H100 SXM", 3350),  # "NVIDIA H100 80GB HBM3" is the SXM5 part
    GpuSpec(r"H800", "H800 SXM", 3350),
    GpuSpec(r"B200", "B200", 8000),
    GpuSpec(r"A100.*(80GB.*PCIe|PCIE-80GB)", "A100 80GB PCIe", 1935),
    GpuSpec(r"A100.*80GB", "A100 80GB SXM", 2039),
    GpuSpec(r"A100", "A100 40GB", 1555),
    GpuSpec(r"L40S", "L40S", 864),
    GpuSpec(r"L40\b", "L40", 864),
    GpuSpec(r"\bL4\b", "L4", 300),
    GpuSpec(r"A10G?\b", "A10", 600),
    GpuSpec(r"RTX 6000 Ada", "RTX 6000 Ada", 960),
    GpuSpec(r"RTX 5090", "RTX 5090", 1792),
    GpuSpec(r"RTX 4090", "RTX 4090", 1008),
    GpuSpec(r"RTX 3090", "RTX 3090", 936),
    GpuSpec(r"Thor", "Jetson AGX Thor", 273),
    GpuSpec(r"GB10", "DGX Spark (GB10)", 273),
    GpuSpec(r"Orin", "Jetson AGX Orin", 204.8, min_memory_gib=24),
    GpuSpec(r"Orin", "Jetson Orin NX", 102.4, min_memory_gib=12),
    GpuSpec(r"Orin", "Jetson Orin Nano", 68),
)
H100_SXM = "H100 SXM"


def identify_gpu(name: str, memory_gib: float | None = None) -> GpuSpec | None:
    """The table entry for a device name (and its memory, where the name is shared); None if unknown."""
    for spec in KNOWN_GPUS:
        if re.search(spec.pattern, name) and (memory_gib is None or memory_gib >= spec.min_memory_gib):
            return spec
    return None


# -- measured rows -------------------------------------------------------------------------------


@dataclass
class Row:
    """One measurement, printed and recorded the moment it is taken."""

    key: str
    value: float | str | None
    unit: str = ""
    note: str = ""
    problem: str = ""
    """Why this value does not count (a stage ran eagerly, a step failed); any problem fails its target."""

    def line(self) -> str:
        value = f"{self.value:.4g}" if isinstance(self.value, float) else str(self.value)
        text = f"row  {self.key:<24} {value:>12} {self.unit:<9}"
        text += f"  {self.note}" if self.note else ""
        return text + (f"  PROBLEM: {self.problem}" if self.problem else "")

    @classmethod
    def from_json(cls, line: str) -> Row:
        return cls(**json.loads(line))


class RowLog:
    """Prints each row as it is measured and appends it to a JSON-lines file; a timeout loses nothing."""

    def __init__(self, path: str | Path | None = None, echo=print):
        self.rows: dict[str, Row] = {}
        self.path = Path(path) if path else None
        self.echo = echo
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)

    def add(self, row: Row) -> Row:
        self.rows[row.key] = row
        self.echo(row.line(), flush=True)
        if self.path:
            with self.path.open("a") as f:
                f.write(json.dumps(asdict(row)) + "\n")
        return row


def read_rows(path: str | Path) -> dict[str, Row]:
    """Rows recorded by ``RowLog``; a line cut short by a kill is skipped, later rows of a key win."""
    rows: dict[str, Row] = {}
    for line in Path(path).read_text().splitlines():
        try:
            row = Row.from_json(line)
        except (ValueError, TypeError):
            continue
        rows[row.key] = row
    return rows


CAPTURED = ("graph", "compiled-graph")
STAGES = ("vision", "prefix", "question", "decode")


def uncaptured(paths: Mapping[str, str]) -> str:
    """'' when every stage of ``Answer.paths`` ran captured, else which did not and why."""
    missing = [f"{stage}: not reported" for stage in STAGES if stage not in paths]
    eager = [f"{stage}: {path}" for stage, path in paths.items() if not path.startswith(CAPTURED)]
    return "; ".join(missing + eager)


def junit_row(path: str | Path, on_gpu: bool) -> Row:
    """The ``gpu_tests`` row from pytest's JUnit XML: how many gpu-marked tests did not pass.

    On a GPU a skipped test counts too (it did not run); without one every gpu test skips by design.
    """
    path = Path(path)
    if not path.is_file():
        return Row("gpu_tests", None, "tests", problem=f"no pytest report at {path} (pytest did not finish)")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        return Row("gpu_tests", None, "tests", problem=f"unreadable pytest report: {exc}")
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    count = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    passed = count["tests"] - count["failures"] - count["errors"] - count["skipped"]
    note = f"{passed} passed, {count['failures']} failed, {count['errors']} errors, {count['skipped']} skipped"
    problem = ""
    if count["failures"] or count["errors"]:
        problem = "gpu-marked tests failed"
    elif count["tests"] == 0:
        problem = "no gpu-marked test was collected"
    elif on_gpu and count["skipped"]:
        problem = "gpu-marked tests were skipped on a GPU"
    return Row("gpu_tests", float(count["tests"] - passed), "not passed", note, problem)


# -- derived values ------------------------------------------------------------------------------


def tail_of_ideal(dense_prefix_ms: float, pruned_prefix_ms: float, head_fraction: float,
                  tail_flops_ratio: float) -> float:
    """Measured speed-up of the layers from K on, as a fraction of the speed-up their FLOPs allow.

    Layers before K run on every token in both runs, and dense layers all cost the same, so the dense
    prefix's first ``head_fraction`` (K / layers) is subtracted from both; the pruned tail keeps the prune.
    """
    head = head_fraction * dense_prefix_ms
    pruned_tail = pruned_prefix_ms - head
    if pruned_tail <= 0:
        raise ValueError(f"the pruned prefix ({pruned_prefix_ms:.3f} ms) is no slower than its estimated "
                         f"dense head ({head:.3f} ms): the timings are too noisy to split")
    return (dense_prefix_ms - head) / pruned_tail / tail_flops_ratio


def _value(rows: Mapping[str, Row], key: str) -> float | None:
    row = rows.get(key)
    return row.value if row is not None and isinstance(row.value, (int, float)) else None


def _problems(rows: Mapping[str, Row], keys: Iterable[str]) -> str:
    return "; ".join(dict.fromkeys(rows[k].problem for k in keys if k in rows and rows[k].problem))


def _derived(rows: Mapping[str, Row], key: str, needs: tuple[str, ...], compute, unit: str, note: str) -> Row | None:
    if any(_value(rows, k) is None for k in needs):
        return None
    try:
        value = compute(*(_value(rows, k) for k in needs))
    except (ValueError, ZeroDivisionError) as exc:  # no value (noise), not a fault: a GPU run still fails on it
        return Row(key, None, unit, f"no value: {exc}", _problems(rows, needs))
    return Row(key, float(value), unit, note, _problems(rows, needs))


@dataclass(frozen=True)
class Context:
    """What the table is judged against: which GPU, its bandwidth, which column, and the run's size."""

    device: str
    on_gpu: bool
    spec: GpuSpec | None
    bandwidth_gbs: float | None
    bandwidth_note: str
    column: str
    preset: str
    stopped: str = ""
    """Why the measurements stopped early (the ``error`` row), if they did."""


def context(rows: Mapping[str, Row]) -> Context:
    device = str(rows["device"].value) if "device" in rows else "unknown"
    on_gpu = device not in ("cpu", "unknown")
    spec = identify_gpu(device, _value(rows, "memory_gib")) if on_gpu else None
    preset = str(rows["preset"].value) if "preset" in rows else "full"
    copy = _value(rows, "copy_gbs")
    if spec is not None:
        bandwidth, note = spec.bandwidth_gbs, f"{spec.label}, {spec.bandwidth_gbs:g} GB/s data sheet"
    elif on_gpu and copy:
        bandwidth, note = copy, f"GPU not in the bandwidth table: the measured copy bandwidth, {copy:.0f} GB/s, stands in"
    else:
        bandwidth, note = None, "no GPU" if not on_gpu else "GPU not in the bandwidth table and no copy measured"
    column = H100_SXM if spec is not None and spec.label == H100_SXM else "any GPU"
    error = rows.get("error")
    stopped = f"{error.value}: {error.note}" if error is not None else ""
    return Context(device, on_gpu, spec, bandwidth, note, column, preset, stopped)


def derive(rows: Mapping[str, Row], ctx: Context) -> dict[str, Row]:
    """The recorded rows plus the values the targets compare that are computed from them."""
    out = dict(rows)
    new = []
    if ctx.bandwidth_gbs:
        new.append(_derived(rows, "decode_floor_ms", ("weights_bytes",), lambda b: b / (ctx.bandwidth_gbs * 1e9) * 1e3,
                            "ms/token", f"weight bytes / {ctx.bandwidth_gbs:.0f} GB/s"))
    new.append(_derived(rows, "dense_prefix_ms", ("dense_ttft_ms", "dense_question_ms", "dense_pre_vision_ms"),
                        lambda t, q, v: t - q - v, "ms", "dense TTFT - question - preprocess and vision"))
    new.append(_derived(rows, "prefix_ms", ("ttft_ms", "question_ms", "pre_vision_ms"),
                        lambda t, q, v: t - q - v, "ms", "pruned TTFT - question - preprocess and vision"))
    for weights in ("int4", "int8"):
        new.append(_derived(rows, f"{weights}_decode_ratio", (f"{weights}_decode_b1_ms", "decode_b1_ms"),
                            lambda q, b: q / b, "x", f"{weights} / bf16 ms per token, same run"))
    out.update({r.key: r for r in new if r is not None})
    if "prune_layer" in rows and "layers" in rows:
        head = _value(rows, "prune_layer") / _value(rows, "layers")
        row = _derived(out, "visual_prefill_of_ideal", ("dense_prefix_ms", "prefix_ms", "tail_flops_ratio"),
                       lambda d, p, r: tail_of_ideal(d, p, head, r), "of ideal",
                       "speed-up of layers K.. (prune included) / their FLOPs ratio")
        if row is not None:
            out[row.key] = row
    return out


# -- the targets ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Limit:
    bound: float
    of: str = ""
    """The measurement the bound scales ("decode_b1_ms": 1.3x batch 1); empty: an absolute bound."""

    def resolve(self, values: Mapping[str, Row]) -> float | None:
        if not self.of:
            return self.bound
        base = _value(values, self.of)
        return None if base is None else self.bound * base


# How a scaled bound is named in the table.
BASE_NAMES = {
    "decode_floor_ms": "the weight-streaming floor",
    "decode_b1_ms": "batch 1",
    "generate_ttft_ms": "transformers' dense TTFT",
}


@dataclass(frozen=True)
class Target:
    key: str
    measure: str
    op: str
    """"<=" or ">="."""
    h100_sxm: Limit | None
    any_gpu: Limit | None
    """None: reported, not judged."""
    any_size: bool = False
    """Judged on ``--quick`` too: the measure does not depend on the model's size."""
    percent: bool = False

    def limit(self, column: str) -> Limit | None:
        return self.h100_sxm if column == H100_SXM else self.any_gpu


TARGETS: tuple[Target, ...] = (
    Target("decode_b1_ms", "decode, batch 1 (ms/token)", "<=", Limit(7.0), Limit(1.4, "decode_floor_ms")),
    Target("decode_b8_ms", "decode, batch 8, shared prefix (ms/step)", "<=", Limit(10.0), Limit(1.3, "decode_b1_ms")),
    Target("ttft_ms", "time to first token, retain 0.1, vision included (ms)", "<=", Limit(35.0),
           Limit(0.25, "generate_ttft_ms")),
    Target("visual_prefill_of_ideal", "visual prefill (layer K on, question excluded), retain 0.1", ">=",
           Limit(0.8), Limit(0.8), percent=True),
    Target("tfps_ms", "T-FPS, 6 x 729 x 4096 (ms)", "<=", Limit(1.0), Limit(1.0), any_size=True),
    Target("dense_ttft_ms", "dense TTFT vs transformers generate (ms)", "<=", Limit(1.0, "generate_ttft_ms"),
           Limit(1.0, "generate_ttft_ms")),
    Target("configure_s", "capture + compile time at configure (s)", "<=", Limit(60.0), None),
    Target("int4_decode_ratio", "int4 decode, batch 1, vs bf16 (x)", "<=", Limit(0.5), Limit(0.5)),
    Target("int8_decode_ratio", "int8 decode, batch 1, vs bf16 (x)", "<=", None, None),
    Target("int4_llm_gb", "int4 language-model weights (GB)", "<=", Limit(5.5), Limit(5.5)),
    Target("int8_llm_gb", "int8 language-model weights (GB)", "<=", Limit(9.0), Limit(9.0)),
)
TESTS_TARGET = Target("gpu_tests", "gpu-marked tests not passed (pytest -m gpu)", "<=", Limit(0.0), Limit(0.0),
                      any_size=True)


@dataclass(frozen=True)
class Verdict:
    measure: str
    value: str
    target: str
    result: str

    @property
    def failed(self) -> bool:
        return self.result.startswith("FAIL")


def _fmt(value: float | None, percent: bool) -> str:
    if value is None:
        return "-"
    return f"{value:.0%}" if percent else f"{value:.3g}"


def judge(target: Target, values: Mapping[str, Row], ctx: Context) -> Verdict:
    limit = target.limit(ctx.column)
    row = values.get(target.key)
    value = row.value if row is not None and isinstance(row.value, (int, float)) else None
    shown = _fmt(value, target.percent)
    if limit is None:
        rule = "reported"
    else:
        bound = limit.resolve(values)
        rule = f"{target.op} {_fmt(limit.bound, target.percent) if not limit.of else f'{limit.bound:g}x'}"
        rule += f" {BASE_NAMES.get(limit.of, limit.of)}" if limit.of else ""
        rule += f" = {_fmt(bound, target.percent)}" if limit.of and bound is not None else ""

    if row is None:
        why = f"not measured; stopped by {ctx.stopped}" if ctx.stopped else "not measured"
        return Verdict(target.measure, shown, rule, f"FAIL ({why})")
    if row.problem:
        return Verdict(target.measure, shown, rule, f"FAIL ({row.problem})")
    if not ctx.on_gpu:
        return Verdict(target.measure, shown, rule, "n/a (no GPU)")
    if limit is None:
        return Verdict(target.measure, shown, rule, "reported")
    if value is None:
        return Verdict(target.measure, shown, rule, f"FAIL ({row.note or 'no value'})")
    if bound is None:
        return Verdict(target.measure, shown, rule, f"FAIL (no value for {BASE_NAMES.get(limit.of, limit.of)})")
    ok = value <= bound if target.op == "<=" else value >= bound
    if ctx.preset != "full" and not target.any_size:
        return Verdict(target.measure, shown, rule, f"dry run: {'pass' if ok else 'fail'}")
    return Verdict(target.measure, shown, rule, "pass" if ok else "FAIL")


def evaluate(rows: Mapping[str, Row], *, with_tests: bool) -> tuple[Context, dict[str, Row], list[Verdict]]:
    ctx = context(rows)
    values = derive(rows, ctx)
    targets = TARGETS + ((TESTS_TARGET,) if with_tests else ())
    return ctx, values, [judge(t, values, ctx) for t in targets]


def render(ctx: Context, values: Mapping[str, Row], verdicts: list[Verdict]) -> str:
    """The table, with the GPU, its bandwidth and the decode floor above it and the verdict below."""
    lines = [f"== targets on {ctx.device} ({ctx.bandwidth_note}); column: {ctx.column}"
             + ("" if ctx.preset == "full" else f"; {ctx.preset} run: a dry run, the model is not DriveMM's size")]
    weights, floor = _value(values, "weights_bytes"), _value(values, "decode_floor_ms")
    if weights is not None:
        where = f" / {ctx.bandwidth_gbs:.0f} GB/s = {floor:.2f} ms/token" if floor is not None else \
            " (no bandwidth known: no floor)"
        lines.append(f"decode floor: {weights / 1e9:.2f} GB of weights read per token{where}")
    for key in ("dense_prefix_ms", "prefix_ms"):
        if key in values and values[key].value is not None:
            lines.append(f"{key}: {values[key].value:.2f} ms ({values[key].note})")
    width = max(len(v.measure) for v in verdicts)
    lines.append(f"{'measure':<{width}}  {'value':>9}  {'target':<42}  result")
    lines += [f"{v.measure:<{width}}  {v.value:>9}  {v.target:<42}  {v.result}" for v in verdicts]
    failed = [v for v in verdicts if v.failed]
    judged = [v for v in verdicts if v.result in ("pass", "FAIL")]
    lines.append(f"verdict: {len(failed)} failed of {len(verdicts)} targets ({len(judged)} judged on this run)"
                 + (": FAIL" if failed else ": pass" if judged else ": no target judged on this run"))
    return "\n".join(lines)
