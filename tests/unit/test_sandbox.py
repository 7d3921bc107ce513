"""The bounded template sandbox: what a template may compute, build, render, and how long."""

from __future__ import annotations

import time

import pytest
from jinja2 import nodes

from quorum.shared.errors import TemplateError
from quorum.shared.prompts import check_template, render_task_prompt
from quorum.shared.sandbox import Limits

LIMITS = Limits(max_chars=100_000, timeout_s=0.5)


@pytest.mark.parametrize(
    ("template", "kwargs", "expected"),
    [
        ("{{ 2**10 }} {{ 3 * 4 }} {{ 'ab' * 3 }} {{ 'a' + 'b' }}", {}, "1024 12 ababab ab"),
        ("{{ '%5d' % 3 }}|{{ '{:>4}'.format('x') }}|{{ 'x'|center(5) }}", {}, "    3|   x|  x  "),
        ("{{ s|replace('a', 'bb') }} {{ items|join(', ') }}", {"s": "aa", "items": [1, 2]}, ""),
        ("{% for i in range(3) %}{{ i }}{% endfor %}", {}, "012"),
        (
            "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}"
            "{% endfor %}{{ ns.n }}",
            {},
            "6",
        ),
        ("{% macro twice(s) %}{{ s ~ s }}{% endmacro %}{{ twice('ab') }}", {}, "abab"),
    ],
)
def test_ordinary_templates_render_as_before(template, kwargs, expected):
    rendered = render_task_prompt(template, kwargs, LIMITS)
    assert rendered == expected or (not expected and rendered == "bbbb 1, 2")


@pytest.mark.parametrize(
    ("template", "kwargs", "match"),
    [
        ("{{ 9**(9**8) }}", {}, "bits"),
        ("{{ 10**5000 }}", {}, "bits"),
        ("{{ (2**4000) * (2**4000) }}", {}, "bits"),
        ("{{ 'a' * 200000 }}", {}, r"repetition \(\*\)"),
        ("{{ [s] * 1000 }}", {"s": "x" * 1000}, r"repetition \(\*\)"),
        ("{{ s + s }}", {"s": "x" * 60_000}, r"concatenation \(\+\)"),
        ("{{ '%0999999d' % 1 }}", {}, "% format"),
        ("{{ '%*d' % (5, 1) }}", {}, "'\\*' width"),
        ("{{ '{0:>999999}'.format(1) }}", {}, "format's width"),
        ("{{ 'a'.center(999999) }}", {}, "str.center"),
        ("{{ 'a'.zfill(999999) }}", {}, "str.zfill"),
        ("{{ s.replace('', s) }}", {"s": "x" * 1000}, "str.replace"),
        ("{{ s|replace('x', s) }}", {"s": "x" * 1000}, "replace filter"),
        ("{{ 'a'|center(999999) }}", {}, "center filter"),
        ("{{ s|indent(999999) }}", {"s": "a\nb"}, "indent filter"),
        ("{{ range(1000)|join(s) }}", {"s": "x" * 1000}, "join filter"),
        ("{{ [1]|batch(999999, 0)|list }}", {}, "batch filter"),
        ("{{ [1]|slice(999999)|list }}", {}, "slice filter"),
        ("{{ s|tojson(999) }}", {"s": ["x"] * 100}, "tojson filter"),
        (
            "{% set ns = namespace(s='ab') %}{% for i in range(30) %}"
            "{% set ns.s = ns.s ~ ns.s %}{% endfor %}",
            {},
            "namespace value",
        ),
        (
            "{% macro f(s, n) %}{{ f(s ~ s, n - 1) if n else '' }}{% endmacro %}{{ f('ab', 30) }}",
            {},
            "an argument",
        ),
        ("{% for i in range(9) %}{{ s }}{% endfor %}", {"s": "x" * 20_000}, "rendered prompt"),
        ("{{ ([[1]] * 1000)|sum(start=[]) }}", {}, "sum filter"),
        ("{% for i in x|quorum_loop_items %}{% endfor %}", {"x": []}, "reserved name"),
        ("{{ lipsum(999999) }}", {}, "lipsum"),
        ("{{ x.append(1) }}", {"x": []}, "sandbox"),
    ],
)
def test_a_template_over_its_limits_is_refused_at_once(template, kwargs, match):
    started = time.process_time()  # CPU time: a busy host does not stretch it
    with pytest.raises(TemplateError, match=match):
        check_template(template, kwargs, LIMITS)
    assert time.process_time() - started < 0.3


@pytest.mark.parametrize(
    ("template", "kwargs", "what"),
    [
        (
            "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
            {},
            "render",
        ),
        (
            "{% for a in s %}{% for b in s %}{% endfor %}{% endfor %}",
            {"s": "x" * 100_000},
            "render",
        ),
        ("{{ a }} word " * 20_000, {"a": 1}, "compile"),
    ],
    ids=["nested ranges", "nested loops over a kwarg", "a huge template"],
)
def test_compile_and_render_stop_at_the_time_limit(template, kwargs, what):
    started = time.monotonic()
    with pytest.raises(TemplateError, match=f"over 0.5 s to {what}"):
        check_template(template, kwargs, LIMITS)
    assert time.monotonic() - started < 1.5


def test_deep_nesting_is_a_template_error():
    with pytest.raises(TemplateError, match="too deeply"):
        check_template("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", {}, LIMITS)


def test_a_trace_function_in_place_is_restored():
    import sys

    def tracer(*args):
        return None

    sys.settrace(tracer)
    try:
        render_task_prompt("{% for i in range(2) %}{{ i }}{% endfor %}", {}, LIMITS)
        assert sys.gettrace() is tracer
    finally:
        sys.settrace(None)


def test_parsing_finding_the_variables_and_generating_code_share_one_time_budget(monkeypatch):
    import quorum.shared.sandbox as sandbox

    budgets: list[str] = []
    bounded = sandbox._bounded

    def counted(limits, what, *, traced):
        budgets.append(what)
        return bounded(limits, what, traced=traced)

    monkeypatch.setattr(sandbox, "_bounded", counted)
    rendered = check_template("Hello {{ name }} #budget", {"name": "Ada"}, LIMITS)
    assert rendered == "Hello Ada #budget"
    assert budgets == ["compile", "render"]


class _Dropped:
    def __del__(self) -> None:
        _nothing()


def _nothing() -> None:
    return None


def test_a_deadline_met_in_a_finalizer_still_stops_the_compile():
    # An error raised in a finalizer, or in a generator being closed (the garbage collector
    # runs both mid-compile), is dropped by Python, and the trace function with it: the
    # compile that followed ran unbounded.
    import quorum.shared.sandbox as sandbox

    tree = sandbox.ENV.parse("{{ a }}{{ b }}")
    started = time.monotonic()
    bounded = sandbox._bounded(Limits(timeout_s=0.01), "compile", traced=True)
    with pytest.raises(TemplateError, match="to compile"), bounded:
        walks = [tree.find_all(nodes.Name) for _ in range(sandbox._EVERY)]
        for walk in walks:
            next(walk)
        del walk
        time.sleep(0.02)  # past the deadline
        for _ in range(sandbox._EVERY):
            walks.pop()  # closed here: a call into a Jinja generator's frame
            _Dropped()  # finalized here: a call into code outside the compile
        while time.monotonic() - started < 2:
            sandbox.ENV.parse("{{ c }}")
    assert time.monotonic() - started < 1
