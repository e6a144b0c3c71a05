"""Arithmetic formulas over + - * / and brackets: a bounded tokenizer, a recursive-descent parser and
exact evaluation with fractions. Nothing here ever evaluates text as code."""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

# Bounds that keep every call to a few milliseconds whatever the input.
MAX_CHARS = 256
MAX_TOKENS = 96
MAX_DEPTH = 24
MAX_DIGITS = 9

OPERATORS = "+-*/"
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
ATOM = 3  # precedence of a number: never needs brackets


class FormulaError(ValueError):
    """A formula that cannot be read or evaluated. `kind` names why, for classification and feedback."""

    def __init__(self, kind: str, detail: str):
        super().__init__(detail)
        self.kind = kind  # illegal_char | spaces | syntax | incomplete | too_long | too_deep | div_zero


@dataclass(frozen=True)
class Num:
    value: Fraction


@dataclass(frozen=True)
class BinOp:
    op: str
    left: "Node"
    right: "Node"


Node = Num | BinOp

_TOKEN = re.compile(r"[0-9]+|[-+*/()]")
_WHITESPACE = " \t\r\n"


def tokenize(text: str, strict: bool = False) -> list[str]:
    """Split a formula into ASCII number and operator tokens. With `strict`, any whitespace is illegal
    (the paper's rule); otherwise spaces, tabs and newlines are ignored."""
    if len(text) > MAX_CHARS:
        raise FormulaError("too_long", f"the formula is longer than {MAX_CHARS} characters")
    tokens: list[str] = []
    pos = 0
    while pos < len(text):
        char = text[pos]
        if char in _WHITESPACE:
            if strict:
                raise FormulaError("spaces", "the formula contains a space")
            pos += 1
            continue
        match = _TOKEN.match(text, pos)
        if match is None:
            raise FormulaError("illegal_char", f"the formula contains the illegal character {char!r}")
        token = match.group()
        if token.isdigit() and len(token) > MAX_DIGITS:
            raise FormulaError("too_long", f"the number {token[:12]}... has too many digits")
        tokens.append(token)
        pos = match.end()
    if len(tokens) > MAX_TOKENS:
        raise FormulaError("too_long", f"the formula has more than {MAX_TOKENS} tokens")
    return tokens


class _Parser:
    """expr := term (('+'|'-') term)* ; term := factor (('*'|'/') factor)* ; factor := NUMBER | '(' expr ')'"""

    def __init__(self, tokens: list[str]):
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> str:
        token = self.peek()
        if token is None:
            raise FormulaError("incomplete", "the formula ends too early")
        self.pos += 1
        return token

    def expr(self, depth: int) -> Node:
        node = self.term(depth)
        while self.peek() in ("+", "-"):
            op = self.take()
            node = BinOp(op, node, self.term(depth))
        return node

    def term(self, depth: int) -> Node:
        node = self.factor(depth)
        while self.peek() in ("*", "/"):
            op = self.take()
            node = BinOp(op, node, self.factor(depth))
        return node

    def factor(self, depth: int) -> Node:
        if depth > MAX_DEPTH:
            raise FormulaError("too_deep", f"the formula nests brackets deeper than {MAX_DEPTH}")
        token = self.take()
        if token.isdigit():
            return Num(Fraction(int(token)))
        if token == "(":
            node = self.expr(depth + 1)
            if self.take() != ")":
                raise FormulaError("syntax", "a bracket is not closed")
            return node
        raise FormulaError("syntax", f"{token!r} appears where a number or '(' is expected")


def parse(text: str, strict: bool = False) -> Node:
    """Parse a formula into a tree; raise FormulaError (never anything else) on bad input."""
    tokens = tokenize(text, strict)
    if not tokens:
        raise FormulaError("incomplete", "the formula is empty")
    parser = _Parser(tokens)
    node = parser.expr(0)
    if parser.peek() is not None:
        raise FormulaError("syntax", f"unexpected {parser.peek()!r} after a complete formula")
    return node


def apply(op: str, a: Fraction, b: Fraction) -> Fraction:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        raise FormulaError("div_zero", "the formula divides by zero")
    return a / b


def evaluate(node: Node) -> Fraction:
    if isinstance(node, Num):
        return node.value
    return apply(node.op, evaluate(node.left), evaluate(node.right))


def leaves(node: Node) -> list[Fraction]:
    """The numbers a formula uses, left to right."""
    if isinstance(node, Num):
        return [node.value]
    return leaves(node.left) + leaves(node.right)


def fmt_number(value: Fraction) -> str:
    """One token per number: 24, -4, or (8/3) for a fraction."""
    if value.denominator == 1:
        return str(value.numerator)
    return f"({value.numerator}/{value.denominator})"


def steps(node: Node) -> list[tuple[Fraction, str, Fraction, Fraction]]:
    """The formula as a sequence of (a, op, b, a op b) steps in evaluation order."""
    out: list[tuple[Fraction, str, Fraction, Fraction]] = []

    def walk(n: Node) -> Fraction:
        if isinstance(n, Num):
            return n.value
        a, b = walk(n.left), walk(n.right)
        value = apply(n.op, a, b)
        out.append((a, n.op, b, value))
        return value

    walk(node)
    return out


def join(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
    """Write `left op right` with the fewest brackets; texts carry the precedence of their top operator."""
    (ltext, lprec), (rtext, rprec) = left, right
    prec = _PRECEDENCE[op]
    if lprec < prec:
        ltext = f"({ltext})"
    # The right operand of - and / also needs brackets at equal precedence: a-(b+c), a/(b*c).
    if rprec < prec or (rprec == prec and op in "-/"):
        rtext = f"({rtext})"
    return f"{ltext}{op}{rtext}", prec
