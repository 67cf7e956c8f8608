"""HTML visible-text extraction (lxml + html-text): what a reader of the page would see."""

from __future__ import annotations

from pathlib import Path

import pytest

from longdoc.components.core.config import IngestParams
from longdoc.components.data.ingest import ingest, read_corpus
from longdoc.components.data.readers import (
    Document,
    Rejected,
    decode_bytes,
    html_to_text,
    iter_documents,
)


def test_invisible_content_removed() -> None:
    page = (
        "<html><head><title>T</title><style>.x{color:red}</style>"
        "<script>var s = '<p>script text</p>';</script></head><body>"
        "<noscript>enable javascript</noscript><template><p>template text</p></template>"
        "<p>Shown <span hidden>hidden attr</span>text.</p>"
        "<div style='display: none'>display none</div><div style='visibility:hidden'>vh</div>"
        "<!-- a comment --><svg><text>svg text</text></svg><p>End.</p></body></html>"
    )
    text, title = html_to_text(page)
    assert title == "T"
    assert text == "Shown text.\n\nEnd."


def test_blocks_become_line_breaks_and_entities_decoded() -> None:
    page = (
        "<h1>Head &amp; title</h1><p>One&nbsp;two &lt;three&gt; &#233;&eacute; &#x263A;</p>"
        "<ul><li>first<li>second</ul><div>div a</div><div>div b</div>"
        "<table><tr><td>c1</td><td>c2</td></tr></table>"
        "<p>line<br>break, inline <b>bold</b><i>italic</i>.</p>"
    )
    text, _ = html_to_text(page)
    assert text == (
        "Head & title\n\nOne two <three> \u00e9\u00e9 \u263a\n\nfirst\nsecond\n\n"
        "div a\ndiv b\nc1\nc2\n\nline\nbreak, inline bolditalic."
    )  # no whitespace between </b> and <i> in the source: none in the text


def test_broken_markup_is_recovered() -> None:
    text, _ = html_to_text("<p>unclosed <b>bold <i>both</p><p>next</x> &nosuch; end")
    assert text.startswith("unclosed bold both")
    assert "next" in text and "end" in text


def test_empty_and_comment_only_pages_have_no_text() -> None:
    assert html_to_text("") == ("", "")
    assert html_to_text("<!-- nothing -->") == ("", "")
    assert html_to_text("<html><head><title>Only title</title></head></html>") == (
        "",
        "Only title",
    )


def test_deep_nesting_within_limit_kept_beyond_limit_rejected() -> None:
    text, _ = html_to_text("<div>" * 1000 + "deep text" + "</div>" * 1000)
    assert text == "deep text"
    with pytest.raises(ValueError, match="stopped early"):
        html_to_text("<div>" * 3000 + "too deep" + "</div>" * 3000)


def test_declared_charset_used_when_not_utf8() -> None:
    page = '<html><head><meta charset="koi8-r"></head><body><p>Привет, мир.</p></body></html>'
    data = page.encode("koi8-r")
    assert decode_bytes(data, "koi8-r") == (page, "koi8-r")
    # UTF-8 still wins when the bytes are UTF-8 whatever the label says
    assert decode_bytes(page.encode(), "koi8-r") == (page, "utf-8")


def test_html_files_through_the_readers(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    page = (
        "<html><head><meta http-equiv='Content-Type' content='text/html; charset=windows-1251'>"
        "<title>Новости</title></head><body><p>Привет, мир.</p><p>Второй абзац.</p></body></html>"
    )
    (src / "ru.html").write_bytes(page.encode("cp1251"))
    (src / "deep.htm").write_text("<div>" * 3000 + "x" + "</div>" * 3000)
    (src / "empty.html").write_text("<html><body><script>only()</script></body></html>")
    found = list(iter_documents(src))
    docs = {d.member: d for d in found if isinstance(d, Document)}
    rejected = {r.member: r.reason for r in found if isinstance(r, Rejected)}
    assert docs["ru.html"].text == "Привет, мир.\n\nВторой абзац."
    assert docs["ru.html"].meta == {"title": "Новости"}
    assert "stopped early" in rejected["deep.htm"]

    m = ingest(IngestParams(sources=[src], out=tmp_path / "corpus"))
    assert m["counts"] == {**m["counts"], "inputs": 3, "written": 1, "quarantined": 2}
    rows = list(read_corpus(tmp_path / "corpus"))
    assert [r["member"] for r in rows] == ["ru.html"]
    assert [rows[0]["text"][s["start"] : s["end"]] for s in rows[0]["sentences"]] == [
        "Привет, мир.",
        "Второй абзац.",
    ]
    reasons = (tmp_path / "corpus" / "quarantine.jsonl").read_text()
    assert "empty or whitespace-only" in reasons and "stopped early" in reasons
