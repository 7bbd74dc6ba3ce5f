"""Reading a submitted task body: JSON or YAML whatever the Content-Type says, with errors that
name the field and the YAML line.

The original README posts YAML with ``curl -H "Content-Type: application/json" -d @my_task.yaml``.
``curl -d`` strips every line break from the file, so block YAML arrives as one line. We never
guess what such a body meant: it is refused with the cause and the fix.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from pydantic import ValidationError

from mloc_shared.errors import BadRequest, ValidationFailed
from mloc_shared.taskspec import FieldError, TaskSpec

MAX_DEPTH = 32
# libyaml when installed: the pure-Python loader is several times slower on a large body
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TYPE_TAG = re.compile(r"^(?:str|int|float|bool|bytes|none|[A-Z]\w*|[a-z-]+\[.*\])$")
_KEY_TOKEN = re.compile(r"(?:^|[\"'\s\w])([A-Za-z_][A-Za-z0-9_]*):(?:\s|$)")
CURL_HINT = (
    "curl -d strips line breaks from the file, so block-style YAML arrives as one line. "
    "Send the file unchanged with: curl -X POST <url>/api/v1/tasks --data-binary @my_task.yaml "
    "(or use: mloc submit my_task.yaml)"
)


def parse_document(body: bytes) -> tuple[Any, yaml.Node | None]:
    """Decode a JSON or YAML body into plain data plus its YAML node tree (for line numbers)."""
    if not body.strip():
        raise BadRequest("the request body is empty; send a task as YAML or JSON")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"the body is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise BadRequest("the body contains a NUL byte; send a task as YAML or JSON text")
    stripped = text.lstrip()
    if stripped[:1] in "{[":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            invalid = BadRequest(f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}",
                                 line=exc.lineno)
            if stripped[:1] == "{":
                try:  # maybe YAML flow style: {taskType: command, command: "true"}
                    return _parse_yaml(text)
                except BadRequest:
                    raise invalid from None  # it was meant as JSON: say what is wrong with that
            raise invalid from None
        except RecursionError:
            raise BadRequest(f"the document nests deeper than {MAX_DEPTH} levels") from None
        except ValueError as exc:  # e.g. an integer of thousands of digits
            raise BadRequest(f"invalid JSON: {exc}") from None
        _check_depth(data)
        _check_text(data, None)
        return data, None  # JSON errors name the field; line numbers are for YAML
    data, node = _parse_yaml(text)
    _check_text(data, node)
    return data, node


def _parse_yaml(text: str) -> tuple[Any, yaml.Node | None]:
    loader = _YAML_LOADER(text)
    try:
        return _load_yaml(loader, text)
    except RecursionError:
        raise BadRequest(f"the document nests deeper than {MAX_DEPTH} levels") from None
    finally:
        loader.dispose()


def _load_yaml(loader: yaml.SafeLoader, text: str) -> tuple[Any, yaml.Node | None]:
    """Compose once (for line numbers and checks), then build the data from that node tree."""
    try:
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        if _looks_like_flattened_yaml(text):
            raise BadRequest("the YAML body arrived on a single line", hint=CURL_HINT) from None
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        where = f" at line {line}, column {mark.column + 1}" if mark is not None else ""
        raise BadRequest(f"invalid YAML{where}: {problem}", line=line) from None
    if node is None:
        raise BadRequest("the request body holds no YAML document")
    _check_node(node)
    try:
        data = loader.construct_document(node)
    except yaml.YAMLError as exc:  # a tag we do not build (!!python/...), an unhashable key
        mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        raise BadRequest(f"invalid YAML{f' at line {line}' if line else ''}: {problem}", line=line) from None
    except ValueError as exc:  # e.g. an integer of thousands of digits
        raise BadRequest(f"invalid YAML at line {node.start_mark.line + 1}: {exc}") from None
    if (
        isinstance(data, dict)
        and "\n" not in text.strip()
        and len(data) == 1
        and _looks_like_flattened_yaml(text)
    ):
        raise BadRequest("the YAML body arrived on a single line", hint=CURL_HINT)
    return data, node


def _looks_like_flattened_yaml(text: str) -> bool:
    """A one-line body with several ``key:`` tokens glued together is block YAML minus newlines."""
    body = text.strip()
    if "\n" in body or (body.startswith(("{", "[")) and body.endswith(("}", "]")) and _is_json(body)):
        return False
    return len(_KEY_TOKEN.findall(body)) >= 2


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _check_node(node: yaml.Node, depth: int = 0, seen: set[int] | None = None) -> None:
    """Refuse aliases (billion-laughs bodies) and absurd nesting before building any objects."""
    seen = set() if seen is None else seen
    if id(node) in seen:
        raise BadRequest("YAML anchors and aliases are not accepted in task files", line=node.start_mark.line + 1)
    seen.add(id(node))
    if depth > MAX_DEPTH:
        raise BadRequest(f"the document nests deeper than {MAX_DEPTH} levels", line=node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            _check_node(key, depth + 1, seen)
            _check_node(value, depth + 1, seen)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            _check_node(item, depth + 1, seen)


def _check_depth(data: Any, depth: int = 0) -> None:
    if depth > MAX_DEPTH:
        raise BadRequest(f"the document nests deeper than {MAX_DEPTH} levels")
    if isinstance(data, dict):
        for value in data.values():
            _check_depth(value, depth + 1)
    elif isinstance(data, list):
        for value in data:
            _check_depth(value, depth + 1)


def _check_text(data: Any, node: yaml.Node | None, path: tuple[Any, ...] = ()) -> None:
    """Refuse NUL and unpaired surrogates anywhere in a spec, naming the field.

    Neither can reach a process (argv, environment, file names), and a lone surrogate cannot even be
    encoded as UTF-8: stored, it would break every poll that hands the task to an agent.
    """
    if isinstance(data, dict):
        for key, value in data.items():
            _check_text(key, node, path)
            _check_text(value, node, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            _check_text(value, node, (*path, i))
    elif isinstance(data, str) and ("\x00" in data or not _encodable(data)):
        field = ".".join(str(p) for p in path) or None
        what = "a NUL character" if "\x00" in data else "an unpaired surrogate (not valid Unicode)"
        raise ValidationFailed(f"{field or 'the document'} holds {what}", field=field, line=line_of(node, path))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def line_of(node: yaml.Node | None, path: tuple[Any, ...]) -> int | None:
    """The 1-based line of the deepest node along ``path`` (a pydantic error location)."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    current = node
    for part in path:
        nxt = None
        if isinstance(current, yaml.MappingNode):
            for key, value in current.value:
                if getattr(key, "value", None) == str(part):
                    nxt = value
                    line = key.start_mark.line + 1
                    break
        elif isinstance(current, yaml.SequenceNode) and isinstance(part, int) and part < len(current.value):
            nxt = current.value[part]
            line = nxt.start_mark.line + 1
        if nxt is None:
            break
        current = nxt
    return line


