"""YAML with line numbers: plain Python values plus the line of every key and item.

`load(text)` returns `(value, lines)`, where `lines` maps a key path (a tuple of mapping keys and
list indices, `("vars", "width", "int")`) to the 1-based line on which that key or item starts,
so that a validator can name the line of whatever it rejects. Safe tags only; duplicate keys are
an error (PyYAML silently keeps the last one).
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple  # of str keys and int indices


class YamlError(Exception):
    """Invalid YAML: `line` is 1-based (None when unknown)."""

    def __init__(self, message: str, line: int | None, path: Path = ()):
        super().__init__(message)
        self.message, self.line, self.path = message, line, path


def load(text: str) -> tuple[Any, dict[Path, int]]:
    loader = yaml.SafeLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            problem = " ".join(str(x) for x in (e.context, e.problem) if x)
            raise YamlError(f"invalid YAML: {problem}", mark.line + 1 if mark else None) from None
        except yaml.YAMLError as e:
            raise YamlError(f"invalid YAML: {e}", None) from None
        lines: dict[Path, int] = {(): 1}
        if node is None:
            return None, lines
        return _value(loader, node, (), lines), lines
    finally:
        loader.dispose()


def _value(loader: yaml.SafeLoader, node: yaml.Node, path: Path, lines: dict[Path, int]) -> Any:
    if isinstance(node, yaml.MappingNode):
        try:
            loader.flatten_mapping(node)  # `<<` merge keys
        except yaml.MarkedYAMLError as e:
            raise YamlError(f"invalid YAML: {e.problem}", e.problem_mark.line + 1 if e.problem_mark else None,
                            path) from None
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise YamlError("a key must be a plain value, not a list or mapping", key_node.start_mark.line + 1,
                                path)
            key = _scalar(loader, key_node, path)
            if key in out:
                raise YamlError(f"duplicate key {key!r}", key_node.start_mark.line + 1, path + (key,))
            lines[path + (key,)] = key_node.start_mark.line + 1
            out[key] = _value(loader, value_node, path + (key,), lines)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for i, item in enumerate(node.value):
            lines[path + (i,)] = item.start_mark.line + 1
            items.append(_value(loader, item, path + (i,), lines))
        return items
    return _scalar(loader, node, path)


def _scalar(loader: yaml.SafeLoader, node: yaml.Node, path: Path) -> Any:
    try:
        return loader.construct_object(node, deep=True)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or node.start_mark
        raise YamlError(f"invalid YAML value: {e.problem}", mark.line + 1, path) from None
