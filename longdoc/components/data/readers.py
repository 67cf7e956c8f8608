"""Container readers: turn directories, files and archives into a stream of documents.

Why a separate module: ingest and score both need "give me every document in this archive", and
both must treat hostile input the same way. Everything here is streaming and bounded:

- archive members are read through `tarfile`/`zipfile` file objects, never extracted to paths
  taken from the archive; member names that try to escape (`../x`, `/etc/passwd`) are rejected;
- every read is capped (`max_member_bytes` per member, decompressed), so a zip bomb costs at most
  that much memory before it is rejected; record formats (JSONL, XML) are streamed record by
  record with the cap per record; `max_total_bytes` caps a whole source;
- XML goes through defusedxml (no entity expansion, no external references); zstd frames are
  decoded with a capped window; Parquet/Arrow inside archives are buffered within the cap;
- a broken input (corrupt gzip, truncated tar, invalid JSON line, binary file) becomes a
  `Rejected` item with a reason and the stream goes on, so callers can count and record it.

Formats are looked up by file-name suffix in three small tables (`COMPRESSIONS`, `ARCHIVES`,
`FORMATS`); adding a format is one function plus one table entry.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import io
import json
import lzma
import os
import re
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

__all__ = [
    "ARCHIVES",
    "COMPRESSIONS",
    "FORMATS",
    "VERBATIM_END",
    "VERBATIM_START",
    "Document",
    "ReadPosition",
    "Rejected",
    "decode_bytes",
    "html_to_text",
    "input_bytes",
    "iter_documents",
    "supported_suffixes",
]

_CHUNK = 1 << 20
_FIRST_READ = 1 << 16
MAX_NESTING = 4  # archives inside archives inside ...: deeper than this is rejected


@dataclass
class Document:
    """One document found in a source: text extracted (HTML/JSON) and decoded, not normalised."""

    source: str  # the source path as given (a directory, file or archive)
    member: str  # path inside the source; `name.jsonl:<line>` / `name.json:<index>` for records
    text: str
    meta: dict[str, Any] = field(default_factory=dict)
    # True when the reader's parser already decoded character references (HTML, XML): a
    # consumer that decodes entities left in plain text must not decode these twice.
    entities_decoded: bool = False


@dataclass
class Rejected:
    """An input that could not become a document, and why (for the quarantine file)."""

    source: str
    member: str
    reason: str


Item = Document | Rejected


class _TooLarge(Exception):
    """A member larger than max_member_bytes (decompressed): that member is rejected."""


class _TotalLimit(Exception):
    """The whole source passed max_total_bytes (decompressed): the source stops there."""

    member: str | None = None  # the member being read when the cap was passed


@dataclass
class _Ctx:
    source: str
    max_member_bytes: int
    max_total_bytes: int | None
    text_field: str = "text"
    json_records_path: str | None = None
    xml_record_path: str | None = None
    total_read: int = 0

    def reject(self, member: str, reason: str) -> Rejected:
        return Rejected(self.source, member, reason)


try:
    from zstandard import ZstdError

    _ZSTD_ERRORS: tuple[type[BaseException], ...] = (ZstdError,)
except ImportError:  # pragma: no cover
    _ZSTD_ERRORS = ()

# Errors that mean "these bytes are damaged": they become a Rejected item, never a crash.
_READ_ERRORS = (
    OSError,
    EOFError,
    zlib.error,
    lzma.LZMAError,
    tarfile.TarError,
    zipfile.BadZipFile,
    NotImplementedError,  # zipfile: unsupported compression method
    RuntimeError,  # zipfile: encrypted member
    *_ZSTD_ERRORS,
)


def _read_bounded(ctx: _Ctx, f: IO[bytes], limit: int | None = None) -> bytes:
    """Read all of `f`, at most `limit` (default max_member_bytes) bytes; more raises _TooLarge."""
    limit = ctx.max_member_bytes if limit is None else limit
    parts: list[bytes] = []
    n = 0
    while True:
        # A small first read: most members are small, and a 1 MiB read buffer per member costs
        # page faults (a measurable share of reading a tar of small files: benchmarks/RESULTS.md,
        # "Ingest and tokenize throughput").
        block = f.read(min(_FIRST_READ if n == 0 else _CHUNK, limit + 1 - n))
        if not block:
            break
        parts.append(block)
        n += len(block)
        _count_total(ctx, len(block))
        if n > limit:
            raise _TooLarge(f"larger than max_member_bytes={limit} when decompressed")
    return b"".join(parts)


def _count_total(ctx: _Ctx, n: int) -> None:
    ctx.total_read += n
    if ctx.max_total_bytes is not None and ctx.total_read > ctx.max_total_bytes:
        raise _TotalLimit(f"source larger than max_total_bytes={ctx.max_total_bytes} decompressed")


# --------------------------------------------------------------------------------------------
# Decoding bytes to text
# --------------------------------------------------------------------------------------------

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_bytes(data: bytes, declared: str | None = None) -> tuple[str | None, str]:
    """Decode `data` to text: (text, encoding), or (None, reason) for binary/undecodable bytes.

    A BOM if present, then UTF-8 (almost everything), then the `declared` charset (an HTML
    `<meta charset>`) when it decodes, then a detected charset (`charset_normalizer`) for legacy
    files. NUL bytes outside a UTF-16/32 BOM mean binary.
    """
    for bom, enc in _BOMS:
        if data.startswith(bom):
            try:
                return data.decode(enc), enc
            except UnicodeDecodeError:
                return None, f"undecodable text (BOM says {enc})"
    if b"\x00" in data:
        return None, "binary content (NUL bytes)"
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        pass
    if declared:
        try:
            codec = codecs.lookup(declared).name
            # WHATWG: a page labelled latin-1/ascii is decoded as windows-1252
            codec = "cp1252" if codec in ("latin-1", "iso8859-1", "ascii") else codec
            return data.decode(codec), codec
        except (LookupError, UnicodeDecodeError):
            pass  # a wrong or unknown label: detect instead
    from charset_normalizer import from_bytes  # lazy: only legacy-encoded files pay for it

    matches = list(from_bytes(data[: 4 * _CHUNK]))
    if not matches:
        return None, "binary or undecodable content (not UTF-8, no charset detected)"
    # Detection is weak on short texts and often ties between single-byte code pages; like
    # browsers (WHATWG maps latin-1 to windows-1252) prefer cp1252 when it is about as good.
    best = matches[0]
    for m in matches:
        if m.encoding == "cp1252" and m.chaos <= best.chaos + 0.1:
            best = m
    encoding = best.encoding
    try:
        text = data.decode(encoding)
    except (UnicodeDecodeError, LookupError):
        return None, f"undecodable content (detected {encoding} does not decode)"
    if _control_ratio(text) > 0.05:
        return None, f"binary content (mostly control characters as {encoding})"
    return text, encoding


def _control_ratio(text: str) -> float:
    sample = text[:65536]
    if not sample:
        return 0.0
    bad = sum(1 for ch in sample if unicodedata.category(ch) == "Cc" and ch not in "\n\r\t\f")
    return bad / len(sample)


_META_CHARSET = re.compile(rb"""<meta[^>]+charset\s*=\s*["']?\s*([A-Za-z0-9_.:-]+)""", re.I)


