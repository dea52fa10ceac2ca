"""What an expression refers to, read from its tokens.

The CEL bindings report an expression's root variables but not the fields it selects from
them, and registration must know which blocks an expression reads (`blocks.ocr.output`) and
which variables (`vars.pages`). A small lexer finds them: string literals and comments are
skipped, so `"blocks.a"` inside a string is not a reference. It runs on expressions that have
already parsed, so it need not report syntax errors.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

TokenKind = Literal["ident", "string", "number", "punct"]

_STRING_START = re.compile(r"""([rRbB]{0,2})('''|\"\"\"|'|")""")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+[uU]?|[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?[uU]?")
_PREFIXES = frozenset({"", "r", "b", "rb", "br"})
_MACROS = frozenset({"all", "exists", "exists_one", "existsOne", "map", "filter"})


@dataclass(frozen=True, slots=True)
class Token:
    kind: TokenKind
    text: str
    """A string token's text is its body between the quotes."""
    plain: bool = True
    """False for a string whose body has escapes, so that its text is not its value."""
    binary: bool = False
    """A bytes literal (`b"..."`)."""


def string_literal(source: str, i: int) -> tuple[int, int, int, bool] | None:
    """If a string literal starts at `i`: where its body starts and ends, where the literal
    ends, and whether the body has escapes. An unterminated literal runs to the end."""
    start = _STRING_START.match(source, i)
    if start is None or start.group(1).lower() not in _PREFIXES:
        return None
    raw = "r" in start.group(1).lower()
    quote = start.group(2)
    j, n = start.end(), len(source)
    escaped = False
    while j < n and not source.startswith(quote, j):
        if not raw and source[j] == "\\":
            escaped = True
            j += 1
        j += 1
    return start.end(), min(j, n), min(j + len(quote), n), escaped


def tokenize(source: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(source)
    while i < n:
        c = source[i]
        if c.isspace():
            i += 1
            continue
        if source.startswith("//", i):
            end = source.find("\n", i)
            i = n if end < 0 else end
            continue
        string = string_literal(source, i)
        if string is not None:
            body_start, body_end, end, escaped = string
            binary = "b" in source[i:body_start].lower()  # the prefix and the quotes
            body = source[body_start:body_end]
            tokens.append(Token("string", body, plain=not escaped, binary=binary))
            i = end
            continue
        if match := _IDENT.match(source, i):
            tokens.append(Token("ident", match.group()))
            i = match.end()
            continue
        if match := _NUMBER.match(source, i):
            tokens.append(Token("number", match.group()))
            i = match.end()
            continue
        tokens.append(Token("punct", c))
        i += 1
    return tokens


@dataclass(frozen=True, slots=True)
class MemberRef:
    """`<root>.<name>` or `<root>["<name>"]`; `name` is None when the key is computed."""

    root: str
    name: str | None
    guarded: bool
    """The reference only tests presence: `has(blocks.a)`."""


@dataclass(frozen=True, slots=True)
class References:
    bound: frozenset[str]
    """Names bound by comprehension macros (`x` in `list.map(x, x * 2)`)."""
    members: tuple[MemberRef, ...]


def references(source: str, roots: frozenset[str]) -> References:
    """The members of `roots` that `source` selects, and its comprehension variables."""
    tokens = tokenize(source)

    def at(k: int) -> Token | None:
        return tokens[k] if 0 <= k < len(tokens) else None

    def punct(k: int, text: str) -> bool:
        token = at(k)
        return token is not None and token.kind == "punct" and token.text == text

    def ident(k: int, text: str | None = None) -> bool:
        token = at(k)
        return token is not None and token.kind == "ident" and text in (None, token.text)

    bound: set[str] = set()
    for k, token in enumerate(tokens):
        if (
            token.kind == "ident"
            and token.text in _MACROS
            and punct(k - 1, ".")
            and punct(k + 1, "(")
            and ident(k + 2)
            and punct(k + 3, ",")
        ):
            bound.add(tokens[k + 2].text)

    members: list[MemberRef] = []
    for k, token in enumerate(tokens):
        if token.kind != "ident" or token.text not in roots or token.text in bound:
            continue
        if punct(k - 1, "."):
            continue  # a field of something else: `input.blocks`
        guarded = punct(k - 1, "(") and ident(k - 2, "has") and not punct(k - 3, ".")
        name: str | None = None
        end = k + 1
        if punct(k + 1, ".") and ident(k + 2):
            name, end = tokens[k + 2].text, k + 3
        elif punct(k + 1, "[") and punct(k + 3, "]"):
            key = tokens[k + 2]
            if key.kind == "string" and key.plain:
                name, end = key.text, k + 4
        members.append(MemberRef(token.text, name, guarded and punct(end, ")")))
    return References(frozenset(bound), tuple(members))


def message_types(source: str) -> list[str]:
    """The message types `source` builds (`Foo{a: 1}`, `google.protobuf.Timestamp{}`): a name
    right before `{` can only be one, as a map literal never follows a name but `in`."""
    tokens = tokenize(source)
    found: list[str] = []
    for k in range(len(tokens) - 1):
        token, after = tokens[k], tokens[k + 1]
        if token.kind != "ident" or token.text == "in" or after != Token("punct", "{"):
            continue
        parts = [token.text]
        j = k - 1
        while j >= 1 and tokens[j] == Token("punct", ".") and tokens[j - 1].kind == "ident":
            parts.append(tokens[j - 1].text)
            j -= 2
        found.append(".".join(reversed(parts)))
    return found
