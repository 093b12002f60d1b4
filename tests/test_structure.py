"""The package's shape (issue 15): no import circle among its modules, no test oracle or system-name branch in
the library, parameter defaults owned by the configuration."""

from __future__ import annotations

import ast

import numpy as np
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "aesample"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_graph() -> dict[str, set[str]]:
    """Every import of every module (top level, inside functions, under TYPE_CHECKING), package-internal only."""
    modules = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else node.module
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for target in targets:
                if target in modules and target != name:
                    graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import circle as a list of modules, or []."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return []


def test_the_graph_sees_function_level_imports():
    graph = _import_graph()
    assert "aesample.loopstages" in graph["aesample.driver"]  # imported inside LoopDriver._run
    assert "aesample.runlayout" in graph["aesample.loopstages"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_circle():
    assert _cycle(_import_graph()) == []


def test_loop_stages_take_the_layout_not_the_driver():
    for name in ("loopstages", "report", "runlayout"):
        assert "aesample.driver" not in _import_graph()[f"aesample.{name}"], name


def test_no_system_name_branches_in_the_stages():
    text = (PACKAGE / "loopstages.py").read_text()
    for needle in ('startswith("alanine-dipeptide")', 'startswith("chignolin")', "chignolin_cln025"):
        assert needle not in text, needle


def test_cli_library_and_loop_share_the_configuration_defaults():
    """One owner of defaults and units: Config. `aesample eabf`, MDSettings/EABFSettings and ExtendedABF agree."""
    import inspect

    from aesample.cli import build_parser
    from aesample.config import Config, effective_config
    from aesample.eabf import ExtendedABF
    from aesample.md import EABFSettings, MDSettings

    cfg = Config()
    args = build_parser().parse_args(["eabf", "--cv", "phi", "--out", "x"])
    cli = {"timestep": args.timestep, "friction": args.friction, "report_interval": args.report_interval,
           "segment_steps": args.segment_steps, "equilibration": args.equilibration, "seed": args.seed}
    assert cli == {name: getattr(cfg.md, name) for name in cli}
    assert (args.extended_period, args.czar_min_count) == (cfg.eabf.extended_period, cfg.eabf.czar_min_count)
    assert args.platform == cfg.system.platform
    assert (args.cuda_graphs, args.threads) == (cfg.eabf.cuda_graphs, cfg.execution.threads)
    assert args.close_periodic_bias == cfg.eabf.close_periodic_bias
    # the engine's settings: the same values in its units (ps, steps), converted in one place
    assert MDSettings.from_config(cfg) == MDSettings()
    md = MDSettings()
    assert md.timestep == cfg.md.timestep * 1e-3 and md.equilibration_steps == round(cfg.md.equilibration /
                                                                                       md.timestep)
    es, loop = EABFSettings(grid_min=-1.5, grid_max=1.5), EABFSettings.from_config(effective_config(cfg), 1)
    for name in ("bins", "kappa", "extended_period", "full_samples", "czar_min_count", "close_periodic_bias"):
        assert np.ravel(getattr(es, name)).tolist() == np.ravel(getattr(loop, name)).tolist(), name
    assert es.kappa == cfg.eabf.kappa and es.full_samples == cfg.eabf.full_samples
    defaults = inspect.signature(ExtendedABF).parameters
    assert defaults["extendedPeriod"].default == cfg.eabf.extended_period
    assert defaults["fullSamples"].default == cfg.eabf.full_samples
    assert defaults["closePeriodicBias"].default == cfg.eabf.close_periodic_bias


def test_retired_extended_temperature_key():
    import pytest

    from aesample.config import ConfigError, config_from_dict

    assert "extended_temperature" not in type(config_from_dict({"eabf": {"extended_temperature": None}}).eabf).model_fields
    with pytest.raises(ConfigError, match="run.yaml: eabf.extended_temperature: no longer supported"):
        config_from_dict({"eabf": {"extended_temperature": 350.0}}, source="run.yaml")


def test_no_hard_coded_gas_constant():
    """kT has one home (aesample.estimators.kT)."""
    root = PACKAGE.parent
    for path in list(PACKAGE.rglob("*.py")) + list((root / "benchmarks").glob("*.py")) + list((root / "tests").glob("*.py")):
        text = path.read_text()
        if path.name == "test_structure.py":
            continue
        assert "0.0083144" not in text and "MOLAR_GAS_CONSTANT_R *" not in text, path


def test_run_eabf_and_run_md_have_one_argument_order(tmp_path):
    import pytest

    from aesample.md import EABFSettings, MDSettings, run_eabf, run_md

    es = EABFSettings(grid_min=-1.0, grid_max=1.0)
    with pytest.raises(TypeError, match=r"run_eabf\(molecular_system, cv, eabf_settings, md_settings, out_dir, n_steps"):
        run_eabf(None, None, es, tmp_path, 100, MDSettings())
    with pytest.raises(TypeError, match=r"run_md\(molecular_system, md_settings, out_dir, n_steps\)"):
        run_md(None, tmp_path, 100, MDSettings())
    assert not any(tmp_path.iterdir())
