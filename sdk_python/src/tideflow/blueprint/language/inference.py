"""What an expression evaluates to, as far as its shape tells without any value.

The CEL bindings give no typed syntax tree, so registration reads the shape from the tokens
(the expression has parsed already): the operator of lowest precedence outside brackets
decides (`a || b` and `x > 1` are bools, `x + 1` never is), else a leading `!` or `-`, else
the last step of a member chain (a call's declared result, a literal, a bracketed part).
Whatever stands on a value (a variable, a field, an index, `dyn(...)`) is unknown until run
time. The rule is never to rule out a type the expression could have: registration refuses a
`when` only when it can never be a bool.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeAlias

from tideflow.blueprint.language.cel import CALLED, MACROS
from tideflow.blueprint.language.refs import Token, tokenize

Types: TypeAlias = frozenset[str] | None
"""The CEL types a value may have (`{"int", "double"}`); None: any."""

BOOL: frozenset[str] = frozenset({"bool"})
_NUMBERS = frozenset({"int", "uint", "double"})
_ARITHMETIC: Mapping[str, frozenset[str]] = {
    "+": _NUMBERS | {"string", "bytes", "list", "timestamp", "duration"},
    "-": _NUMBERS | {"timestamp", "duration"},
    "*": _NUMBERS,
    "/": _NUMBERS,
    "%": frozenset({"int", "uint"}),
}
"""What each arithmetic operator can give: never a bool."""

_BOOL_OPERATORS = frozenset({"||", "&&", "==", "!=", "<", "<=", ">", ">=", "in"})
_PAIRS = {"(": ")", "[": "]", "{": "}"}
_TWO_CHARACTER = frozenset({"||", "&&", "==", "!=", "<=", ">="})
_LITERALS: Mapping[str, Types] = {"true": BOOL, "false": BOOL, "null": frozenset({"null"})}
_ARTICLES = {"int": "an", "uint": "a", "optional": "an", "bytes": "", "null": ""}


def result_types(source: str) -> Types:
    """The types `source` may evaluate to; None when only its values can tell."""
    tokens = tokenize(source)
    return _Shape(tokens).infer(0, len(tokens))


def describe(types: frozenset[str]) -> str:
    """`a string`, `a number or a string`."""
    words = ["a number"] if types >= _NUMBERS else []
    for name in sorted(types - _NUMBERS if words else types):
        article = _ARTICLES.get(name, "a")
        words.append(f"{article} {name}" if article else name)
    return " or ".join(words)


class _Shape:
    def __init__(self, tokens: list[Token]) -> None:
        self.tokens = tokens
        self.closing = _closing_brackets(tokens)

    def infer(self, lo: int, hi: int) -> Types:
        """The types of `tokens[lo:hi]`, a whole expression."""
        if lo >= hi:
            return None
        operators = self._operators(lo, hi)
        names = {name for _, name in operators}
        if "?" in names:
            return self._conditional(operators, hi)
        if names & _BOOL_OPERATORS:
            return BOOL
        arithmetic = [name for _, name in operators if name in _ARITHMETIC]
        if arithmetic:
            # The last operator of the lowest precedence applies last: `a * b - c` is a `-`.
            additive = [name for name in arithmetic if name in ("+", "-")]
            return _ARITHMETIC[(additive or arithmetic)[-1]]
        first = self.tokens[lo]
        if first == Token("punct", "!"):
            return BOOL
        if first == Token("punct", "-"):
            # Negation keeps its operand's type, a bool's too: the bindings read `-false` as true.
            return self.infer(lo + 1, hi)
        return self._member_chain(lo, hi)

    def _operators(self, lo: int, hi: int) -> list[tuple[int, str]]:
        """The binary and ternary operators outside brackets, by position."""
        tokens = self.tokens
        found: list[tuple[int, str]] = []
        k = lo
        while k < hi:
            token = tokens[k]
            if token.kind == "ident" and token.text == "in":
                found.append((k, "in"))
            elif token.kind == "punct":
                pair = token.text + tokens[k + 1].text if self._is_punct(k + 1, hi) else ""
                if token.text in _PAIRS:
                    k = self.closing.get(k, hi)
                elif pair in _TWO_CHARACTER:
                    found.append((k, pair))
                    k += 1
                elif token.text in "?:<>+*/%" or (token.text == "-" and self._after_operand(k, lo)):
                    found.append((k, token.text))
            k += 1
        return found

    def _after_operand(self, k: int, lo: int) -> bool:
        """Whether the token before `k` ends an operand, so that a `-` at `k` subtracts."""
        if k == lo:
            return False
        before = self.tokens[k - 1]
        if before.kind == "punct":
            return before.text in ")]}"
        return before.kind != "ident" or before.text != "in"

    def _conditional(self, operators: list[tuple[int, str]], hi: int) -> Types:
        """`c ? a : b`: the types of both branches. Nested ones nest to the right."""
        question = next(k for k, name in operators if name == "?")
        depth = 0
        for k, name in operators:
            if k <= question or name not in ("?", ":"):
                continue
            if name == "?":
                depth += 1
            elif depth:
                depth -= 1
            else:
                then, otherwise = self.infer(question + 1, k), self.infer(k + 1, hi)
                return None if then is None or otherwise is None else then | otherwise
        return None

    def _member_chain(self, lo: int, hi: int) -> Types:
        """A primary and its selections, indexes and method calls: the last step decides."""
        tokens = self.tokens
        k = lo + 1 if self._is(lo, ".") else lo  # `.name` reads from the root scope
        if k >= hi:
            return None
        token = tokens[k]
        types: Types = None
        end: int | None = k + 1
        if token.kind == "ident":
            if self._is(k + 1, "("):
                types, end = _call(token.text), self._past(k + 1)
            else:
                types = _LITERALS.get(token.text)
        elif token.kind == "string":
            types = frozenset({"bytes" if token.binary else "string"})
        elif token.kind == "number":
            types = frozenset({_number_type(token.text)})
        elif token.text == "(":
            end = self._past(k)
            types = None if end is None else self.infer(k + 1, end - 1)
        elif token.text in ("[", "{"):
            types, end = frozenset({"list" if token.text == "[" else "map"}), self._past(k)
        else:
            return None
        while end is not None and end < hi:
            k = end
            if self._is(k, ".") and k + 1 < hi and tokens[k + 1].kind == "ident":
                if self._is(k + 2, "("):
                    types, end = _call(tokens[k + 1].text), self._past(k + 2)
                else:
                    types, end = None, k + 2  # a field: its value's type
            elif self._is(k, "[") or self._is(k, "{"):
                types, end = None, self._past(k)  # an index, or a message built
            else:
                return None  # a shape not understood here: no claim
        return None if end is None else types

    def _past(self, k: int) -> int | None:
        """Just past the bracket that closes the one at `k`."""
        closing = self.closing.get(k)
        return None if closing is None else closing + 1

    def _is_punct(self, k: int, hi: int) -> bool:
        return k < hi and self.tokens[k].kind == "punct"

    def _is(self, k: int, text: str) -> bool:
        return k < len(self.tokens) and self.tokens[k] == Token("punct", text)


def _call(name: str) -> Types:
    if name in MACROS:
        return frozenset({MACROS[name][0]})
    result = CALLED.get(name)
    return None if result is None else frozenset({result})


def _number_type(text: str) -> str:
    lowered = text.lower()
    if lowered.endswith("u"):
        return "uint"
    if lowered.startswith("0x") or not any(c in lowered for c in ".e"):
        return "int"
    return "double"


def _closing_brackets(tokens: list[Token]) -> dict[int, int]:
    """The position of each opening bracket's closing one (the source has parsed, so they
    balance; brackets inside string literals are string tokens)."""
    closing: dict[int, int] = {}
    open_at: list[int] = []
    for k, token in enumerate(tokens):
        if token.kind != "punct":
            continue
        if token.text in _PAIRS:
            open_at.append(k)
        elif token.text in ")]}" and open_at:
            closing[open_at.pop()] = k
    return closing
