"""Pipeline files and sweeps: one document becomes several task specs (docs/pipelines.md).

A pipeline is ``tasks:`` mapping step names to task specs; a step reads an earlier step's outputs with
``model.source: {type: step, identifier: NAME}`` (or ``"step:NAME"`` where ``task:ID`` refs go) and
waits on it with ``depends_on: [NAME]``. A sweep is one task spec with a ``sweep:`` block (a grid or a
list over dotted spec paths): one child per combination. Here the document is expanded and every step
validated like a task, with errors naming ``tasks.<step>.<field>`` (or ``sweep.<...>``) and the YAML
line; the coordinator gives the steps their ids (``bind``) and stores them in one transaction.
"""

from __future__ import annotations

import copy
import itertools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from mloc_shared.errors import ValidationFailed
from mloc_shared.spec_parsing import line_of, validate_spec
from mloc_shared.taskspec import TaskSpec

MAX_STEPS = 1000
STEP_PREFIX = "step:"
_STEP_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_SPEC_FIELDS = {f.alias or name for name, f in TaskSpec.model_fields.items()} | set(TaskSpec.model_fields)
_PIPELINE_KEYS = {"name", "tasks"}
_SWEEP_KEYS = {"grid", "list", "max_parallel"}


@dataclass
class Step:
    """One task of the document, before the coordinator gives it an id."""

    name: str
    index: int
    data: dict[str, Any]
    node: yaml.Node | None
    where: str  # the prefix its fields are named with: "tasks.sft." (none for a sweep child)
    values: dict[str, Any] | None = None  # a sweep child's {path: value}
    needs: list[str] = field(default_factory=list)  # the steps it refers to


@dataclass
class Plan:
    kind: str  # pipeline | sweep
    name: str
    steps: list[Step]
    max_parallel: int | None = None


def is_multi(data: Any) -> bool:
    """Whether a document is a pipeline (``tasks:`` a mapping) or a sweep (a ``sweep:`` block)."""
    return isinstance(data, dict) and (isinstance(data.get("tasks"), dict) or "sweep" in data)


def child(node: yaml.Node | None, key: str) -> yaml.Node | None:
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if getattr(k, "value", None) == key:
                return v
    return None


def _fail(message: str, field_: str, node: yaml.Node | None, path: tuple[Any, ...]) -> ValidationFailed:
    line = line_of(node, path)
    return ValidationFailed(f"{field_}: {message}" + (f" (line {line})" if line else ""), field=field_, line=line)


def plan_document(data: dict[str, Any], node: yaml.Node | None) -> Plan:
    """Expand a pipeline or sweep document into its steps (their step references still names)."""
    if "sweep" in data:
        return _plan_sweep(data, node)
    for key in data:
        if key not in _PIPELINE_KEYS:
            raise _fail(f"unknown field {key!r} in a pipeline file (it has 'tasks' and 'name')", str(key),
                        node, (key,))
    tasks = data["tasks"]
    if not tasks or len(tasks) > MAX_STEPS:
        raise _fail(f"a pipeline has 1..{MAX_STEPS} steps", "tasks", node, ("tasks",))
    name = data.get("name")
    if name is not None and (not isinstance(name, str) or not 0 < len(name) <= 200):
        raise _fail("name must be a string of 1..200 characters", "name", node, ("name",))
    steps = []
    tasks_node = child(node, "tasks")
    for i, (step_name, spec) in enumerate(tasks.items()):
        if not isinstance(step_name, str) or not _STEP_NAME.match(step_name):
            raise _fail("a step name is letters, digits, '_', '.', '-' (up to 100)", f"tasks.{step_name}",
                        node, ("tasks", step_name))
        if not isinstance(spec, dict):
            raise _fail("a step is a task spec (a mapping: taskType, model, ...)", f"tasks.{step_name}",
                        node, ("tasks", step_name))
        if "sweep" in spec:
            raise _fail("a sweep cannot be a pipeline step; submit it as its own file", f"tasks.{step_name}.sweep",
                        node, ("tasks", step_name, "sweep"))
        steps.append(Step(step_name, i, copy.deepcopy(spec), child(tasks_node, step_name), f"tasks.{step_name}."))
    names = {s.name for s in steps}
    for s in steps:
        s.needs = _step_refs(s, names)
    _refuse_cycles(steps)
    return Plan("pipeline", name or steps[-1].name, steps)


