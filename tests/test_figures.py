"""One number, one place: every measured figure lives in docs/speed.md's summary table, and a page
that quotes one links to it as `[VALUE](speed.md#summary "NAME")`. The quote must name a figure of
the table and say exactly its value, so two pages cannot give one figure two values. Fast: text only.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SPEED = ROOT / "docs" / "speed.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
QUOTE = re.compile(r"\[([^\]]+)\]\((?:docs/)?speed\.md#summary \"([^\"]+)\"\)")
FENCE = re.compile(r"^[ \t]*```.*?^[ \t]*```", re.M | re.S)


def registry() -> dict[str, dict]:
    """The summary table: figure name -> {value, measured, what}."""
    text = SPEED.read_text()
    start = text.index("\n## Summary\n")
    section = text[start:text.index("\n## ", start + 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")] if line.startswith("| `") else []
        if cells:
            name = cells[0].strip("`")
            assert name not in rows, f"docs/speed.md's summary names {name} twice"
            assert len(cells) == 4, line
            rows[name] = {"value": cells[1], "measured": cells[2], "what": cells[3]}
    return rows


def quotes() -> list[tuple[str, str, str]]:
    """(page, figure name, the value it says) for every quote outside code blocks."""
    found = []
    for page in PAGES:
        text = FENCE.sub("", page.read_text())
        for value, name in QUOTE.findall(" ".join(text.split())):  # a quote may wrap across lines
            found.append((page.relative_to(ROOT).as_posix(), name, value))
    return found


def test_the_summary_holds_dated_figures():
    rows = registry()
    assert {"quickstart", "engines-1w", "study-vs-hand", "elastic-tf_keras", "elastic-keras_jax"} <= set(rows)
    for name, row in rows.items():
        assert re.fullmatch(r"20\d\d-\d\d-\d\d(, -\d\d)?", row["measured"]), (name, row["measured"])
        assert re.search(r"\d", row["value"]), (name, row["value"])


def test_every_quoted_figure_says_the_summarys_value():
    rows = registry()
    found = quotes()
    assert len({page for page, _, _ in found}) >= 5, found  # README and several pages quote figures
    problems = [f"{page}: [{value}] quotes {name!r}, which docs/speed.md's summary does not hold"
                for page, name, value in found if name not in rows]
    problems += [f"{page}: [{value}] quotes {name!r}, whose value in docs/speed.md's summary is "
                 f"{rows[name]['value']!r}" for page, name, value in found
                 if name in rows and not _says(value, rows[name]["value"])]
    assert not problems, "\n".join(problems)


def _says(quote: str, value: str) -> bool:
    """A quote says the value when it is the value itself, or words around every number of it."""
    if quote == value:
        return True
    numbers = re.findall(r"\d+(?:\.\d+)?", value)
    return re.findall(r"\d+(?:\.\d+)?", quote) == numbers and all(n in quote for n in numbers)


def test_a_changed_figure_is_caught(tmp_path, monkeypatch):
    """The check itself: a page quoting another value for a figure fails it."""
    page = tmp_path / "page.md"
    page.write_text('On 1 worker: [1.71 s against 2.36 s](speed.md#summary "engines-1w").\n')
    monkeypatch.setattr(f"{__name__}.PAGES", [page])
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    (name, value), = [(n, v) for _, n, v in quotes()]
    assert name == "engines-1w" and not _says(value, registry()["engines-1w"]["value"])
    assert _says("1.70 s against tf_keras's 2.36 s", registry()["engines-1w"]["value"])


def test_stale_figures_are_gone():
    """Values the issue found on two pages with two meanings stay out of the other pages."""
    stale = {"2.36 s": "engines-1w", "1.00-1.17x": "study-vs-hand", "(20 s on the test cluster)": "elastic-tf_keras",
             "the 10 costliest cases": "the heavy marker"}
    for page in PAGES:
        if page == SPEED:
            continue
        text = " ".join(QUOTE.sub("", page.read_text()).split())
        for words, figure in stale.items():
            assert words not in text, f"{page.name} says {words!r} outside a quote of {figure}"