def with_line(exc: ValidationFailed, node: yaml.Node | None, prefix: str = "") -> ValidationFailed:
    """Give an error found after validation (a depends_on id that is no task) the YAML line of its
    field; ``prefix`` is the part of the field name above ``node`` (``tasks.sft.``)."""
    if exc.line is None and exc.field and node is not None and exc.field.startswith(prefix):
        path = tuple(int(p) if p.isdigit() else p for p in exc.field[len(prefix):].split("."))
        exc.line = line_of(node, path)
        if exc.line is not None and f"line {exc.line}" not in exc.message:
            exc.message = f"{exc.message} (line {exc.line})"
    return exc


def validate_spec(data: Any, node: yaml.Node | None = None) -> TaskSpec:
    """Validate plain data as a TaskSpec; the first error names its field path and line."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            f"a task must be a mapping of fields (taskType, model, ...), not {type(data).__name__}",
            line=node.start_mark.line + 1 if node is not None else None,
        )
    try:
        return TaskSpec.model_validate(data)
    except ValidationError as exc:
        details = []
        for err in exc.errors(include_url=False, include_input=False):
            loc = _data_loc(data, err["loc"])
            cause = (err.get("ctx") or {}).get("error")
            if isinstance(cause, FieldError):
                loc = (*loc, cause.field)
            field = ".".join(str(p) for p in loc) or None
            message = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                message = f"unknown field {field!r}"
            elif err["type"] == "missing":
                message = f"missing required field {field!r}"
            details.append({"field": field, "line": line_of(node, loc), "message": message})
        first = details[0]
        where = f" (line {first['line']})" if first["line"] else ""
        label = f"{first['field']}: " if first["field"] and first["field"] not in first["message"] else ""
        raise ValidationFailed(
            f"{label}{first['message']}{where}", field=first["field"], line=first["line"], details=details
        ) from None


def _data_loc(data: Any, loc: tuple[Any, ...]) -> tuple[Any, ...]:
    """The error's path without the tags pydantic adds for union members and validators
    (``command.str``, ``reward_funcs.0.RewardFunction``, ``function-after[...]``): no user wrote those.
    A segment that is a key of the submitted data is always kept."""
    out: list[Any] = []
    for part in loc:
        is_key = isinstance(data, dict) and part in data
        if isinstance(part, str) and not is_key and _TYPE_TAG.match(part):
            continue
        out.append(part)
        in_list = isinstance(data, list) and isinstance(part, int) and 0 <= part < len(data)
        data = data[part] if is_key or in_list else None
    return tuple(out)


def parse_task(body: bytes) -> TaskSpec:
    """Body bytes -> a validated TaskSpec, or BadRequest/ValidationFailed naming the problem."""
    data, node = parse_document(body)
    return validate_spec(data, node)