def _declared_charset(data: bytes) -> str | None:
    """The charset an HTML page declares in a <meta> within its first 4 KiB (the prescan)."""
    m = _META_CHARSET.search(data[:4096])
    return m.group(1).decode("ascii") if m else None


def _decode_or_reject(
    ctx: _Ctx, member: str, data: bytes, declared: str | None = None
) -> str | Rejected:
    text, info = decode_bytes(data, declared)
    if text is None:
        return ctx.reject(member, info)
    return text


# --------------------------------------------------------------------------------------------
# Leaf formats: bytes -> documents
# --------------------------------------------------------------------------------------------

# Visible text: lxml parses (libxml2's forgiving HTML parser: broken markup recovered, entities
# decoded, no network, no DTD entity expansion); html-text's cleaner (lxml's Cleaner) removes
# scripts/styles/comments/embeds; `_Layout` then lays the rest out as a browser renders it:
# whitespace collapsed as CSS `white-space: normal` does (only where the source has whitespace:
# `<span>f</span><span>(</span>` is `f(`), block elements on their own lines, paragraphs,
# headings and lists blank-line separated, preformatted elements verbatim. We drop a few more
# invisible elements first and take the <title> out into meta.
_INVISIBLE_TAGS = (
    "head", "script", "style", "noscript", "template", "svg", "math", "iframe", "object",
    "embed", "canvas", "audio", "video", "select", "option", "datalist", "button",
)  # fmt: skip
_NEWLINE_TAGS = frozenset(
    "article aside br dd details dialog div dt fieldset figcaption footer form header hr "
    "legend li main nav section summary table tr td th caption address center menu dir "
    "search thead tbody tfoot".split()
)
_DOUBLE_NEWLINE_TAGS = frozenset(
    "blockquote dl figure h1 h2 h3 h4 h5 h6 ol p pre ul hgroup".split()
)
# Rendered with their whitespace as written (the HTML rendering rules' `white-space: pre`
# elements), and any element whose inline style asks for it (`<code style="white-space:pre">`).
_PREFORMATTED_TAGS = frozenset("pre textarea listing xmp plaintext".split())
_PRE_STYLE = re.compile(r"white-space\s*:\s*(pre|pre-wrap|pre-line|break-spaces)\b", re.I)
_HIDDEN_XPATH = (
    "//*[@hidden or contains(translate(@style, ' ', ''), 'display:none')"
    " or contains(translate(@style, ' ', ''), 'visibility:hidden')]"
    # heading permalinks (Sphinx, MkDocs: `<a class="headerlink">¶</a>`) are navigation
    " | //a[contains(concat(' ', normalize-space(@class), ' '), ' headerlink ')]"
)

