"""YAML with line numbers: plain Python values plus the line of every key and item.

`load(text)` returns `(value, lines)`, where `lines` maps a key path (a tuple of mapping keys and
list indices, `("vars", "width", "int")`) to the 1-based line on which that key or item starts,
so that a validator can name the line of whatever it rejects. Safe tags only; duplicate keys are
an error (PyYAML silently keeps the last one).

Aliases are bounded: a document whose aliases (`*name`) would repeat more than
`MAX_ALIAS_NODES` nodes in all (a "billion laughs" document: ten aliases of ten aliases of ...)
or that contains itself (`&a [*a]`) is refused after composing, before anything is built or walked.
`safe_load(text)` is `yaml.safe_load` with the same bound, for the other YAML files a user writes.
"""

from __future__ import annotations

from typing import Any

import yaml

Path = tuple  # of str keys and int indices

MAX_ALIAS_NODES = 10_000   # nodes that aliases may repeat in one document (a shipped space repeats none)
MAX_DEPTH = 100            # nested lists/mappings (a shipped space nests 6 deep)


class YamlError(Exception):
    """Invalid YAML: `line` is 1-based (None when unknown)."""

    def __init__(self, message: str, line: int | None, path: Path = ()):
        super().__init__(message)
        self.message, self.line, self.path = message, line, path


class AliasLimitError(yaml.MarkedYAMLError):
    """A document whose aliases expand too far, or that contains itself (a yaml.YAMLError, so that
    a caller of `safe_load` that reports invalid YAML reports this too)."""


class _Loader(yaml.SafeLoader):
    """SafeLoader refusing documents nested over MAX_DEPTH levels while scanning (PyYAML's scanner
    and composer slow down quadratically, then recurse past Python's limit, on `[[[[...`)."""

    def _deeper(self) -> None:
        if self.flow_level + len(self.indents) >= MAX_DEPTH:
            raise yaml.scanner.ScannerError(problem=f"nested more than {MAX_DEPTH} levels deep",
                                            problem_mark=self.get_mark())

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        self._deeper()
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column: int) -> bool:
        self._deeper()
        return super().add_indent(column)


def _check_aliases(root: yaml.Node) -> None:
    """Refuse `root` when its aliases repeat more than MAX_ALIAS_NODES nodes or form a cycle.

    A composed document is a graph in which every alias is the anchored node itself, shared:
    its size as a tree (what constructing or walking it visits) is counted once per node, with
    the sizes of shared nodes remembered, so the count costs one visit per distinct node."""
    tree: dict[int, int] = {}   # id(node) -> nodes of its expansion
    distinct = 0
    # iterative post-order walk: (node, children done?); `open_` holds the current path's nodes
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_: set[int] = set()
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            open_.discard(key)
            tree[key] = 1 + sum(tree[id(c)] for c in _children(node))
            continue
        if key in tree:
            continue
        distinct += 1
        open_.add(key)
        stack.append((node, True))
        for child in _children(node):
            if id(child) in open_:
                raise AliasLimitError(problem="an alias inside its own anchor (a list or mapping that contains "
                                              "itself)", problem_mark=child.start_mark)
            if id(child) not in tree:
                stack.append((child, False))
    if tree[id(root)] - distinct > MAX_ALIAS_NODES:
        raise AliasLimitError(problem=f"aliases repeat {tree[id(root)] - distinct} nodes (at most {MAX_ALIAS_NODES}; "
                                      "nested aliases of aliases?)", problem_mark=root.start_mark)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _compose(loader: yaml.SafeLoader) -> yaml.Node | None:
    node = loader.get_single_node()
    if node is not None:
        _check_aliases(node)
    return node


def safe_load(text: str) -> Any:
    """`yaml.safe_load(text)` refusing alias bombs and self-containing documents (AliasLimitError,
    a yaml.YAMLError) and documents nested over MAX_DEPTH levels (a yaml.YAMLError), in well under a second."""
    loader = _Loader(text)
    try:
        node = _compose(loader)
        try:
            return None if node is None else loader.construct_document(node)
        except (ValueError, OverflowError) as e:   # an integer of over 4300 digits
            raise yaml.YAMLError(f"invalid value: {e}") from None
    finally:
        loader.dispose()


def load(text: str) -> tuple[Any, dict[Path, int]]:
    loader = _Loader(text)
    try:
        try:
            node = _compose(loader)
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
    except (ValueError, OverflowError) as e:   # an integer of over 4300 digits
        raise YamlError(f"invalid YAML value: {' '.join(str(e).split())}", node.start_mark.line + 1, path) from None
