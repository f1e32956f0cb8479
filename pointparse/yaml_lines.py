"""YAML with line numbers: mappings that remember the line of each key, for error messages that
name the file and line (``pointparse.pipeline``), and one clear error for keys no file can mean
(a list as a key; a repeated key, which plain YAML silently resolves to the last).
"""

from __future__ import annotations

from typing import Any

import yaml


class LineDict(dict):
    """A mapping that remembers the line of each key (1-based) for error messages."""

    line: int = 0
    key_lines: dict


class LineLoader(yaml.SafeLoader):
    pass


class KeyProblem(Exception):
    """A mapping key no file can mean (raised while parsing; the caller adds the file)."""

    def __init__(self, line: int, problem: str):
        super().__init__(problem)
        self.line, self.problem = line, problem


def _construct_mapping(loader, node):
    loader.flatten_mapping(node)
    d = LineDict()
    d.line = node.start_mark.line + 1
    d.key_lines = {}
    for k_node, v_node in node.value:
        k = loader.construct_object(k_node, deep=True)
        line = k_node.start_mark.line + 1
        # a list or mapping as a key (``? [a, b]``) cannot be a name; a repeated key would
        # silently replace the first (two stages of one name: the last won)
        if not isinstance(k, (str, int, float, bool)) and k is not None:
            raise KeyProblem(line, f"a key must be a name, got {k!r}")
        if k in d.key_lines:
            raise KeyProblem(line, f"duplicate key {k!r} (first on line {d.key_lines[k]}): the second would "
                                    "silently replace the first")
        d[k] = loader.construct_object(v_node, deep=True)
        d.key_lines[k] = line
    return d


LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def line_of(d: Any, key: Any = None) -> int:
    """The 1-based line of ``key`` in mapping ``d`` (of ``d`` itself without a key); 0 if unknown."""
    if isinstance(d, LineDict):
        return d.key_lines.get(key, d.line) if key is not None else d.line
    return 0