#: Marks around a preformatted region in `Document.text` (Unicode noncharacters, which are
#: reserved for a program's internal use): ingest's `normalize` keeps what is between them
#: verbatim whatever `ingest.whitespace` does to prose, and removes the marks.
VERBATIM_START, VERBATIM_END = "\ufdd0", "\ufdd1"
_COLLAPSIBLE = re.compile(r"[ \t\n\r\f]+")  # HTML's whitespace; NBSP is content, not layout
# soft hyphens are invisible unless a line breaks there; marks in the page must not forge ours
_DROPPED_CHARS = str.maketrans({"\u00ad": None, VERBATIM_START: None, VERBATIM_END: None})
_SPACE, _LINE, _PARAGRAPH = 1, 2, 3  # separators, weakest first: the strongest pending wins
_BLOCK_TAGS = {
    **dict.fromkeys(_NEWLINE_TAGS, _LINE),
    **dict.fromkeys(_DOUBLE_NEWLINE_TAGS, _PARAGRAPH),
}


class _Layout:
    """Text as a browser lays it out, without CSS: a separator between two pieces of text
    exists only where the source had whitespace (a space) or a block boundary (a line break, or
    a blank line around paragraphs), and adjacent separators merge into the strongest one."""

    def __init__(self) -> None:
        self.chunks: list[str] = []
        self.pending = 0  # the separator owed before the next text
        self.trailing_newlines = 0  # line breaks already at the end of `chunks` (from <br>)

    def separate(self, strength: int) -> None:
        if strength > self.pending:
            self.pending = strength

    def prose(self, text: str | None) -> None:
        if not text:
            return
        collapsed = _COLLAPSIBLE.sub(" ", text.translate(_DROPPED_CHARS))
        body = collapsed.strip(" ")
        if collapsed[:1] == " ":
            self.separate(_SPACE)
        if body:
            self._emit(body.replace("\xa0", " "))
            if collapsed[-1] == " ":
                self.separate(_SPACE)

    def line_break(self) -> None:
        """<br>: a new line, even in the middle of a paragraph (two make a blank line)."""
        if self.chunks:
            self.pending = 0 if self.pending == _SPACE else self.pending
            self.chunks.append("\n")
            self.trailing_newlines += 1

    def verbatim(self, text: str) -> None:
        """A preformatted block, its own paragraph: kept as written between the marks, minus
        the blank lines at its ends (trailing whitespace too)."""
        self.separate(_PARAGRAPH)
        lines = text.translate(_DROPPED_CHARS).rstrip().split("\n")
        while lines and not lines[0].strip():
            lines.pop(0)
        if lines:
            self._emit(VERBATIM_START + "\n".join(lines) + VERBATIM_END)
            self.separate(_PARAGRAPH)

    def _emit(self, text: str) -> None:
        if self.chunks and self.pending == _SPACE:
            self.chunks.append(" ")
        elif self.chunks and self.pending:
            self.chunks.append("\n" * max(0, self.pending - 1 - self.trailing_newlines))
        self.chunks.append(text)
        self.pending = self.trailing_newlines = 0

    def text(self) -> str:
        return "".join(self.chunks).rstrip()


def _tag(el: Any) -> str:
    return el.tag if isinstance(el.tag, str) else ""  # lower case from lxml's HTML parser


def _verbatim_text(pre: Any) -> str:
    """Everything a preformatted element shows, as written: the text of every descendant
    (highlighting spans), <br> as a line break, a block descendant on a line of its own."""
    import lxml.etree

    parts: list[str] = []
    for event, el in lxml.etree.iterwalk(pre, events=("start", "end")):
        if event == "start" and el is not pre:
            if _tag(el) == "br":
                parts.append("\n")
            elif _tag(el) in _BLOCK_TAGS and parts and parts[-1][-1:] != "\n":
                parts.append("\n")
        if event == "start" and el.text:
            parts.append(el.text)
        elif event == "end" and el is not pre and el.tail:
            parts.append(el.tail)
    return "".join(parts)


def _layout(root: Any) -> str:
    """The visible text of a cleaned tree (see `_Layout`); iterative, as pages nest deep."""
    import lxml.etree

    out = _Layout()
    walk = lxml.etree.iterwalk(root, events=("start", "end"))
    for event, el in walk:
        tag = _tag(el)
        block = _BLOCK_TAGS.get(tag, 0)
        if event == "start" and tag in _PREFORMATTED_TAGS:
            out.verbatim(_verbatim_text(el))
            walk.skip_subtree()
        elif event == "start":
            if tag == "br":
                out.line_break()
            elif block:
                out.separate(block)
            out.prose(el.text)
        else:
            if block and tag != "br":
                out.separate(block)
            if el is not root:
                out.prose(el.tail)
    return out.text()


