"""HTML text as a reader sees it: code verbatim, no invented spaces between inline elements.

The markup below is written to the shapes real generators emit (Pygments through Sphinx,
highlight.js, Markdown renderers, hand-written pages); expected texts are written out by hand.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from longdoc.components.core.config import IngestParams
from longdoc.components.data.ingest import WHITESPACE_MODES, ingest, normalize, read_corpus
from longdoc.components.data.readers import VERBATIM_END, VERBATIM_START, html_to_text

# Sphinx + Pygments (`.. code-block:: pycon`): a prompt span, token spans with no whitespace
# between them, new lines and indentation only in the text between spans.
SPHINX = (
    '<div class="highlight-pycon notranslate"><div class="highlight"><pre><span></span>'
    '<span class="gp">&gt;&gt;&gt; </span><span class="k">def</span> <span class="nf">function'
    '</span><span class="p">(</span><span class="n">a</span><span class="p">):</span>\n'
    '<span class="gp">... </span>    <span class="k">pass</span>\n'
    '<span class="gp">... </span>\n'
    '<span class="gp">&gt;&gt;&gt; </span><span class="n">function</span><span class="p">(</span>'
    '<span class="mi">0</span><span class="p">,</span> <span class="n">a</span><span class="o">='
    '</span><span class="mi">0</span><span class="p">)</span>\n'
    '<span class="gt">Traceback (most recent call last):</span>\n'
    "</pre></div></div>"
)
SPHINX_CODE = (
    ">>> def function(a):\n"
    "...     pass\n"
    "... \n"
    ">>> function(0, a=0)\n"
    "Traceback (most recent call last):"
)
# highlight.js (`<pre><code class="hljs language-python">`), with the leading newline some
# templates put after <pre>, which browsers do not show
HLJS = (
    '<pre><code class="hljs language-python">\n<span class="hljs-keyword">def</span> '
    '<span class="hljs-title function_">area</span>(<span class="hljs-params">r</span>):\n'
    '\t<span class="hljs-keyword">return</span> <span class="hljs-number">3.14</span> * r'
    '<span class="hljs-operator">**</span><span class="hljs-number">2</span>\n</code></pre>'
)
HLJS_CODE = "def area(r):\n\treturn 3.14 * r**2"


def text_of(markup: str, whitespace: str = "paragraphs") -> str:
    return normalize(html_to_text(markup)[0], whitespace)


@pytest.mark.parametrize("whitespace", WHITESPACE_MODES)
def test_sphinx_pygments_block_is_verbatim_in_every_whitespace_mode(whitespace: str) -> None:
    page = f"<p>Call   it\n like  this:</p>{SPHINX}<p>and   it   fails.</p>"
    prose = {
        "paragraphs": ("Call it like this:\n\n", "\n\nand it fails."),
        "single_space": ("Call it like this: ", " and it fails."),
        "keep": ("Call it like this:\n\n", "\n\nand it fails."),
    }[whitespace]
    assert text_of(page, whitespace) == prose[0] + SPHINX_CODE + prose[1]


def test_marks_surround_exactly_the_preformatted_text() -> None:
    text, _ = html_to_text(f"<p>Before.</p>{HLJS}<p>After.</p>")
    assert text == f"Before.\n\n{VERBATIM_START}{HLJS_CODE}{VERBATIM_END}\n\nAfter."


def test_highlight_js_block_and_a_document_that_opens_with_code() -> None:
    assert text_of(HLJS) == HLJS_CODE
    indented = "<pre>    indented first line\n  second</pre><p>x</p>"
    assert text_of(indented) == "    indented first line\n  second\n\nx"


def test_adjacent_inline_elements_get_no_invented_space() -> None:
    page = (
        "<p><span>function</span><span>(</span><em>a</em><b>)</b> and "
        '<a href="#">link</a>, <i>spaced</i> <b>words</b>\n<span>across a newline</span>'
        "<span> </span><span>and a space span</span>.</p>"
    )
    assert text_of(page) == "function(a) and link, spaced words across a newline and a space span."


def test_inline_code_in_prose_and_sphinx_literals() -> None:
    page = (
        "<p>Use <code>os.path.join()</code> or "
        '<code class="docutils literal notranslate"><span class="pre">pathlib.Path</span>'
        '<span class="pre">(&quot;a&quot;)</span></code>; <tt>x</tt><code>[0]</code>.</p>'
        '<dl class="c function"><dt class="sig sig-object c"><span class="kt"><span class="pre">'
        'int</span></span><span class="w"> </span><span class="sig-name descname"><span class="n">'
        '<span class="pre">pci_enable_sriov</span></span></span><span class="sig-paren">(</span>'
        '<span class="n"><span class="pre">int</span></span><span class="w"> </span>'
        '<span class="n"><span class="pre">n</span></span><span class="sig-paren">)</span></dt>'
        "<dd><p>Enable.</p></dd></dl>"
    )
    assert text_of(page) == (
        'Use os.path.join() or pathlib.Path("a"); x[0].\n\nint pci_enable_sriov(int n)\n\nEnable.'
    )


def test_pre_inside_lists_and_tables() -> None:
    page = (
        "<ol><li><p>Build it:</p><div class='highlight'><pre>make -j2 \\\n    V=1\n</pre></div>"
        "</li><li>Then <code>make install</code></li></ol>"
        "<table><tr><td>shell</td><td><pre>$ ls\n  a  b</pre></td></tr>"
        "<tr><td>done</td><td>yes</td></tr></table>"
    )
    assert text_of(page) == (
        "Build it:\n\nmake -j2 \\\n    V=1\n\nThen make install\n\n"
        "shell\n\n$ ls\n  a  b\n\ndone\nyes"
    )
    assert text_of(page, "single_space") == (
        "Build it: make -j2 \\\n    V=1 Then make install shell $ ls\n  a  b done yes"
    )


def test_br_wbr_soft_hyphen_and_non_breaking_space() -> None:
    page = (
        "<p>first line<br>second line <br> third<br><br>after a blank line</p>"
        "<p>very<wbr>long<wbr>identifier, co&shy;operate, 10&nbsp;MB, a&nbsp;&nbsp;b</p>"
    )
    assert text_of(page) == (
        "first line\nsecond line\nthird\n\nafter a blank line\n\n"
        "verylongidentifier, cooperate, 10 MB, a b"
    )
    assert text_of(page, "keep").endswith("cooperate, 10 MB, a  b")  # two NBSP: two spaces
    assert text_of("<p>a<br></p><p>b</p><ul><li>c<br></li><li>d</li></ul>") == "a\n\nb\n\nc\nd"



def test_heading_permalinks_are_not_text() -> None:
    page = (  # Sphinx and MkDocs put a pilcrow link after every heading
        '<section id="intro"><h1>Introduction<a class="headerlink" href="#intro" '
        'title="Link to this heading">\u00b6</a></h1><p>Body text.</p>'
        '<h2 id="usage">Usage<a class="reference headerlink" href="#usage">\u00b6</a> notes</h2>'
        '<p>A <a class="reference" href="#usage">link</a> stays.</p></section>'
    )
    assert text_of(page) == "Introduction\n\nBody text.\n\nUsage notes\n\nA link stays."

def test_br_in_pre_textarea_and_white_space_pre_style() -> None:
    assert text_of("<pre>one<br>two\n  three</pre>") == "one\ntwo\n  three"
    assert text_of("<p>Input:</p><textarea>line 1\n    line 2</textarea>") == (
        "Input:\n\nline 1\n    line 2"
    )
    styled = '<p>Out:</p><code style="white-space: pre">a  b\n  c</code><p>ok</p>'
    assert text_of(styled) == "Out:\n\na  b\n  c\n\nok"
    # a block-per-line highlighter (no newlines in the text, one div per line)
    assert text_of("<pre><div>x = 1</div><div>  y = 2</div></pre>") == "x = 1\n  y = 2"


def test_marks_in_the_page_itself_are_not_taken_for_ours() -> None:
    page = f"<p>a{VERBATIM_START}  b   c{VERBATIM_END}</p>"
    assert html_to_text(page)[0] == "a b c"
    assert normalize(f"x{VERBATIM_START}  y") == "x y"  # an unpaired mark is dropped
    assert normalize(f"x{VERBATIM_END}{VERBATIM_START}  {VERBATIM_END}") == "x"


def test_ingest_keeps_code_verbatim_and_doc_id_hashes_the_text(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    page = f"<html><head><title>Howto</title></head><body><h1>Howto</h1>{SPHINX}</body></html>"
    (src / "howto.html").write_text(page)
    for whitespace in ("paragraphs", "single_space"):
        out = tmp_path / f"corpus-{whitespace}"
        ingest(IngestParams(sources=[src], out=out, whitespace=whitespace))
        (row,) = read_corpus(out)
        sep = "\n\n" if whitespace == "paragraphs" else " "
        assert row["text"] == "Howto" + sep + SPHINX_CODE
        assert row["doc_id"] == hashlib.sha256(row["text"].encode()).hexdigest()