def _step_refs(step: Step, names: set[str]) -> list[str]:
    """The steps ``step`` names (depends_on, model.source type step, "step:NAME" refs); an unknown one
    named as a step is refused here, a depends_on entry that is no step may be an existing task."""
    found: list[str] = []
    model = step.data.get("model")
    source = model.get("source") if isinstance(model, dict) else None
    if isinstance(source, dict) and source.get("type") == "step":
        ref = source.get("identifier")
        if ref not in names:
            raise _fail(f"no step {ref!r} in this pipeline (steps: {', '.join(sorted(names))})",
                        f"{step.where}model.source.identifier", step.node, ("model", "source", "identifier"))
        found.append(ref)
    for key, ref in _prefixed_refs(step.data):
        name = ref[len(STEP_PREFIX):].partition("/")[0]
        if name not in names:
            raise _fail(f"no step {name!r} in this pipeline", f"{step.where}hyperparameters.{key}", step.node,
                        ("hyperparameters", key))
        found.append(name)
    deps = step.data.get("depends_on")
    if isinstance(deps, list):
        for d in deps:
            ref = d.get("task") if isinstance(d, dict) else d
            if isinstance(ref, str) and ref in names:
                found.append(ref)
    if step.name in found:
        raise _fail("a step cannot depend on itself", f"{step.where}depends_on", step.node, ("depends_on",))
    return list(dict.fromkeys(found))


def _prefixed_refs(data: dict[str, Any]) -> list[tuple[str, str]]:
    hp = data.get("hyperparameters") if isinstance(data.get("hyperparameters"), dict) else {}
    out = []
    if isinstance(hp.get("reward_model"), str) and hp["reward_model"].startswith(STEP_PREFIX):
        out.append(("reward_model", hp["reward_model"]))
    docs = hp.get("documents")
    for d in docs if isinstance(docs, list) else []:
        if isinstance(d, str) and d.startswith(STEP_PREFIX):
            out.append(("documents", d))
    return out


def _refuse_cycles(steps: list[Step]) -> None:
    """Depth-first: a step met again on the path closes a cycle, named at the step that closes it."""
    by_name = {s.name: s for s in steps}
    done: set[str] = set()

    def visit(s: Step, path: list[str]) -> None:
        if s.name in done:
            return
        for need in s.needs:
            if need in path:
                cycle = " -> ".join([*path[path.index(need):], need])
                raise _fail(f"the steps' dependencies form a cycle ({cycle})", f"{s.where}depends_on", s.node,
                            ("depends_on",))
            visit(by_name[need], [*path, need])
        done.add(s.name)

    for s in steps:
        visit(s, [s.name])


def bind(step: Step, ids: Mapping[str, str]) -> TaskSpec:
    """Replace step names by the task ids the coordinator gave them, then validate the step as a task."""
    data = step.data
    model = data.get("model")
    source = model.get("source") if isinstance(model, dict) else None
    if isinstance(source, dict) and source.get("type") == "step":
        source["type"], source["identifier"] = "task", ids[source["identifier"]]
    hp = data.get("hyperparameters")
    if isinstance(hp, dict):
        if isinstance(hp.get("reward_model"), str) and hp["reward_model"].startswith(STEP_PREFIX):
            hp["reward_model"] = _task_ref(hp["reward_model"], ids)
        if isinstance(hp.get("documents"), list):
            hp["documents"] = [_task_ref(d, ids) if isinstance(d, str) and d.startswith(STEP_PREFIX) else d
                               for d in hp["documents"]]
    if isinstance(data.get("depends_on"), list):
        data["depends_on"] = [_bind_dep(d, ids) for d in data["depends_on"]]
    return validate_step(step)


def _task_ref(ref: str, ids: Mapping[str, str]) -> str:
    name, slash, rest = ref[len(STEP_PREFIX):].partition("/")
    return f"task:{ids[name]}{slash}{rest}"


def _bind_dep(dep: Any, ids: Mapping[str, str]) -> Any:
    if isinstance(dep, str) and dep in ids:
        return ids[dep]
    if isinstance(dep, dict) and dep.get("task") in ids:
        return {**dep, "task": ids[dep["task"]]}
    return dep


def validate_step(step: Step) -> TaskSpec:
    """validate_spec, its error renamed to the step's field (``tasks.sft.hyperparameters.x``)."""
    try:
        return validate_spec(step.data, step.node)
    except ValidationFailed as exc:
        if step.values is not None:  # a sweep child: say which combination, keep the spec's own field names
            swept = next((p for p in step.values if exc.field and (exc.field == p or exc.field.startswith(p + "."))),
                         None)
            exc.message = f"sweep child {step.index} ({_show(step.values)}): {exc.message}"
            if swept is not None:
                exc.field = f"sweep.{swept}"
        else:
            exc.field = f"{step.where}{exc.field}" if exc.field else step.where.rstrip(".")
            exc.message = f"{step.where.rstrip('.')}: {exc.message}"
        raise


