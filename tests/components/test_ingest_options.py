"""Ingest options: whitespace modes, entity decoding, size-bounded shards, per-source timings."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import IngestParams
from longdoc.components.data.ingest import decode_entities, ingest, normalize, read_corpus
from longdoc.components.data.readers import iter_documents


def test_whitespace_modes() -> None:
    raw = "  Title\r\n\r\n\r\n  first\tline  \u00a0 here\nsecond\x07 line\u2028third  "
    assert normalize(raw) == "Title\n\nfirst line here\nsecond line\nthird"
    assert normalize(raw, "paragraphs") == normalize(raw)
    assert normalize(raw, "single_space") == "Title first line here second line third"
    assert normalize(raw, "keep") == "Title\n\n\n  first\tline  \u00a0 here\nsecond line\nthird"
    assert normalize("e\u0301", "keep") == "\u00e9"  # NFC and control removal in every mode
    with pytest.raises(ValueError, match="whitespace must be one of"):
        normalize("x", "tabs")


def test_decode_entities() -> None:
    assert decode_entities("Fish &amp; chips &#8217;n&rsquo; caf&eacute; &#x263A;") == (
        "Fish & chips \u2019n\u2019 caf\u00e9 \u263a"
    )
    assert decode_entities("no entities; a & b") == "no entities; a & b"


def test_entities_decoded_once_per_document(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Plain text says Q&amp;A &#8211; done.")
    (src / "b.jsonl").write_text(json.dumps({"text": "Record &quot;quoted&quot; text."}) + "\n")
    # The HTML parser decodes once; the escaped entity in the page stays as the page shows it.
    (src / "c.html").write_text("<p>Write &amp;lt;p&amp;gt; to show a tag.</p>")
    (src / "d.xml").write_text("<docs><doc>XML &amp;amp; stays one level.</doc></docs>")
    on = ingest(IngestParams(sources=[src], out=tmp_path / "on"))
    texts = {r["member"]: r["text"] for r in read_corpus(tmp_path / "on")}
    assert texts == {
        "a.txt": "Plain text says Q&A \u2013 done.",
        "b.jsonl:1": 'Record "quoted" text.',
        "c.html": "Write &lt;p&gt; to show a tag.",
        "d.xml:0": "XML &amp; stays one level.",
    }
    off = ingest(IngestParams(sources=[src], out=tmp_path / "off", decode_entities=False))
    texts = {r["member"]: r["text"] for r in read_corpus(tmp_path / "off")}
    assert texts["a.txt"] == "Plain text says Q&amp;A &#8211; done."
    assert on["params"]["decode_entities"] is True and off["counts"]["written"] == 4


def test_single_space_mode_reaches_the_corpus(tmp_path: Path) -> None:
    src = tmp_path / "doc.txt"
    src.write_text("First paragraph.\n\nSecond   paragraph\nwith a break.")
    ingest(IngestParams(sources=[src], out=tmp_path / "c", whitespace="single_space"))
    (row,) = read_corpus(tmp_path / "c")
    assert row["text"] == "First paragraph. Second paragraph with a break."
    assert [row["text"][s["start"] : s["end"]] for s in row["sentences"]] == [
        "First paragraph.",
        "Second paragraph with a break.",
    ]


def test_shards_bounded_by_chars_and_timings_per_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(12):
        (src / f"d{i:02d}.txt").write_text(f"Document {i}. " + "word " * (200 + i))
    other = tmp_path / "other.txt"
    other.write_text("Another source.")
    m = ingest(
        IngestParams(sources=[src, other], out=tmp_path / "c", shard_max_chars=3000),
    )
    sizes = [
        sum(len(t) for t in pq.read_table(tmp_path / "c" / s["name"]).column("text").to_pylist())
        for s in m["shards"]
    ]
    assert len(m["shards"]) >= 4 and sum(s["rows"] for s in m["shards"]) == 13
    doc = max(len(r["text"]) for r in read_corpus(tmp_path / "c"))
    # a shard closes after the document that reaches the bound
    assert all(size < 3000 + doc for size in sizes)
    assert all(size >= 3000 for size in sizes[:-1])
    per = m["timings"]["per_source_s"]
    assert set(per) == {str(src), str(other)}
    assert all(v >= 0 for v in per.values()) and per[str(src)] > 0


def test_whole_compressed_archives_name_members_like_archives(tmp_path: Path) -> None:
    import io
    import tarfile

    import zstandard

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        data = b"Inside a zstd tar."
        info = tarfile.TarInfo("a/x.txt")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (tmp_path / "t.tar.zst").write_bytes(zstandard.ZstdCompressor().compress(buf.getvalue()))
    (tmp_path / "t.tar.gz").write_bytes(gzip.compress(buf.getvalue()))
    for name in ("t.tar.zst", "t.tar.gz"):
        (doc,) = iter_documents(tmp_path / name)
        assert (doc.member, doc.text) == ("a/x.txt", "Inside a zstd tar.")
