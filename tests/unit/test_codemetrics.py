"""AST metrics against complexities worked out by hand."""

import pytest

from bolt_tasks.codemetrics import analyze_source, count_lines
from tests.trees import GOOD, GOOD_COMPLEXITY


def test_functions_classes_and_complexity_of_a_small_module():
    metrics = analyze_source(GOOD, "good.py")
    found = {fn.name: fn.complexity for fn in metrics.functions}
    assert found == GOOD_COMPLEXITY
    assert metrics.classes == 1
    assert metrics.imports == ["os", "collections"]
    assert [fn.line for fn in metrics.functions] == [6, 10, 21]


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("    return 1\n", 1),
        ("    return a if b else c\n", 2),
        ("    while a:\n        pass\n", 2),
        ("    return a or b or c\n", 3),
        ("    return [x for x in a if x if not x]\n", 4),
        ("    match a:\n        case 1:\n            pass\n        case _:\n            pass\n", 3),
        ("    async for x in a:\n        pass\n", 2),
        ("    def inner():\n        if a:\n            pass\n    return inner\n", 1),
        ("    f = lambda: a if b else c\n", 1),
    ],
)
def test_each_kind_of_branch_counts_as_worked_out(body, expected):
    source = f"async def f(a=1, b=2, c=3):\n{body}"
    metrics = analyze_source(source)
    assert metrics.functions[0].complexity == expected


def test_nested_functions_and_methods_get_qualified_names():
    source = (
        "class A:\n    class B:\n        def m(self):\n            def inner():\n"
        "                pass\n"
    )
    names = [fn.name for fn in analyze_source(source).functions]
    assert names == ["A.B.m", "A.B.m.inner"]


def test_functions_inside_blocks_are_found():
    source = "if x:\n    def a(): pass\nelse:\n    def b(): pass\ntry:\n    pass\nexcept E:\n"
    source += "    def c(): pass\nfinally:\n    def d(): pass\n"
    assert [fn.name for fn in analyze_source(source).functions] == ["a", "b", "c", "d"]


def test_relative_imports_keep_their_dots():
    assert analyze_source("from . import a\nfrom ..b import c\n").imports == [".", "..b"]


def test_code_lines_leave_out_blanks_and_comments():
    assert count_lines("a = 1\n\n# note\n   # indented note\nb = 2  # trailing\n") == (5, 2)


def test_a_syntax_error_is_raised_not_swallowed():
    with pytest.raises(SyntaxError):
        analyze_source("def broken(:\n")
