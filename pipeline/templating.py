"""The Jinja environment prompt templates render in: Jinja's, but `*` refuses text.

CSV and TSV columns are read as text, exactly as written, so a template's `{{ price * 2 }}`
over a `price` of "1.50" would render "1.501.50" (Python's text repetition) and pay for a
nonsense prompt. Here `a * b` compiles to `TemplateEnvironment.multiply`, which raises a
template error (recorded on the row) naming the expression and the fix; a text literal
repeated (`{{ "-" * 40 }}`) is left alone. Templates without `*` compile as in plain Jinja.
"""

from __future__ import annotations

from typing import Any

import jinja2
import jinja2.compiler
import jinja2.nodes

from .errors import printable


def _source(node: jinja2.nodes.Node) -> str | None:
    """A short template expression as written, for an error message; None if not short."""
    if isinstance(node, jinja2.nodes.Name):
        return node.name
    if isinstance(node, jinja2.nodes.Const) and isinstance(node.value, int | float | str):
        return repr(node.value)
    if isinstance(node, jinja2.nodes.Getattr):
        inner = _source(node.node)
        return None if inner is None else f"{inner}.{node.attr}"
    if isinstance(node, jinja2.nodes.Getitem) and isinstance(node.arg, jinja2.nodes.Const):
        inner = _source(node.node)
        return None if inner is None else f"{inner}[{node.arg.value!r}]"
    if isinstance(node, jinja2.nodes.Filter) and node.node and not (node.args or node.kwargs):
        inner = _source(node.node)
        return None if inner is None else f"{inner} | {node.name}"
    return None


def _is_text(node: jinja2.nodes.Node) -> bool:
    return isinstance(node, jinja2.nodes.Const) and isinstance(node.value, str)


class _CodeGenerator(jinja2.compiler.CodeGenerator):
    """Compiles `a * b` to `environment.multiply`, unless a literal text repeats (`"-" * 40`)."""

    @jinja2.compiler.optimizeconst
    def visit_Mul(self, node: jinja2.nodes.BinExpr, frame: jinja2.compiler.Frame) -> None:
        if _is_text(node.left) or _is_text(node.right):
            super().visit_Mul(node, frame)
            return
        self.write(f"environment.multiply({_source(node.left)!r}, {_source(node.right)!r}, ")
        self.visit(node.left, frame)
        self.write(", ")
        self.visit(node.right, frame)
        self.write(")")


def _shown(value: Any) -> str:
    text = repr(value)
    return printable(text if len(text) <= 40 else text[:37] + "...")


class TemplateEnvironment(jinja2.Environment):
    """Jinja whose `*` refuses text: a CSV `price` of "1.50" times 2 is not "1.501.50".

    Only `*` changes (compiled to `multiply`), so other templates render at the same speed;
    the sandbox would also do it, at a cost on every attribute and item access.
    """

    code_generator_class = _CodeGenerator

    @staticmethod
    def multiply(left_source: str | None, right_source: str | None, left: Any, right: Any) -> Any:
        """`left * right`, or a template error when text meets a number or text."""
        operand = (int, float, str)  # text times a list or None fails as Python fails it
        if not (isinstance(left, str) and isinstance(right, operand)) and not (
            isinstance(right, str) and isinstance(left, operand)
        ):
            return left * right
        what = " and ".join(
            f"text ({_shown(v)})" if isinstance(v, str) else f"a number ({_shown(v)})"
            for v in (left, right)
        )
        written, fix = "", "convert the text first with `| float` or `| int`"
        if left_source and right_source:
            written = f"`{left_source} * {right_source}`: "
            sides = [
                f"{source} | float" if isinstance(value, str) else source
                for source, value in ((left_source, left), (right_source, right))
            ]
            fix = f"write {{{{ {sides[0]} * {sides[1]} }}}}"
        raise jinja2.TemplateRuntimeError(
            f"{written}`*` between {what}; CSV and TSV columns are text: {fix}"
        )
