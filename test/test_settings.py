"""One source per setting: ``prune2drive_ros.settings`` against every place that used to state its own default."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from prune2drive_ros import settings
from prune2drive_ros.settings import BY_NAME, CLI_SETTINGS, NODE_PARAMETERS, RUNNER_SETTINGS, SETTINGS

PACKAGE = REPO / "prune2drive_ros"

# Every command that loads a model or drives the node, by the module whose add_arguments builds its flags.
ENTRY_POINTS = ["prune2drive_ros.eval.run", "prune2drive_ros.eval.optimize", "prune2drive_ros.demo",
                "prune2drive_ros.training.study", "prune2drive_ros.bench.prefill", "prune2drive_ros.bench.decode",
                "prune2drive_ros.bench.vision", "prune2drive_ros.bench.pruning"]
# (module, flag) pairs whose flag spells a setting's name but means something else.
OTHER_MEANING = {
    ("prune2drive_ros/bench/pruning.py", "--dtype"): "the random features' dtype, not the model's",
    ("prune2drive_ros/bench/vision.py", "--engine-dir"): "a benchmark builds into a temporary folder unless told",
    ("prune2drive_ros/vlm/convert.py", "--dtype"): "the dtype convert-model stores the weights in",
    **{(f"prune2drive_ros/bench/{name}.py", "--retain"): "the ratios a benchmark compares side by side"
       for name in ("prefill", "decode", "pruning")},
    ("prune2drive_ros/training/testbed.py", "pruning"): "the test bed's own check of its training runs dense",
}


def test_the_settings_module_imports_without_torch_or_ros() -> None:
    code = ("import sys, prune2drive_ros.settings; "
            "bad = [m for m in ('torch', 'rclpy', 'transformers') if m in sys.modules]; assert not bad, bad")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr


def test_every_setting_is_well_formed() -> None:
    assert len(BY_NAME) == len(SETTINGS), "duplicate setting names"
    assert len({s.param_name for s in NODE_PARAMETERS}) == len(NODE_PARAMETERS), "duplicate parameter names"
    for spec in SETTINGS:
        assert spec.description, spec.name
        assert spec.runner or spec.node, f"{spec.name} is used by nothing"
        assert not spec.cli or spec.runner, f"{spec.name}: only runner settings are command-line flags"
        assert settings.check(spec.name, spec.default) is None, f"{spec.name}: the default fails its own check"
        assert spec.default is not None or spec.example, f"{spec.name}: an unset list needs an example"


def test_runner_config_fields_and_defaults_are_the_settings() -> None:
    from prune2drive_ros.vlm.config import RunnerConfig

    fields = {f.name: f for f in dataclasses.fields(RunnerConfig)}
    assert list(fields) == [s.name for s in RUNNER_SETTINGS]
    config = RunnerConfig()
    for spec in RUNNER_SETTINGS:
        value = getattr(config, spec.name)
        expected = tuple(spec.default) if isinstance(spec.default, list) else spec.default
        assert value == expected, f"RunnerConfig.{spec.name} = {value!r}, settings say {spec.default!r}"


def test_runner_config_checks_values_with_the_settings() -> None:
    from prune2drive_ros.vlm.config import RunnerConfig

    for name, bad in [("retain", 0.0), ("max_new_tokens", 0), ("cuda_graphs", "sometimes"), ("pruning", "all"),
                      ("vision_backend", "tensorflow"), ("view_ratios", [0.5] * 3), ("top_p", 0.0)]:
        with pytest.raises(ValueError, match=name):
            RunnerConfig(**{name: bad})
    assert RunnerConfig(retain=1).retain == 1.0 and isinstance(RunnerConfig(retain=1).retain, float)
    assert RunnerConfig.from_kwargs("m", device=None, dtype=None).device == "auto"


def test_divprune_prunes_before_the_llm_unless_told_otherwise() -> None:
    from prune2drive_ros.vlm.config import RunnerConfig

    assert RunnerConfig(pruning="divprune").layer == 0
    assert RunnerConfig(pruning="tfps").layer == settings.DEFAULT_PRUNE_LAYER == 1
    assert RunnerConfig(pruning="divprune", prune_layer=2).layer == 2
    for method in settings.PRUNING_METHODS:
        assert RunnerConfig(pruning=method).layer == settings.prune_layer_for(method)


def _parser(module_name: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    importlib.import_module(module_name).add_arguments(parser)
    return parser


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _actions(sub)
        else:
            out.append(action)
    return out


@pytest.mark.parametrize("module_name", ENTRY_POINTS)
def test_entry_point_flags_take_the_settings_defaults(module_name: str) -> None:
    path = "prune2drive_ros/" + "/".join(module_name.split(".")[1:]) + ".py"
    flags = {BY_NAME[name].flag_name: BY_NAME[name] for name in CLI_SETTINGS}
    seen = 0
    for action in _actions(_parser(module_name)):
        for option in action.option_strings:
            spec = flags.get(option)
            if spec is None or (path, option) in OTHER_MEANING:
                continue
            seen += 1
            assert action.dest == spec.name, f"{module_name} {option}"
            assert action.default == spec.default, (
                f"{module_name} {option} defaults to {action.default!r}; the setting's default is {spec.default!r}")
    assert seen, f"{module_name} takes no setting as a flag"


def _python_files() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if p.name != "settings.py"]


def test_no_module_states_a_default_of_its_own() -> None:
    """A setting's name as a function parameter or a dataclass field with a literal default, or a setting's
    flag added by hand, anywhere but settings.py, is a second source."""
    names = {s.name for s in SETTINGS} | {s.param_name for s in NODE_PARAMETERS}
    # Argument names common enough to mean other things in helpers (a pruner's seed, a rig's autostart).
    generic = {"device", "dtype", "seed", "model", "questions", "autostart"}
    flags = {BY_NAME[n].flag_name for n in CLI_SETTINGS}
    found = []
    for path in _python_files():
        rel = path.relative_to(REPO).as_posix()
        tree = ast.parse(path.read_text(), filename=rel)
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args
                positional = args.posonlyargs + args.args
                pairs = list(zip(positional[len(positional) - len(args.defaults):], args.defaults))
                pairs += [(a, d) for a, d in zip(args.kwonlyargs, args.kw_defaults) if d is not None]
                for arg, value in pairs:
                    if (arg.arg in names and arg.arg not in generic and isinstance(value, ast.Constant)
                            and value.value is not None and (rel, arg.arg) not in OTHER_MEANING):
                        found.append(f"{rel}:{node.lineno} {node.name}({arg.arg}={value.value!r})")
            elif isinstance(node, ast.ClassDef):
                for item in node.body:
                    if (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)
                            and item.target.id in names - generic and isinstance(item.value, ast.Constant)
                            and item.value.value is not None):
                        found.append(f"{rel}:{item.lineno} {node.name}.{item.target.id} = {item.value.value!r}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr == "add_argument"):
                for arg in node.args:
                    if isinstance(arg, ast.Constant) and arg.value in flags and (rel, arg.value) not in OTHER_MEANING:
                        found.append(f"{rel}:{node.lineno} add_argument({arg.value!r}): use settings.add_arguments")
    assert not found, "defaults stated outside prune2drive_ros/settings.py:\n" + "\n".join(found)


def test_the_method_and_backend_names_are_the_libraries() -> None:
    from prune2drive_ros.pruning import PRUNER_NAMES
    from prune2drive_ros.vlm.backends import FALLBACK_CHAIN

    assert tuple(PRUNER_NAMES) == settings.PRUNING_METHODS
    assert FALLBACK_CHAIN == settings.VISION_BACKENDS[1:]


def test_the_parameter_file_is_generated_from_the_table() -> None:
    text = (REPO / "config" / "drive_vqa.yaml").read_text()
    assert text == settings.render_yaml(), (
        "config/drive_vqa.yaml is stale: python -m prune2drive_ros.settings yaml > config/drive_vqa.yaml")
    values = yaml.safe_load(text)["/**"]["ros__parameters"]
    for spec in NODE_PARAMETERS:
        if spec.default is not None:
            assert values[spec.param_name] == spec.default, spec.param_name


def test_the_readme_parameter_table_is_generated_from_the_table() -> None:
    readme = (REPO / "README.md").read_text()
    assert settings.readme_table() in readme, (
        "README.md's parameter table is stale: replace it with `python -m prune2drive_ros.settings readme`")


def test_flags_check_values_with_the_settings() -> None:
    parser = argparse.ArgumentParser(exit_on_error=False)
    settings.add_arguments(parser)
    args = parser.parse_args([])
    assert settings.from_args(args) == {name: settings.default(name) for name in CLI_SETTINGS}
    args = parser.parse_args(["--retain", "0.25", "--view-ratios", "0.1,0.2,0.3,0.4,0.5,1", "--pruning", "fastv"])
    chosen = settings.from_args(args)
    assert chosen["retain"] == 0.25 and chosen["pruning"] == "fastv"
    assert chosen["view_ratios"] == [0.1, 0.2, 0.3, 0.4, 0.5, 1.0]
    for bad in (["--retain", "2"], ["--max-new-tokens", "0"], ["--pruning", "everything"], ["--device", "gpu"]):
        with pytest.raises(argparse.ArgumentError):
            parser.parse_args(bad)