def html_to_text(markup: str) -> tuple[str, str]:
    """(visible text, title) of an HTML document; entities decoded, blocks on their own lines,
    paragraphs blank-line separated, no script/style/noscript/template or hidden content.
    Preformatted regions (<pre>, <textarea>, `white-space: pre`) come out verbatim between
    `VERBATIM_START`/`VERBATIM_END`, for ingest's `normalize` to keep as they are.

    Raises ValueError when the parser had to stop before the end (the text would be cut short
    without anyone knowing); broken but recoverable markup is fine.
    """
    import html_text
    import lxml.etree
    import lxml.html

    parser = lxml.html.HTMLParser(
        recover=True,
        encoding="utf-8",
        no_network=True,
        remove_comments=True,
        remove_pis=True,
        # Lifts libxml2's 256-level depth and 10 MB text-node limits, which real pages (runs of
        # unclosed <div>/<font>) pass; input size is already capped by max_member_bytes.
        huge_tree=True,
    )
    body = markup.replace("\x00", "").strip().encode("utf-8", "surrogatepass")
    try:
        root = lxml.etree.fromstring(body or b"<html/>", parser=parser)
    except (lxml.etree.ParserError, lxml.etree.XMLSyntaxError) as exc:
        raise ValueError(f"unparseable HTML: {_msg(exc)}") from None
    fatal = [e for e in parser.error_log if e.level_name == "FATAL"]
    if fatal:  # libxml2 stopped early (e.g. nesting past 2048): the text would be cut short
        raise ValueError(f"HTML parser stopped early: {_msg(Exception(fatal[0].message))}")
    if root is None:  # nothing parseable (e.g. only a comment): no visible text
        return "", ""
    title = " ".join(" ".join(t.text_content().split()) for t in root.iter("title")).strip()
    lxml.etree.strip_elements(root, *_INVISIBLE_TAGS, "title", with_tail=False)
    for el in root.xpath(_HIDDEN_XPATH):  # hidden or navigation only; the tail is kept
        if el.getparent() is not None:
            el.drop_tree()
    for el in root.xpath("//*[@style]"):  # the cleaner drops style attributes: decide first
        if _PRE_STYLE.search(el.get("style")):
            el.tag = "pre"  # laid out as the <pre> it renders like
    try:
        root = html_text.cleaner.clean_html(root)
    except AssertionError:  # lxml bug 1838497 (html-text works around it the same way)
        pass
    return _layout(root), title