def _show(values: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


# -- sweeps -----------------------------------------------------------------------------------------


def _plan_sweep(data: dict[str, Any], node: yaml.Node | None) -> Plan:
    block = data["sweep"]
    sweep_node = child(node, "sweep")
    if not isinstance(block, dict):
        raise _fail("sweep is a mapping with 'grid' (path: [values]) or 'list' ([{path: value}])", "sweep",
                    node, ("sweep",))
    for key in block:
        if key not in _SWEEP_KEYS:
            raise _fail(f"unknown field {key!r}; a sweep has 'grid' or 'list', and 'max_parallel'",
                        f"sweep.{key}", node, ("sweep", key))
    if ("grid" in block) == ("list" in block):
        raise _fail("give exactly one of 'grid' (path: [values]) or 'list' ([{path: value}, ...])", "sweep",
                    node, ("sweep",))
    max_parallel = block.get("max_parallel")
    if max_parallel is not None and (isinstance(max_parallel, bool) or not isinstance(max_parallel, int)
                                     or max_parallel < 1):
        raise _fail("max_parallel must be a whole number of at least 1", "sweep.max_parallel", node,
                    ("sweep", "max_parallel"))
    combos = _grid(block["grid"], node) if "grid" in block else _list(block["list"], node)
    if not combos or len(combos) > MAX_STEPS:
        raise _fail(f"a sweep makes 1..{MAX_STEPS} tasks (this one {len(combos)})", "sweep", node, ("sweep",))
    base = {k: v for k, v in data.items() if k != "sweep"}
    base_name = base.get("name") if isinstance(base.get("name"), str) else str(base.get("taskType", "sweep"))
    steps = []
    for i, values in enumerate(combos):
        spec = copy.deepcopy(base)
        for path, value in values.items():
            _set_path(spec, path, copy.deepcopy(value), sweep_node)
        spec["name"] = f"{base_name}[{i}]"
        steps.append(Step(f"{base_name}[{i}]", i, spec, node, "", values=values))
    return Plan("sweep", base_name, steps, max_parallel)


def _check_path(path: Any, where: str, node: yaml.Node | None, loc: tuple[Any, ...]) -> str:
    if not isinstance(path, str) or not path or any(not part for part in path.split(".")):
        raise _fail("a sweep path is a dotted spec path, e.g. hyperparameters.learning_rate", where, node, loc)
    head = path.split(".")[0]
    if head not in _SPEC_FIELDS or head in ("taskType", "task_type", "depends_on", "user", "secrets"):
        raise _fail(f"{path!r} is not a path a sweep can vary ({head!r} is not such a task spec field)",
                    where, node, loc)
    return path


def _grid(grid: Any, node: yaml.Node | None) -> list[dict[str, Any]]:
    if not isinstance(grid, dict) or not grid:
        raise _fail("grid maps paths to lists of values, e.g. hyperparameters.learning_rate: [1e-4, 2e-4]",
                    "sweep.grid", node, ("sweep", "grid"))
    axes = []
    for path, values in grid.items():
        _check_path(path, f"sweep.grid.{path}", node, ("sweep", "grid", path))
        if not isinstance(values, list) or not values:
            raise _fail("give a non-empty list of values", f"sweep.grid.{path}", node, ("sweep", "grid", path))
        axes.append([(path, v) for v in values])
    return [dict(combo) for combo in itertools.product(*axes)]


def _list(items: Any, node: yaml.Node | None) -> list[dict[str, Any]]:
    if not isinstance(items, list) or not items:
        raise _fail("list is a non-empty list of {path: value} mappings", "sweep.list", node, ("sweep", "list"))
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not item:
            raise _fail("each entry maps paths to values", f"sweep.list.{i}", node, ("sweep", "list", i))
        for path in item:
            _check_path(path, f"sweep.list.{i}.{path}", node, ("sweep", "list", i, path))
    return [dict(item) for item in items]


def _set_path(spec: dict[str, Any], path: str, value: Any, node: yaml.Node | None) -> None:
    parts = path.split(".")
    here = spec
    for depth, part in enumerate(parts[:-1]):
        nxt = here.setdefault(part, {})
        if nxt is None:
            nxt = here[part] = {}
        if not isinstance(nxt, dict):
            raise _fail(f"{'.'.join(parts[:depth + 1])} is not a mapping in the spec, so {path!r} cannot be set",
                        f"sweep.{path}", node, ())
        here = nxt
    here[parts[-1]] = value


def check_document(data: dict[str, Any], node: yaml.Node | None) -> Plan:
    """Validate a whole pipeline or sweep without a coordinator (steps bound to stand-in ids): what a
    test of an example file, or a client before sending it, can check."""
    plan = plan_document(data, node)
    ids = {s.name: f"step-{s.name}" for s in plan.steps}
    for s in plan.steps:
        bind(Step(s.name, s.index, copy.deepcopy(s.data), s.node, s.where, s.values, s.needs), ids)
    return plan
