"""Read one yaml config file strictly: every way a file can be misread is a :class:`UserError`.

PyYAML alone keeps the last of two equal keys, reads ``010`` as 8 (octal) and ``1:30`` as 90
(base 60), and reports encoding problems as a traceback. Here a file must be UTF-8 (a BOM is
fine; UTF-16 / UTF-32 with a BOM are decoded), its keys must be names, each once per
section, and those integer forms are refused; errors name the file, the line and the key.
"""

from __future__ import annotations

import codecs
import os
import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dassl_ext.errors import UserError

_STR = "tag:yaml.org,2002:str"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"
_BOMS = (  # UTF-32 first: its little-endian BOM starts with UTF-16's
    (codecs.BOM_UTF32_LE, "utf-32"), (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"),
    (codecs.BOM_UTF8, "utf-8-sig"),
)  # fmt: skip
_OCTAL = re.compile(r"[-+]?0[0-9_]+")  # YAML 1.1 octal (PyYAML): 010 is 8


class ConfigLoader(yaml.SafeLoader):
    """SafeLoader that checks the composed node tree (:meth:`check_node`) before building
    Python objects from it, so that problems are reported with their line numbers."""

    def __init__(self, text: str, path: str) -> None:
        super().__init__(text)
        self.path = path
        self._open: set[int] = set()  # the nodes being checked: a value's ancestors

    def where(self, node: Node) -> str:
        return f"{self.path} line {node.start_mark.line + 1}"

    def check_node(self, node: Node, key: str = "", seen: set[int] | None = None) -> None:
        """Refuse duplicated or non-name keys, surprising numbers and values that contain
        themselves anywhere below ``node`` (``key``: its dotted path)."""
        seen = set() if seen is None else seen
        if id(node) in seen:  # an alias: checked where its anchor is (once: no blow-up)
            if id(node) in self._open:
                raise UserError(
                    f"Config file {self.where(node)}: {key} contains itself (through a yaml "
                    "alias); write the value out."
                )
            return
        seen.add(id(node))
        self._open.add(id(node))
        if isinstance(node, MappingNode):
            self._check_mapping(node, key, seen)
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self.check_node(item, f"{key}[{i}]", seen)
        elif isinstance(node, ScalarNode) and node.style is None:
            self._check_number(node, key)
        self._open.discard(id(node))

    def _check_mapping(self, node: MappingNode, key: str, seen: set[int]) -> None:
        first_line: dict[str, int] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE:  # `<<: *anchor`: its keys may be overridden here
                self.check_node(value_node, key, seen)
                continue
            if not (isinstance(key_node, ScalarNode) and key_node.tag == _STR):
                shown = key_node.value if isinstance(key_node, ScalarNode) else "a list or mapping"
                shown = shown if shown not in ("", "~") else "null"
                inside = f" in section {key}" if key else ""
                raise UserError(
                    f"Config file {self.where(key_node)}: key {shown}{inside} is not a name; "
                    "config keys are names such as OPTIM or LR."
                )
            name = key_node.value
            full = f"{key}.{name}" if key else name
            line = key_node.start_mark.line + 1
            if name in first_line:
                lines = f"lines {first_line[name]} and {line}"
                lines = lines if first_line[name] != line else f"line {line}"
                raise UserError(
                    f"Config file {self.path} sets {full} twice, on {lines} (yaml would "
                    "silently keep only the second); keep one of them."
                )
            first_line[name] = line
            self.check_node(value_node, full, seen)

    def _check_number(self, node: ScalarNode, key: str) -> None:
        text = node.value
        if node.tag == _INT and _OCTAL.fullmatch(text):
            meaning = f"the octal number {self.construct_yaml_int(node)}"
        elif node.tag in (_INT, _FLOAT) and ":" in text:
            construct = self.construct_yaml_int if node.tag == _INT else self.construct_yaml_float
            meaning = f"the base-60 number {construct(node)}"
        else:
            return
        raise UserError(
            f"Config file {self.where(node)}: {key} is {text}, which yaml reads as {meaning}; "
            "write the number without leading zeros or colons (or quote it if it is text)."
        )


def _read_text(path: str) -> str:
    """The file's text: UTF-8 (with or without BOM), or UTF-16/32 with a BOM."""
    if os.path.isdir(path):
        raise UserError(f"Config file {path} is a folder; pass a yaml file.")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise UserError(f"Config file {path} cannot be read ({e.strerror}).") from None
    encoding = next((enc for bom, enc in _BOMS if data.startswith(bom)), "utf-8")
    nul = data.find(b"\x00")
    if encoding == "utf-8" and nul >= 0:
        raise UserError(
            f"Config file {path} holds a NUL byte at offset {nul} (a binary file, "
            "or UTF-16 without a byte-order mark); save it as UTF-8 text."
        )
    try:
        return data.decode(encoding)
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise UserError(
            f"Config file {path} is not {encoding.upper().replace('-SIG', '')} text: byte "
            f"0x{data[e.start]:02x} at offset {e.start} (line {line}) cannot be decoded; "
            "save the file as UTF-8."
        ) from None


def _yaml_error(path: str, e: yaml.YAMLError) -> UserError:
    mark = getattr(e, "problem_mark", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context = getattr(e, "context", None)  # e.g. "expected a single document in the stream"
    problem = f"{context} {problem}" if context and "scanning" not in context else problem
    tab = " (indent with spaces, not tabs)" if "'\\t'" in problem else ""
    return UserError(f"Config file {path} is not valid yaml{where}: {problem}{tab}.")


def read_yaml_file(path: str) -> Any:
    """The content of one yaml file (``None`` for an empty one), read strictly (see above)."""
    loader = ConfigLoader(_read_text(path), path)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        loader.check_node(node)
        return loader.construct_document(node)
    except yaml.YAMLError as e:
        raise _yaml_error(path, e) from None
    except RecursionError:
        raise UserError(
            f"Config file {path} nests lists or mappings too deeply to read; flatten it."
        ) from None
    finally:
        loader.dispose()