def _read_text(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    text = _decode_or_reject(ctx, member, _read_bounded(ctx, f))
    yield text if isinstance(text, Rejected) else Document(ctx.source, member, text, {})


def _read_html(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    data = _read_bounded(ctx, f)
    markup = _decode_or_reject(ctx, member, data, _declared_charset(data))
    if isinstance(markup, Rejected):
        yield markup
        return
    try:
        text, title = html_to_text(markup)
    except ValueError as exc:
        yield ctx.reject(member, str(exc))
        return
    yield Document(ctx.source, member, text, {"title": title} if title else {}, True)


def _lookup(obj: Any, dotted: str) -> Any:
    """`obj["a"]["b"]` for "a.b" (list indices allowed: "items.0.text"); None when absent."""
    for key in dotted.split("."):
        if isinstance(obj, dict):
            obj = obj.get(key)
        elif isinstance(obj, list) and key.isdigit() and int(key) < len(obj):
            obj = obj[int(key)]
        else:
            return None
    return obj


def _record(ctx: _Ctx, member: str, obj: Any) -> Item:
    """A JSON/table record: a string, or an object whose `text_field` (a dotted path such as
    "text" or "article.body") is a string; the record's other top-level scalars go to meta."""
    if isinstance(obj, str):
        text, meta = obj, {}
    elif not isinstance(obj, dict):
        return ctx.reject(member, f"record is a {type(obj).__name__}, not an object/string")
    else:
        text = _lookup(obj, ctx.text_field)
        if not isinstance(text, str):
            return ctx.reject(member, f"record has no string {ctx.text_field!r} field")
        top = ctx.text_field.split(".", 1)[0]
        meta = {
            k: v
            for k, v in obj.items()
            if k != top and (v is None or isinstance(v, str | int | float | bool))
        }
    if len(text) > ctx.max_member_bytes:  # chars, not bytes: a cheap upper-bound check
        return ctx.reject(
            member, f"record text larger than max_member_bytes={ctx.max_member_bytes}"
        )
    return Document(ctx.source, member, text, meta)


def _parse_json(ctx: _Ctx, where: str, raw: str, what: str) -> Any:
    """`json.loads(raw)`, or a Rejected naming `what` ("JSON", "JSON line") and the reason."""
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        return ctx.reject(where, f"invalid {what}: {exc}")
    except RecursionError:  # "[[[[..." a million deep: hostile, not a crash
        return ctx.reject(where, f"invalid {what}: nested too deeply")


def _read_json(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    raw = _decode_or_reject(ctx, member, _read_bounded(ctx, f))
    if isinstance(raw, Rejected):
        yield raw
        return
    data = _parse_json(ctx, member, raw, "JSON")
    if isinstance(data, Rejected):
        yield data
        return
    if ctx.json_records_path:
        data = _lookup(data, ctx.json_records_path)
        if not isinstance(data, list):
            yield ctx.reject(member, f"no list of records at {ctx.json_records_path!r}")
            return
    if isinstance(data, list):
        for i, obj in enumerate(data):
            yield _record(ctx, f"{member}:{i}", obj)
    else:
        yield _record(ctx, member, data)


def _read_jsonl(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    """One record per line, streamed; the size limit applies per line (each line is a member)."""
    limit = ctx.max_member_bytes
    lineno = 0
    while True:
        line = f.readline(limit + 1)
        if not line:
            return
        lineno += 1
        _count_total(ctx, len(line))
        where = f"{member}:{lineno}"
        if len(line) > limit and not line.endswith(b"\n"):
            while (rest := f.readline(_CHUNK)) and not rest.endswith(b"\n"):
                _count_total(ctx, len(rest))
            yield ctx.reject(where, f"line larger than max_member_bytes={limit}")
            continue
        if not line.strip():  # blank lines are not records (but keep the line numbering)
            continue
        raw = _decode_or_reject(ctx, where, line)
        if isinstance(raw, Rejected):
            yield raw
            continue
        obj = _parse_json(ctx, where, raw, "JSON line")  # a bad line: the next ones are read
        yield obj if isinstance(obj, Rejected) else _record(ctx, where, obj)


_INLINE_TAGS = frozenset(
    "a abbr b bdi bdo big cite code del dfn em font i ins kbd mark q s samp small span strike "
    "strong sub sup time tt u var".split()
)


def _local(tag: Any) -> str:
    """Tag name without its `{namespace}` (comments and PIs have non-string tags)."""
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _xml_text(elem: Any) -> str:
    """Text of an element: inline children (a, b, em, ...) flow into the sentence, any other
    child element is its own paragraph; whitespace collapsed inside paragraphs."""
    parts: list[str] = []

    def walk(e: Any) -> None:
        if e.text:
            parts.append(e.text)
        for child in e:
            block = _local(child.tag) not in _INLINE_TAGS
            if block:
                parts.append("\n\n")
            walk(child)
            if block:
                parts.append("\n\n")
            if child.tail:
                parts.append(child.tail)

    walk(elem)
    paragraphs = (" ".join(p.split()) for p in "".join(parts).split("\n\n"))
    return "\n\n".join(p for p in paragraphs if p)


class _CountingReader:
    """A file wrapper that charges every byte read to the source's max_total_bytes."""

    def __init__(self, ctx: _Ctx, f: IO[bytes]) -> None:
        self.ctx, self.f = ctx, f

    def read(self, n: int = -1) -> bytes:
        data = self.f.read(_CHUNK if n is None or n < 0 else min(n, _CHUNK))
        _count_total(self.ctx, len(data))
        return data


def _read_xml(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    """One document per record element, streamed (a multi-GB file is fine; finished records are
    dropped from the tree). Records are the elements matching `xml_record_path` (tag names
    separated by "/", matched against the end of the element's path, e.g. "article" or
    "articles/article" for Hyperpartisan), or by default every child of the root element.
    A record's attributes (id, title, ...) go to meta. Parsed with defusedxml: entity
    declarations (billion laughs) and external references are refused, not expanded."""
    from xml.etree.ElementTree import ParseError

    from defusedxml import DefusedXmlException
    from defusedxml.ElementTree import iterparse

    want = [t for t in (ctx.xml_record_path or "").strip("/").split("/") if t]
    path: list[str] = []
    stack: list[Any] = []
    in_record = 0  # depth of the record being collected (0: outside any record)
    index = 0
    try:
        for event, elem in iterparse(_CountingReader(ctx, f), events=("start", "end")):
            if event == "start":
                path.append(_local(elem.tag))
                stack.append(elem)
                if not in_record:
                    hit = path[-len(want) :] == want if want else len(path) == 2
                    if hit:
                        in_record = len(path)
                continue
            depth = len(path)
            path.pop()
            stack.pop()
            if in_record and depth == in_record:
                in_record = 0
                where = f"{member}:{index}"
                index += 1
                text = _xml_text(elem)
                if len(text) > ctx.max_member_bytes:
                    yield ctx.reject(
                        where, f"record larger than max_member_bytes={ctx.max_member_bytes}"
                    )
                else:
                    meta = dict(elem.attrib)
                    meta.setdefault("tag", _local(elem.tag))
                    yield Document(ctx.source, where, text, meta, True)
            if not in_record and stack:  # finished and not inside a record: drop it
                elem.clear()
                stack[-1].remove(elem)
    except DefusedXmlException as exc:
        yield ctx.reject(member, f"unsafe XML refused ({type(exc).__name__}): {_msg(exc)}")
    except ParseError as exc:
        after = f" (after {index} records)" if index else ""
        yield ctx.reject(member, f"invalid XML: {_msg(exc)}{after}")


def _table_source(ctx: _Ctx, f: IO[bytes]) -> Any:
    """Parquet and Arrow files need random access: a plain file is read in place, an archive
    member or decompressed stream is buffered in memory (bounded by max_member_bytes)."""
    if isinstance(getattr(f, "raw", f), io.FileIO):  # a plain file on disk
        return f
    import pyarrow as pa

    return pa.BufferReader(_read_bounded(ctx, f))


def _table_batches(name: str, src: Any) -> Iterator[Any]:
    import pyarrow.ipc as ipc
    import pyarrow.parquet as pq

    if name.lower().endswith((".parquet", ".pq")):
        yield from pq.ParquetFile(src).iter_batches(batch_size=256)
        return
    try:  # Arrow IPC file format (.arrow / .feather v2), else the stream format
        reader = ipc.open_file(src)
        for i in range(reader.num_record_batches):
            yield reader.get_batch(i)
    except Exception:  # pyarrow.ArrowInvalid: not the file format
        src.seek(0)
        yield from ipc.open_stream(src)


def _read_table(ctx: _Ctx, name: str, member: str, f: IO[bytes]) -> Iterator[Item]:
    """Parquet / Arrow IPC: one document per row, its `text_field` column as the text (dotted
    for a struct column), other scalar columns as meta; read in batches of 256 rows."""
    import pyarrow as pa

    top = ctx.text_field.split(".", 1)[0]
    row = 0
    try:
        for batch in _table_batches(name, _table_source(ctx, f)):
            if row == 0 and top not in batch.schema.names:
                yield ctx.reject(member, f"no column {top!r} (columns: {batch.schema.names})")
                return
            for rec in batch.to_pylist():
                text = _lookup(rec, ctx.text_field)
                _count_total(ctx, len(text) if isinstance(text, str) else 0)
                yield _record(ctx, f"{member}:{row}", rec)
                row += 1
    except (pa.ArrowException, OSError, ValueError) as exc:
        after = f" (after {row} rows)" if row else ""
        yield ctx.reject(member, f"corrupt or unreadable table: {_msg(exc)}{after}")


Reader = Callable[[_Ctx, str, str, IO[bytes]], Iterator[Item]]

#: leaf formats by suffix: reader(ctx, name, member, binary file object) -> items
FORMATS: dict[str, Reader] = {
    ".txt": _read_text,
    ".text": _read_text,
    ".md": _read_text,
    ".html": _read_html,
    ".htm": _read_html,
    ".xhtml": _read_html,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".ndjson": _read_jsonl,
    ".xml": _read_xml,
    ".parquet": _read_table,
    ".pq": _read_table,
    ".arrow": _read_table,
    ".feather": _read_table,
}

#: leaf formats read record by record: max_member_bytes limits each record, not the file
STREAMING_FORMATS = frozenset({".jsonl", ".ndjson", ".xml"})

#: single-stream compressions by suffix: opener(binary file object) -> decompressed file object
COMPRESSIONS: dict[str, Callable[[IO[bytes]], IO[bytes]]] = {
    ".gz": lambda f: gzip.GzipFile(fileobj=f, mode="rb"),
    ".bz2": lambda f: bz2.BZ2File(f, mode="rb"),
    ".xz": lambda f: lzma.LZMAFile(f, mode="rb"),
    ".zst": lambda f: _open_zstd(f),
    ".zstd": lambda f: _open_zstd(f),
}


def _open_zstd(f: IO[bytes]) -> IO[bytes]:
    """Zstandard stream; the window is capped at 128 MiB so a hostile frame header cannot make
    the decoder allocate gigabytes (it is rejected as corrupt instead)."""
    try:
        import zstandard
    except ImportError:  # pragma: no cover - a declared dependency
        raise NotImplementedError("zstandard is not installed (pip install zstandard)") from None
    dctx = zstandard.ZstdDecompressor(max_window_size=1 << 27)
    reader = dctx.stream_reader(f, read_across_frames=True, closefd=False)
    return io.BufferedReader(reader, _CHUNK)  # adds readline (JSONL), which the reader lacks


# --------------------------------------------------------------------------------------------
# Archives: members -> dispatch
# --------------------------------------------------------------------------------------------


def _unsafe_name(name: str) -> str | None:
    """Why an archive member name must not be trusted, or None when it is a plain relative path."""
    if not name:
        return "empty member name"
    if "\x00" in name:
        return "member name contains NUL"
    norm = name.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        return f"absolute member path {name!r}"
    if ".." in norm.split("/"):
        return f"path traversal in member name {name!r}"
    return None


def _join(member: str, inner: str) -> str:
    return f"{member}/{inner}" if member else inner


def _read_tar(ctx: _Ctx, name: str, member: str, f: IO[bytes], depth: int) -> Iterator[Item]:
    """Stream a tar (any compression) member by member: `r|*` never seeks, never extracts."""
    archive = member or name
    current = archive
    try:
        with tarfile.open(fileobj=f, mode="r|*") as tf:
            for info in tf:
                # tarfile keeps every TarInfo it has read (for later random access we never
                # use): ~0.4 kB per member, gigabytes for a tar of millions of small files.
                tf.members.clear()
                current = _join(member, info.name)
                if info.isdir():
                    continue
                why = _unsafe_name(info.name)
                if why is not None:
                    yield ctx.reject(current, why)
                    continue
                if not info.isfile():
                    kind = "symlink" if info.issym() else "link" if info.islnk() else "special"
                    yield ctx.reject(current, f"not a regular file ({kind})")
                    continue
                if info.size > ctx.max_member_bytes and not _streams_records(info.name):
                    yield ctx.reject(
                        current,
                        f"member of {info.size} bytes > max_member_bytes={ctx.max_member_bytes}",
                    )
                    continue
                fobj = tf.extractfile(info)
                assert fobj is not None
                yield from _guarded(ctx, current, _dispatch(ctx, info.name, current, fobj, depth))
    except _READ_ERRORS as exc:
        after = f" (after member {current!r})" if current != archive else ""
        yield ctx.reject(archive, f"corrupt or truncated archive: {_msg(exc)}{after}")


def _read_zip(ctx: _Ctx, name: str, member: str, f: IO[bytes], depth: int) -> Iterator[Item]:
    """Zip needs random access: a top-level file is opened in place; a nested zip is buffered
    (bounded by max_member_bytes) in memory."""
    try:
        seekable = f.seekable()
    except (AttributeError, OSError):
        seekable = False
    if not seekable:
        f = io.BytesIO(_read_bounded(ctx, f))
    try:
        zf = zipfile.ZipFile(f)
    except _READ_ERRORS as exc:
        yield ctx.reject(member or name, f"corrupt zip archive: {_msg(exc)}")
        return
    with zf:
        for info in zf.infolist():
            current = _join(member, info.filename)
            if info.is_dir():
                continue
            why = _unsafe_name(info.filename)
            if why is not None:
                yield ctx.reject(current, why)
                continue
            mode = info.external_attr >> 16
            if mode and stat.S_ISLNK(mode):
                yield ctx.reject(current, "not a regular file (symlink)")
                continue
            if info.file_size > ctx.max_member_bytes and not _streams_records(info.filename):
                yield ctx.reject(
                    current,
                    f"member of {info.file_size} bytes > max_member_bytes={ctx.max_member_bytes}",
                )
                continue

            def items(info: zipfile.ZipInfo = info, current: str = current) -> Iterator[Item]:
                with zf.open(info) as fobj:
                    yield from _dispatch(ctx, info.filename, current, fobj, depth)

            yield from _guarded(ctx, current, items())


ARCHIVES_TAR = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")

#: archive formats by suffix: reader(ctx, name, member, file object, depth) -> items
ARCHIVES: dict[str, Callable[..., Iterator[Item]]] = {
    **dict.fromkeys(ARCHIVES_TAR, _read_tar),
    ".zip": _read_zip,
}


def _streams_records(name: str) -> bool:
    """A (possibly compressed) JSONL/XML file: read record by record, so a member larger than
    max_member_bytes is fine; each record is still limited, and the source by max_total_bytes."""
    lower = name.lower()
    while True:
        for suffix in COMPRESSIONS:
            if lower.endswith(suffix):
                lower = lower[: -len(suffix)]
                break
        else:
            return os.path.splitext(lower)[1] in STREAMING_FORMATS


def _is_archive(name: str) -> bool:
    """An archive, possibly compressed as a whole (`x.tar.zst`, `x.zip.gz`)."""
    lower = name.lower()
    if lower.endswith(tuple(ARCHIVES)):
        return True
    for suffix in COMPRESSIONS:
        if lower.endswith(suffix):
            return _is_archive(lower[: -len(suffix)])
    return False


def supported_suffixes() -> list[str]:
    """Every file-name suffix the readers understand (compressed leaf formats included)."""
    leaf = sorted(FORMATS)
    return sorted(ARCHIVES) + leaf + [s + c for s in leaf for c in sorted(COMPRESSIONS)]


def _msg(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return " ".join(text.split())[:300]


def _guarded(ctx: _Ctx, member: str, items: Iterator[Item]) -> Iterator[Item]:
    """Turn read errors inside one member into a Rejected item; items already read are kept."""
    try:
        yield from items
    except _TotalLimit as exc:
        if exc.member is None:  # the innermost member names where the source stopped
            exc.member = member
        raise
    except _TooLarge as exc:
        yield ctx.reject(member, str(exc))
    except _READ_ERRORS as exc:
        yield ctx.reject(member, f"corrupt or truncated data: {_msg(exc)}")
    except UnicodeDecodeError as exc:  # pragma: no cover - decode_bytes handles text
        yield ctx.reject(member, f"undecodable: {_msg(exc)}")


def _dispatch(ctx: _Ctx, name: str, member: str, f: IO[bytes], depth: int) -> Iterator[Item]:
    """Route one named byte stream to its archive, compression or leaf reader by suffix."""
    base = os.path.basename(name.replace("\\", "/"))
    lower = base.lower()
    for suffix in sorted(ARCHIVES, key=len, reverse=True):  # longest first: .tar.gz before .gz
        if lower.endswith(suffix):
            if depth >= MAX_NESTING:
                yield ctx.reject(member, f"archives nested deeper than {MAX_NESTING} levels")
                return
            yield from ARCHIVES[suffix](ctx, base, member, f, depth + 1)
            return
    for suffix, opener in COMPRESSIONS.items():
        if lower.endswith(suffix):
            inner = base[: -len(suffix)]
            with opener(f) as g:
                yield from _dispatch(ctx, inner, member, g, depth)
            return
    ext = os.path.splitext(lower)[1]
    reader = FORMATS.get(ext)
    if reader is None:
        yield ctx.reject(member, f"unsupported file type {ext or '(no extension)'!r}")
        return
    yield from reader(ctx, base, member, f)


class ReadPosition:
    """How many bytes of the input files (as stored on disk, compressed or not) the readers have
    consumed: the base of an ETA when the number of documents in archives is unknown until the
    end. Share one across the sources of a stage; `total` is what they hold (`input_bytes`)."""

    def __init__(self, total: int) -> None:
        self.total, self.done = total, 0  # done: bytes of the files finished
        self.current: IO[bytes] | None = None

    @property
    def bytes_read(self) -> int:
        try:
            now = self.current.tell() if self.current is not None else 0
        except (OSError, ValueError):  # a closed or unseekable file: count it when it ends
            now = 0
        return min(self.done + now, self.total)


def _input_files(path: Path, exclude: Iterable[Path | str] = ()) -> list[Path]:
    """The files `iter_documents` reads from `path`, in its order."""
    if not path.is_dir():
        return [path]
    skip = [Path(e).resolve() for e in exclude]
    return sorted(
        (
            p
            for p in path.rglob("*")
            if p.is_file() and not any(p.resolve().is_relative_to(e) for e in skip)
        ),
        key=lambda p: p.relative_to(path).parts,
    )


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def input_bytes(sources: Iterable[Path | str], exclude: Iterable[Path | str] = ()) -> int:
    """Bytes on disk of every file the readers will read from `sources`."""
    return sum(_size(f) for src in sources for f in _input_files(Path(src), exclude))


def iter_documents(
    source: Path | str,
    *,
    max_member_bytes: int = 64 * 1024 * 1024,
    max_total_bytes: int | None = None,
    exclude: Iterable[Path | str] = (),
    text_field: str = "text",
    json_records_path: str | None = None,
    xml_record_path: str | None = None,
    position: ReadPosition | None = None,
) -> Iterator[Document | Rejected]:
    """Every document in `source` (a directory, file or archive), in a deterministic order.

    `member` is the path inside the source: the relative file path for directories (plus the
    member path for archives inside them), the member name for archives, `name.jsonl:<line>`
    (1-based) / `name.json:<index>`, `name.xml:<index>`, `name.parquet:<row>` (0-based) for
    records. Unreadable inputs come out as
    `Rejected(source, member, reason)` and the stream continues. `max_member_bytes` caps each
    member (and each JSON line) after decompression; `max_total_bytes`, when set, caps the
    whole source (decompressed) and stops it with one Rejected item. Paths under `exclude` are
    skipped when walking a directory (e.g. the output directory placed inside a source).

    Record formats: `text_field` is the (dotted) path of the text in a JSON/JSONL record or the
    column of a Parquet/Arrow table; `json_records_path` the (dotted) path of the record list in
    a .json file whose top level is an object; `xml_record_path` the element path of an XML
    record (see `_read_xml`).
    """
    path = Path(source)
    ctx = _Ctx(
        str(source),
        max_member_bytes,
        max_total_bytes,
        text_field=text_field,
        json_records_path=json_records_path,
        xml_record_path=xml_record_path,
    )
    if path.is_dir():
        entries = [(p, p.relative_to(path).as_posix()) for p in _input_files(path, exclude)]
    else:
        entries = [(path, "")]
    position = position or ReadPosition(0)
    for file, rel in entries:
        label = rel or file.name
        # Members of a top-level archive are named as inside it; anything else by its own name.
        member = rel or ("" if _is_archive(file.name) else file.name)
        try:
            with open(file, "rb") as f:
                position.current = f
                yield from _guarded(ctx, label, _dispatch(ctx, file.name, member, f, 0))
        except _TotalLimit as exc:
            yield ctx.reject(exc.member or label, str(exc))
            return
        except OSError as exc:
            yield ctx.reject(label, f"cannot read file: {_msg(exc)}")
        finally:
            position.current = None
            position.done += _size(file)
