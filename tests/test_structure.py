"""The package's structure: no import cycle between curate's modules, and every bundled job file
validates (with what it extends)."""

from __future__ import annotations

import ast

import pytest

from tests.conftest import REPO

PACKAGE = REPO / "curate"


def import_graph() -> dict[str, set[str]]:
    """{module: curate modules it imports}, counting imports inside functions too."""
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                if node.module == "curate":
                    deps |= {alias.name for alias in node.names}
                elif node.module.startswith("curate."):
                    deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {alias.name.split(".")[1] for alias in node.names if alias.name.startswith("curate.")}
        graph[path.stem] = deps - {path.stem}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated at the end), or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = "open"
        stack.append(module)
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_no_import_cycle():
    graph = import_graph()
    assert {"stages", "executors", "layout", "cli"} <= set(graph)
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_executors_import_no_stage():
    stage_modules = {"sample", "label", "train", "score", "filters", "mix", "report", "audit", "bootstrap", "stages",
                     "cluster", "run"}
    assert not import_graph()["executors"] & stage_modules


@pytest.mark.parametrize("job", sorted(p.name for p in (REPO / "jobs").glob("*.yaml")))
def test_every_bundled_job_validates(job):
    from curate.config import load_job

    loaded = load_job(REPO / "jobs" / job)
    assert loaded.name and loaded.input.paths


def test_slurm_dry_run_extends_the_local_one_and_differs_only_in_where_it_runs():
    from curate.config import load_job

    local, slurm = load_job(REPO / "jobs" / "dryrun.yaml"), load_job(REPO / "jobs" / "dryrun-slurm.yaml")
    assert slurm.executor == "slurm" and local.executor == "local"
    for section in ("input", "train", "score", "filters", "mix"):
        assert getattr(slurm, section) == getattr(local, section), section
    assert slurm.filters.decontaminate.eval_sets  # the contamination filter is inherited


def test_extends_merges_sections_key_by_key_and_refuses_loops(tmp_path):
    from curate.config import JobError, load_job

    (tmp_path / "base.yaml").write_text("name: base\noutput_dir: out/base\ninput: {paths: [a.parquet]}\n"
                                        "mix: {token_budget: 100, max_repeats: 2}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("extends: ../base.yaml\nmix: {max_repeats: 3}\n")
    job = load_job(tmp_path / "sub" / "child.yaml")
    assert (job.name, job.mix.token_budget, job.mix.max_repeats) == ("base", 100, 3)
    (tmp_path / "loop.yaml").write_text("extends: loop.yaml\nname: x\n")
    with pytest.raises(JobError, match="loops back"):
        load_job(tmp_path / "loop.yaml")


def test_paths_expand_environment_variables_and_the_bundled_data(tmp_path, monkeypatch):
    from curate.config import BUNDLED_DATA, JobError, load_job

    monkeypatch.setenv("CURATE_TEST_DATA", str(tmp_path))
    monkeypatch.delenv("CURATE_DATA", raising=False)
    path = tmp_path / "job.yaml"
    path.write_text("name: x\noutput_dir: ${CURATE_TEST_DATA}/out\ninput: {paths: [$CURATE_DATA/mathweb]}\n")
    job = load_job(path)
    assert job.output_dir == f"{tmp_path}/out" and job.input.paths == [f"{BUNDLED_DATA}/mathweb"]
    path.write_text("name: x\noutput_dir: $CURATE_UNSET_VARIABLE/out\ninput: {paths: [a]}\n")
    with pytest.raises(JobError, match="CURATE_UNSET_VARIABLE is not set"):
        load_job(path)


def test_each_slurm_task_asks_for_its_own_resources(tmp_path):
    """The label task of jobs/label-qwen32b.yaml's chain asks for its GPUs, CPUs and memory; the other
    tasks keep the section's defaults (sbatch scripts rendered as datatrove writes them, not submitted)."""
    import yaml

    from curate.cluster import chain
    from curate.config import load_job
    from curate.executors import sbatch_script
    from tests.conftest import BUNDLED_DOCS

    raw = yaml.safe_load((REPO / "jobs" / "label-qwen32b.yaml").read_text())
    raw.update(output_dir=str(tmp_path / "out"), input={"paths": [str(BUNDLED_DOCS)]}, executor="slurm")
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    scripts = {task: sbatch_script(ex) for task, ex in chain(load_job(tmp_path / "job.yaml"), ask_partition=False).items()}
    assert list(scripts) == ["sample", "label", "train", "score", "finish"]
    label = scripts["label"]
    for line in ("--gpus=2", "--cpus-per-task=16", "--mem-per-cpu=8G", "--partition=gpu", "--time=24:00:00"):
        assert f"#SBATCH {line}\n" in label, (line, label)
    for task in ("sample", "train", "score", "finish"):
        assert "--gpus" not in scripts[task] and "#SBATCH --cpus-per-task=1\n" in scripts[task], scripts[task]
        assert "#SBATCH --mem-per-cpu=2G\n" in scripts[task] and "#SBATCH --time=04:00:00\n" in scripts[task]
    raw["slurm"]["stages"]["label"]["gpu_request"] = "gres"
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(raw))
    label = sbatch_script(chain(load_job(tmp_path / "job.yaml"), ask_partition=False)["label"])
    assert "#SBATCH --gres=gpu:2\n" in label and "--gpus" not in label
