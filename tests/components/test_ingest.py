"""Ingest: every container kind, hostile input, counts that reconcile, clean reruns, resume."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from longdoc.components.core.config import IngestParams
from longdoc.components.core.io import InputError, sha256_file
from longdoc.components.data import ingest as ingest_mod
from longdoc.components.data.ingest import (
    CORPUS_SCHEMA,
    STATE_FILE,
    corpus_shards,
    ingest,
    normalize,
    read_corpus,
)
from longdoc.components.data.readers import (
    Document,
    Rejected,
    decode_bytes,
    html_to_text,
    iter_documents,
)

MB = 1 << 20

HTML = (
    b"<!DOCTYPE html><html><head><title>Caf&eacute; &amp; Co</title>"
    b"<style>body { color: red; } .secret-style {}</style>"
    b"<script>var secretScript = '<p>not text</p>';</script></head>"
    b"<body><h1>Menu</h1><p>Fish &amp; chips cost &pound;5.</p>"
    b"<p>Second\n   paragraph &lt;here&gt;.<br>Next line.</p>"
    b"<noscript>enable js</noscript></body></html>"
)


def items(source: Path, **kw) -> list[Document | Rejected]:
    return list(iter_documents(source, max_member_bytes=kw.pop("max_member_bytes", MB), **kw))


def docs_of(found) -> dict[str, Document]:
    return {d.member: d for d in found if isinstance(d, Document)}


def rejected_of(found) -> dict[str, str]:
    return {r.member: r.reason for r in found if isinstance(r, Rejected)}


def add_member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def run(tmp_path: Path, *sources: Path, **kw) -> dict:
    out = kw.pop("out", tmp_path / "corpus")
    return ingest(IngestParams(sources=list(sources), out=out, **kw))


# ---------------------------------------------------------------------------------------------
# normalisation and decoding
# ---------------------------------------------------------------------------------------------


def test_normalize_nfc_controls_whitespace() -> None:
    raw = "  Cafe\u0301\x00 \t  bar\r\nline\x07 two\x0c\n\n\n\n  para\u00a0 end \ufeff "
    assert normalize(raw) == "Caf\u00e9 bar\nline two\n\npara end"
    assert normalize(" \n\t \x00 ") == ""
    assert normalize("a\tb") == "a b"


def test_decode_utf8_bom_latin1_and_binary() -> None:
    assert decode_bytes("h\u00e9".encode()) == ("h\u00e9", "utf-8")
    assert decode_bytes(b"\xef\xbb\xbfhi")[0] == "hi"
    assert decode_bytes("hi \u00e9".encode("utf-16"))[0] == "hi \u00e9"
    latin = "Le caf\u00e9 est tr\u00e8s bon, d\u00e9j\u00e0 vu, cr\u00e8me br\u00fbl\u00e9e."
    assert decode_bytes(latin.encode("latin-1"))[0] == latin
    text, why = decode_bytes(b"PK\x03\x04\x00\x00binary")
    assert text is None and "binary" in why


def test_html_visible_text_only() -> None:
    text, title = html_to_text(HTML.decode())
    assert title == "Caf\u00e9 & Co"
    assert "secret" not in text and "color" not in text and "enable js" not in text
    assert text == ("Menu\n\nFish & chips cost \u00a35.\n\nSecond paragraph <here>.\nNext line.")


# ---------------------------------------------------------------------------------------------
# containers
# ---------------------------------------------------------------------------------------------


def test_directory_recursive_txt_md_html(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "sub" / "deeper").mkdir(parents=True)
    (src / "a.txt").write_text("Alpha text.")
    (src / "sub" / "b.md").write_text("# Heading\n\nBody.")
    (src / "sub" / "deeper" / "c.html").write_bytes(HTML)
    found = items(src)
    docs = docs_of(found)
    assert set(docs) == {"a.txt", "sub/b.md", "sub/deeper/c.html"}
    assert all(d.source == str(src) for d in docs.values())
    assert docs["sub/deeper/c.html"].meta == {"title": "Caf\u00e9 & Co"}
    assert "secretScript" not in docs["sub/deeper/c.html"].text
    assert not rejected_of(found)


def test_single_txt_file_source(tmp_path: Path) -> None:
    f = tmp_path / "one.txt"
    f.write_text("Just one.")
    assert items(f) == [Document(str(f), "one.txt", "Just one.", {})]


def test_jsonl_gz_records(tmp_path: Path) -> None:
    f = tmp_path / "docs.jsonl.gz"
    with gzip.open(f, "wt", encoding="utf-8") as g:
        g.write(json.dumps({"id": "a", "title": "First", "text": "One.", "tags": ["x"]}) + "\n")
        g.write("{not json\n")
        g.write("\n")
        g.write(json.dumps({"id": "c", "title": "Third"}) + "\n")
        g.write(json.dumps("A bare string document.") + "\n")
    found = items(f)
    docs = docs_of(found)
    assert docs["docs.jsonl.gz:1"].text == "One."
    assert docs["docs.jsonl.gz:1"].meta == {"id": "a", "title": "First"}  # lists not in meta
    assert docs["docs.jsonl.gz:5"].text == "A bare string document."
    rej = rejected_of(found)
    assert "invalid JSON" in rej["docs.jsonl.gz:2"]
    assert "text" in rej["docs.jsonl.gz:4"]
    assert len(found) == 4  # the blank line is not a record


def test_json_array(tmp_path: Path) -> None:
    f = tmp_path / "arr.json"
    f.write_text(json.dumps([{"text": "A.", "title": "t"}, "B.", {"body": "no text"}]))
    found = items(f)
    assert docs_of(found)["arr.json:0"].meta == {"title": "t"}
    assert docs_of(found)["arr.json:1"].text == "B."
    assert "arr.json:2" in rejected_of(found)


def test_tar_gz_with_txt_and_html(tmp_path: Path) -> None:
    f = tmp_path / "web.tar.gz"
    with tarfile.open(f, "w:gz") as tf:
        add_member(tf, "pages/a.txt", b"Plain member.")
        add_member(tf, "pages/b.html", HTML)
    docs = docs_of(items(f))
    assert set(docs) == {"pages/a.txt", "pages/b.html"}
    assert docs["pages/a.txt"].text == "Plain member."
    assert "Fish & chips" in docs["pages/b.html"].text
    assert "secretScript" not in docs["pages/b.html"].text


def test_zip_with_subfolder_and_nested_archive(tmp_path: Path) -> None:
    inner = io.BytesIO()
    with tarfile.open(fileobj=inner, mode="w:gz") as tf:
        add_member(tf, "n.txt", b"Nested tar member.")
    f = tmp_path / "bundle.zip"
    with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("top.txt", "Top level.")
        z.writestr("folder/", "")
        z.writestr("folder/sub/inner.txt", "In a subfolder.")
        z.writestr("inner.tar.gz", inner.getvalue())
    docs = docs_of(items(f))
    assert docs["top.txt"].text == "Top level."
    assert docs["folder/sub/inner.txt"].text == "In a subfolder."
    assert docs["inner.tar.gz/n.txt"].text == "Nested tar member."


def test_xml_records_and_entity_expansion_refused(tmp_path: Path) -> None:
    good = tmp_path / "articles.xml"
    good.write_text(
        '<articles><article id="1" title="T"><p>Para one.</p><p>Para two.</p></article>'
        '<article id="2"><p>Other.</p></article></articles>'
    )
    docs = docs_of(items(good))
    assert docs["articles.xml:0"].text == "Para one.\n\nPara two."
    assert docs["articles.xml:0"].meta["title"] == "T"
    bomb = tmp_path / "bomb.xml"
    bomb.write_text(
        '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaa"><!ENTITY b "&a;&a;&a;">]>'
        "<r><x>&b;</x></r>"
    )
    assert "unsafe XML" in rejected_of(items(bomb))["bomb.xml"]


# ---------------------------------------------------------------------------------------------
# hostile and broken input
# ---------------------------------------------------------------------------------------------


def test_path_traversal_members_rejected(tmp_path: Path) -> None:
    t = tmp_path / "evil.tar"
    with tarfile.open(t, "w") as tf:
        add_member(tf, "../escape.txt", b"x")
        add_member(tf, "/etc/abs.txt", b"x")
        add_member(tf, "ok/../../up.txt", b"x")
        add_member(tf, "fine.txt", b"Fine.")
        link = tarfile.TarInfo("link.txt")
        link.type = tarfile.SYMTYPE
        link.linkname = "/etc/passwd"
        tf.addfile(link)
    found = items(t)
    rej = rejected_of(found)
    assert "traversal" in rej["../escape.txt"]
    assert "absolute" in rej["/etc/abs.txt"]
    assert "traversal" in rej["ok/../../up.txt"]
    assert "symlink" in rej["link.txt"]
    assert list(docs_of(found)) == ["fine.txt"]
    z = tmp_path / "evil.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("../../x.txt", "x")
        zf.writestr("C:/win.txt", "x")
        zf.writestr("ok.txt", "Ok.")
    rej = rejected_of(items(z))
    assert "traversal" in rej["../../x.txt"] and "absolute" in rej["C:/win.txt"]
    assert not (tmp_path.parent / "x.txt").exists()


def test_oversized_members_rejected(tmp_path: Path) -> None:
    t = tmp_path / "big.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        add_member(tf, "declared.txt", b"y" * 5000)  # header says too big: never read
        add_member(tf, "bomb.txt.gz", gzip.compress(b"z" * 200_000))  # small, inflates big
        add_member(tf, "small.txt", b"Small.")
    found = items(t, max_member_bytes=4000)
    rej = rejected_of(found)
    assert "max_member_bytes" in rej["declared.txt"]
    assert "max_member_bytes" in rej["bomb.txt.gz"]
    assert list(docs_of(found)) == ["small.txt"]
    z = tmp_path / "bomb.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("huge.txt", "0" * 200_000)
        zf.writestr("ok.txt", "Ok.")
    found = items(z, max_member_bytes=4000)
    assert "max_member_bytes" in rejected_of(found)["huge.txt"]
    assert list(docs_of(found)) == ["ok.txt"]


def test_total_size_limit_stops_the_source(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"d{i}.txt").write_text(f"Document {i}. " * 100)  # ~1.4 kB each
    found = items(src, max_total_bytes=3000)
    assert list(docs_of(found)) == ["d0.txt", "d1.txt"]
    assert "max_total_bytes" in rejected_of(found)["d2.txt"]
    assert len(found) == 3


def test_truncated_tar_keeps_readable_part(tmp_path: Path) -> None:
    full = io.BytesIO()
    with tarfile.open(fileobj=full, mode="w:gz") as tf:
        add_member(tf, "a.txt", b"First member.")
        add_member(tf, "b.txt", b"Second member. " * 5000)
    data = full.getvalue()
    t = tmp_path / "trunc.tar.gz"
    t.write_bytes(data[: len(data) // 2])
    found = items(t)
    assert list(docs_of(found)) == ["a.txt"]
    assert any("corrupt or truncated" in r for r in rejected_of(found).values())


def test_corrupt_gzip_rejected_and_run_goes_on(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    data = gzip.compress(b"Some text that will be cut short. " * 200)
    (src / "bad.txt.gz").write_bytes(data[: len(data) // 2])
    (src / "notgzip.txt.gz").write_bytes(b"this is not gzip at all")
    (src / "good.txt").write_text("A good document. It survives.")
    (src / "good2.txt.gz").write_bytes(gzip.compress(b"Compressed and fine."))
    m = run(tmp_path, src)
    assert m["counts"] == {
        "inputs": 4, "written": 2, "duplicates": 0, "near_duplicates": 0, "quarantined": 2,
        "chars": m["counts"]["chars"], "sentences": m["counts"]["sentences"],
    }  # fmt: skip
    quarantine = [json.loads(x) for x in (tmp_path / "corpus/quarantine.jsonl").open()]
    assert {q["member"] for q in quarantine} == {"bad.txt.gz", "notgzip.txt.gz"}
    assert all("corrupt" in q["reason"] for q in quarantine)


def test_binary_and_unknown_files_rejected(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (src / "doc.pdf").write_bytes(b"%PDF-1.4")
    (src / "ok.txt").write_text("Readable.")
    rej = rejected_of(items(src))
    assert "binary" in rej["image.txt"]
    assert "unsupported file type '.pdf'" in rej["doc.pdf"]


# ---------------------------------------------------------------------------------------------
# the stage
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def mixed_sources(tmp_path: Path) -> list[Path]:
    d = tmp_path / "txt"
    d.mkdir()
    (d / "one.txt").write_text(
        "The first document has three sentences. It is short!  Is it?\n\nA new paragraph"
    )
    (d / "copy.txt").write_text("The first document has three sentences.  It is short! Is it?"
                                "\n\n\n\nA new paragraph   ")  # fmt: skip
    (d / "empty.txt").write_text("  \n\t \n")
    (d / "two.md").write_text("Second document.\nSame paragraph, new line. End.")
    j = tmp_path / "docs.jsonl.gz"
    with gzip.open(j, "wt") as g:
        for i in range(3):
            g.write(json.dumps({"id": i, "title": f"T{i}", "text": f"Json doc {i}. Done."}) + "\n")
    t = tmp_path / "web.tar.gz"
    with tarfile.open(t, "w:gz") as tf:
        add_member(tf, "p/page.html", HTML)
        add_member(tf, "p/dup.txt", b"Json doc 0. Done.")
    return [d, j, t]


def test_ingest_counts_reconcile_and_schema(tmp_path: Path, mixed_sources) -> None:
    m = run(tmp_path, *mixed_sources, shard_max_docs=3)
    c = m["counts"]
    # 4 txt-dir files + 3 json lines + 2 tar members
    assert c["inputs"] == 9
    assert (c["written"], c["duplicates"], c["quarantined"]) == (6, 2, 1)
    assert c["inputs"] == c["written"] + c["duplicates"] + c["quarantined"]
    for src, pc in m["per_source"].items():
        dropped = pc["duplicates"] + pc["near_duplicates"] + pc["quarantined"]
        assert pc["inputs"] == pc["written"] + dropped, src
    assert sum(pc["inputs"] for pc in m["per_source"].values()) == c["inputs"]
    assert m["per_source"][str(mixed_sources[2])] == {
        "inputs": 2, "written": 1, "duplicates": 1, "near_duplicates": 0, "quarantined": 0
    }  # fmt: skip

    out = tmp_path / "corpus"
    assert [s["name"] for s in m["shards"]] == ["part-00000.parquet", "part-00001.parquet"]
    for s in m["shards"]:
        assert pq.read_schema(out / s["name"]).equals(CORPUS_SCHEMA)
        assert s["rows"] <= 3 and s["sha256"] == sha256_file(out / s["name"])
    assert sum(s["rows"] for s in m["shards"]) == c["written"]
    quarantine = [json.loads(x) for x in (out / "quarantine.jsonl").open()]
    assert quarantine == [
        {"source": str(mixed_sources[0]), "member": "empty.txt",
         "reason": "empty or whitespace-only document"}
    ]  # fmt: skip
    dups = [json.loads(x) for x in (out / "duplicates.jsonl").open()]
    assert {d["member"] for d in dups} == {"one.txt", "p/dup.txt"}  # copy.txt sorts first
    assert m["inputs"][0]["sha256"] and m["versions"]["spacy"]
    assert json.loads((out / "manifest.json").read_text())["counts"] == c


def test_rows_ids_sentences(tmp_path: Path, mixed_sources) -> None:
    run(tmp_path, *mixed_sources)
    rows = {r["member"]: r for r in read_corpus(tmp_path / "corpus")}
    r = rows["copy.txt"]
    assert r["text"] == (
        "The first document has three sentences. It is short! Is it?\n\nA new paragraph"
    )
    assert r["n_chars"] == len(r["text"])
    from hashlib import sha256

    assert r["doc_id"] == sha256(r["text"].encode()).hexdigest()
    sents = [r["text"][s["start"] : s["end"]] for s in r["sentences"]]
    assert sents == [
        "The first document has three sentences.",
        "It is short!",
        "Is it?",
        "A new paragraph",
    ]
    for row in rows.values():
        spans = [(s["start"], s["end"]) for s in row["sentences"]]
        assert spans and all(a < b for a, b in spans)
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
        for a, b in spans:
            piece = row["text"][a:b]
            assert piece == piece.strip() and "\n\n" not in piece
    assert json.loads(rows["docs.jsonl.gz:2"]["meta"]) == {"id": 1, "title": "T1"}
    assert json.loads(rows["p/page.html"]["meta"]) == {"title": "Caf\u00e9 & Co"}


def test_min_and_max_chars_quarantined(tmp_path: Path) -> None:
    src = tmp_path / "s"
    src.mkdir()
    (src / "short.txt").write_text("Tiny.")
    (src / "long.txt").write_text("Long sentence here. " * 20)
    (src / "ok.txt").write_text("Just right, really.")
    m = run(tmp_path, src, min_chars=10, max_doc_chars=100)
    assert m["counts"]["written"] == 1 and m["counts"]["quarantined"] == 2
    reasons = {
        json.loads(x)["member"]: json.loads(x)["reason"]
        for x in (tmp_path / "corpus/quarantine.jsonl").open()
    }
    assert reasons["short.txt"].startswith("too short") and "min_chars=10" in reasons["short.txt"]
    assert reasons["long.txt"].startswith("too long")


def test_missing_source_is_one_line_input_error(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"^source not found: .*nope$"):
        run(tmp_path, tmp_path / "nope")


def test_empty_corpus_is_clear_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "blank.txt").write_text("   \n")
    (src / "x.bin").write_bytes(b"\x00\x01")
    with pytest.raises(InputError) as err:
        run(tmp_path, src)
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith(f"no documents ingested from {src}: 2 inputs, ")
    assert "1 empty or whitespace-only document" in msg and "1 unsupported file type" in msg
    assert not (tmp_path / "corpus/manifest.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no files found"):
        run(tmp_path, empty)


def test_rerun_replaces_outputs(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(5):
        (src / f"d{i}.txt").write_text(f"Document number {i}. It has two sentences.")
    out = tmp_path / "corpus"
    run(tmp_path, src, shard_max_docs=1)
    assert len(list(out.glob("part-*.parquet"))) == 5
    (out / ".part-00009.parquet.abc.tmp").write_bytes(b"half a file from a killed run")
    for i in range(3, 5):
        (src / f"d{i}.txt").unlink()
    m = run(tmp_path, src, shard_max_docs=2)
    assert sorted(p.name for p in out.glob("part-*.parquet")) == [
        "part-00000.parquet",
        "part-00001.parquet",
    ]
    assert not list(out.glob(".*.tmp")) and not (out / STATE_FILE).exists()
    assert [r["member"] for r in read_corpus(out)] == ["d0.txt", "d1.txt", "d2.txt"]
    assert m["counts"]["written"] == 3


def test_output_dir_inside_source_is_not_read(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("Only document.")
    first = run(tmp_path, src, out=src / "corpus")
    second = run(tmp_path, src, out=src / "corpus")
    assert second["counts"]["inputs"] == 1
    assert first["inputs"] == second["inputs"]


def test_resume_after_crash_keeps_finished_shards(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(7):
        (src / f"d{i}.txt").write_text(f"Document {i}. Sentence two of {i}.")
    (src / "d2b.txt").write_text("Document 2. Sentence two of 2.")  # duplicate of d2
    (src / "e.txt").write_text(" ")
    clean = run(tmp_path, src, shard_max_docs=2, out=tmp_path / "clean")

    monkeypatch.setattr(ingest_mod, "_SENT_BATCH_DOCS", 1)
    calls = {"n": 0}
    real = ingest_mod.normalize

    def crashing(text: str, whitespace: str = "paragraphs") -> str:
        calls["n"] += 1
        if calls["n"] == 7:
            raise KeyboardInterrupt("simulated kill")
        return real(text, whitespace)

    monkeypatch.setattr(ingest_mod, "normalize", crashing)
    out = tmp_path / "corpus"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, src, shard_max_docs=2, out=out)
    assert not (out / "manifest.json").exists()  # unfinished: does not look complete
    state = json.loads((out / STATE_FILE).read_text())
    assert state["shards"] and not list(out.glob(".*.tmp"))
    first = out / state["shards"][0]["name"]
    stamp = first.stat().st_mtime_ns

    monkeypatch.setattr(ingest_mod, "normalize", real)
    resumed = run(tmp_path, src, shard_max_docs=2, out=out)
    assert first.stat().st_mtime_ns == stamp  # finished shard not redone
    assert resumed["counts"] == clean["counts"]
    assert resumed["per_source"][str(src)] == clean["per_source"][str(src)]
    assert resumed["timings"]["resumed_after_inputs"] > 0
    assert [s["sha256"] for s in resumed["shards"]] == [s["sha256"] for s in clean["shards"]]
    assert (out / "quarantine.jsonl").read_text() == (
        tmp_path / "clean/quarantine.jsonl"
    ).read_text()
    assert (out / "duplicates.jsonl").read_text() == (
        tmp_path / "clean/duplicates.jsonl"
    ).read_text()


def test_parallel_workers_match_in_process(tmp_path: Path, mixed_sources) -> None:
    one = run(tmp_path, *mixed_sources, out=tmp_path / "a")
    two = ingest(IngestParams(sources=mixed_sources, out=tmp_path / "b"), workers=1)
    assert two["timings"]["workers"] == 1
    assert [s["sha256"] for s in one["shards"]] == [s["sha256"] for s in two["shards"]]


def test_corpus_readers_require_finished_run(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="corpus not found"):
        corpus_shards(tmp_path / "missing")
    (tmp_path / "half").mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        list(read_corpus(tmp_path / "half"))


def test_sentence_struct_type() -> None:
    field = CORPUS_SCHEMA.field("sentences")
    assert field.type == pa.list_(pa.struct([("start", pa.int32()), ("end", pa.int32())]))


# ---------------------------------------------------------------------------------------------
# more formats (issue 5): zstd/bz2/xz, nested archives, Parquet/Arrow, XML/JSON record paths
# ---------------------------------------------------------------------------------------------


def zst(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdCompressor().compress(data)


def tar_bytes(members: list[tuple[str, bytes]], mode: str = "w") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for name, data in members:
            add_member(tf, name, data)
    return buf.getvalue()


def zip_bytes(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def test_zst_bz2_xz_and_deeply_nested_archives(tmp_path: Path) -> None:
    import bz2
    import lzma

    src = tmp_path / "src"
    src.mkdir()
    (src / "a.jsonl.zst").write_bytes(zst(b'{"text": "Zst one."}\n{"text": "Zst two."}\n'))
    (src / "b.txt.bz2").write_bytes(bz2.compress(b"Bzip2 text."))
    (src / "c.md.xz").write_bytes(lzma.compress(b"Xz text."))
    (src / "bad.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + b"garbage" * 10)
    deep = zst(tar_bytes([("x.txt", b"Four levels down.")]))  # .tar.zst
    inner_zip = zip_bytes([("deep.tar.zst", deep), ("y.txt.bz2", bz2.compress(b"In zip."))])
    (src / "outer.tar.xz").write_bytes(lzma.compress(tar_bytes([("d/inner.zip", inner_zip)])))
    found = items(src)
    docs = docs_of(found)
    assert docs["a.jsonl.zst:2"].text == "Zst two."
    assert docs["b.txt.bz2"].text == "Bzip2 text."
    assert docs["c.md.xz"].text == "Xz text."
    assert docs["outer.tar.xz/d/inner.zip/deep.tar.zst/x.txt"].text == "Four levels down."
    assert docs["outer.tar.xz/d/inner.zip/y.txt.bz2"].text == "In zip."
    assert "corrupt" in rejected_of(found)["bad.txt.zst"]
    assert len(found) == 7


def test_parquet_and_arrow_text_column(tmp_path: Path) -> None:
    import pyarrow.ipc as ipc

    src = tmp_path / "src"
    src.mkdir()
    table = pa.table({"id": [1, 2], "body": ["Row one.", "Row two."], "tags": [["a"], []]})
    pq.write_table(table, src / "t.parquet")
    with ipc.new_file(str(src / "f.arrow"), table.schema) as w:
        w.write_table(table)
    stream = io.BytesIO()
    with ipc.new_stream(stream, table.schema) as w:
        w.write_table(table)
    (src / "s.arrow").write_bytes(stream.getvalue())
    member = io.BytesIO()
    pq.write_table(table, member)
    (src / "z.zip").write_bytes(zip_bytes([("in/t.parquet", member.getvalue())]))
    pq.write_table(pa.table({"other": ["x"]}), src / "nocol.parquet")
    (src / "broken.parquet").write_bytes(b"PAR1 not really parquet PAR1")
    found = items(src, text_field="body")
    docs = docs_of(found)
    for name in ("t.parquet", "f.arrow", "s.arrow", "z.zip/in/t.parquet"):
        assert docs[f"{name}:1"].text == "Row two."
        assert docs[f"{name}:0"].meta == {"id": 1}  # lists are not meta
    rej = rejected_of(found)
    assert "no column 'body'" in rej["nocol.parquet"]
    assert "corrupt or unreadable table" in rej["broken.parquet"]
    assert len(found) == 10


def test_xml_record_path_streams_hyperpartisan_style(tmp_path: Path) -> None:
    records = "".join(
        f'<article id="{i:07d}" published-at="2018-01-0{i}" title="Title {i}">'
        f'<p>Paragraph <a href="http://x">with a link</a> of {i}.</p><p>Second.</p></article>'
        for i in range(1, 6)
    )
    xml = '<?xml version="1.0"?><root><info><article>not a record</article></info>'
    xml = (xml + f"<articles>{records}</articles></root>").encode()
    t = tmp_path / "hp.tar.gz"
    t.write_bytes(tar_bytes([("articles.xml", xml)], mode="w:gz"))
    # The member is larger than max_member_bytes, but XML is read record by record.
    found = items(t, max_member_bytes=400, xml_record_path="articles/article")
    docs = docs_of(found)
    assert len(docs) == 5 and not rejected_of(found)
    d = docs["articles.xml:0"]
    assert d.text == "Paragraph with a link of 1.\n\nSecond."
    assert d.meta == {"id": "0000001", "published-at": "2018-01-01", "title": "Title 1",
                      "tag": "article"}  # fmt: skip
    # any "article" element: the one under <info> counts too
    assert len(docs_of(items(t, max_member_bytes=400, xml_record_path="article"))) == 6
    broken = tmp_path / "broken.xml"
    broken.write_bytes(xml[: xml.index(b'<article id="0000003"') + 30])
    found = items(broken, xml_record_path="article")
    assert len(docs_of(found)) == 3  # the <info> one and two complete records are kept
    assert "invalid XML" in rejected_of(found)["broken.xml"]


def test_json_records_path_and_dotted_text_field(tmp_path: Path) -> None:
    f = tmp_path / "export.json"
    recs = [{"id": 1, "body": {"text": "Deep one."}}, {"id": 2, "body": {"html": "x"}}]
    f.write_text(json.dumps({"version": 3, "data": {"items": recs}}))
    found = items(f, json_records_path="data.items", text_field="body.text")
    assert docs_of(found)["export.json:0"] == Document(str(f), "export.json:0", "Deep one.",
                                                       {"id": 1})  # fmt: skip
    assert "'body.text'" in rejected_of(found)["export.json:1"]
    assert "no list of records" in rejected_of(items(f, json_records_path="data"))["export.json"]


# ---------------------------------------------------------------------------------------------
# hostile input through the stage: every kind quarantined with a reason, counts reconcile
# ---------------------------------------------------------------------------------------------


def test_hostile_inputs_quarantined_and_counts_reconcile(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    good = "A fine document. It has two sentences."
    (src / "good.txt").write_text(good)
    gz = gzip.compress(b"Cut short. " * 500)
    (src / "corrupt.txt.gz").write_bytes(gz[: len(gz) // 2])
    tar = tar_bytes([("t1.txt", b"Tar member one."), ("t2.txt", b"Tar two. " * 3000)], "w:gz")
    (src / "trunc.tar.gz").write_bytes(tar[: len(tar) * 2 // 3])
    (src / "evil.zip").write_bytes(zip_bytes([("../../escape.txt", b"x"), ("ok.txt", b"Zip ok.")]))
    (src / "bomb.zip").write_bytes(zip_bytes([("bomb.txt", b"0" * 300_000)]))
    (src / "laughs.xml").write_text(
        '<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "ha"><!ENTITY b "&a;&a;&a;&a;">]>'
        "<r><x>&b;</x></r>"
    )
    (src / "lines.jsonl").write_text('{"text": "Json ok."}\n{"text": broken\n[1, 2]\n')
    (src / "blob.txt").write_bytes(bytes(range(256)) * 4)
    (src / "blank.md").write_text(" \n \t\n")
    (src / "huge.txt").write_text("Too long here. " * 100)
    m = run(tmp_path, src, max_member_bytes=100_000, max_doc_chars=1000)
    c = m["counts"]
    reasons = {
        q["member"]: q["reason"]
        for q in map(json.loads, (tmp_path / "corpus/quarantine.jsonl").open())
    }
    expected = {
        "corrupt.txt.gz": "corrupt",
        "trunc.tar.gz/t2.txt": "corrupt or truncated data",  # the member cut short ...
        "trunc.tar.gz": "corrupt or truncated archive",  # ... and the archive after it
        "evil.zip/../../escape.txt": "path traversal",
        "bomb.zip/bomb.txt": "max_member_bytes",
        "laughs.xml": "unsafe XML refused (EntitiesForbidden)",
        "lines.jsonl:2": "invalid JSON line",
        "lines.jsonl:3": "record is a list",
        "blob.txt": "binary",
        "blank.md": "empty or whitespace-only",
        "huge.txt": "too long",
    }
    assert set(reasons) == set(expected)
    for member, why in expected.items():
        assert why in reasons[member], (member, reasons[member])
    written = {r["member"] for r in read_corpus(tmp_path / "corpus")}
    assert written == {"good.txt", "trunc.tar.gz/t1.txt", "evil.zip/ok.txt", "lines.jsonl:1"}
    assert c["quarantined"] == len(expected) and c["written"] == 4
    assert c["inputs"] == c["written"] + c["duplicates"] + c["near_duplicates"] + c["quarantined"]
    assert m["quarantine_reasons"]["path traversal in member name"] == 1
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path.parent / "escape.txt").exists()


def test_total_decompressed_limit_from_params(tmp_path: Path) -> None:
    """A zip of many members, each under max_member_bytes, that together inflate past
    max_total_bytes: the source stops with one quarantine record; other sources go on."""
    bomb = tmp_path / "many.zip"
    bomb.write_bytes(zip_bytes([(f"m{i:02d}.txt", b"%d " % i * 20_000) for i in range(20)]))
    other = tmp_path / "other.txt"
    other.write_text("Another source, unaffected.")
    m = run(tmp_path, bomb, other, max_member_bytes=100_000, max_total_bytes=200_000)
    per = m["per_source"]
    assert per[str(bomb)]["written"] == 5 and per[str(bomb)]["quarantined"] == 1
    assert per[str(other)] == {"inputs": 1, "written": 1, "duplicates": 0,
                               "near_duplicates": 0, "quarantined": 0}  # fmt: skip
    q = [json.loads(x) for x in (tmp_path / "corpus/quarantine.jsonl").open()]
    assert len(q) == 1 and "max_total_bytes=200000" in q[0]["reason"]
    assert q[0]["member"] == "m05.txt"  # 5 x 40 kB read, the 6th passes the cap


# ---------------------------------------------------------------------------------------------
# near-duplicates
# ---------------------------------------------------------------------------------------------


def _essay(seed: int, n: int = 400) -> list[str]:
    import random

    rng = random.Random(seed)
    vocab = [f"w{rng.randrange(5000)}" for _ in range(3000)]
    return [rng.choice(vocab) for _ in range(n)]


def test_near_duplicates_removed_counted_and_resumable(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src"
    src.mkdir()
    base = _essay(1)
    edited = list(base)
    for i in range(0, len(edited), 80):
        edited[i] = "edited"  # ~6% of the shingles change: Jaccard ~0.88
    (src / "a.txt").write_text(" ".join(base) + ".")
    (src / "b.txt").write_text(" ".join(edited) + ".")
    (src / "c.txt").write_text(" ".join(_essay(2)) + ".")
    (src / "d.txt").write_text(" ".join(base) + ".")  # exact duplicate of a
    (src / "e.txt").write_text(" ".join(_essay(3)) + ".")
    off = run(tmp_path, src, out=tmp_path / "off")
    assert (off["counts"]["written"], off["counts"]["near_duplicates"]) == (4, 0)
    on = run(tmp_path, src, out=tmp_path / "on", near_dup_threshold=0.8, shard_max_docs=1)
    c = on["counts"]
    assert (c["written"], c["duplicates"], c["near_duplicates"]) == (3, 1, 1)
    assert c["inputs"] == c["written"] + c["duplicates"] + c["near_duplicates"] + c["quarantined"]
    assert on["per_source"][str(src)]["near_duplicates"] == 1
    dups = [json.loads(x) for x in (tmp_path / "on/duplicates.jsonl").open()]
    near = [d for d in dups if d["kind"] == "near"]
    ids = {r["member"]: r["doc_id"] for r in read_corpus(tmp_path / "on")}
    assert near[0]["member"] == "b.txt" and near[0]["of"] == ids["a.txt"]
    assert 0.8 <= near[0]["similarity"] <= 1.0
    assert [d["kind"] for d in dups if d["member"] == "d.txt"] == ["exact"]

    # killed after two shards: the rebuilt MinHash index gives the same decisions
    monkeypatch.setattr(ingest_mod, "_SENT_BATCH_DOCS", 1)
    real, calls = ingest_mod.normalize, {"n": 0}

    def crashing(text: str, whitespace: str = "paragraphs") -> str:
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("simulated kill")
        return real(text, whitespace)

    monkeypatch.setattr(ingest_mod, "normalize", crashing)
    out = tmp_path / "resumed"
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path, src, out=out, near_dup_threshold=0.8, shard_max_docs=1)
    monkeypatch.setattr(ingest_mod, "normalize", real)
    resumed = run(tmp_path, src, out=out, near_dup_threshold=0.8, shard_max_docs=1)
    assert resumed["timings"]["resumed_after_inputs"] > 0
    assert resumed["counts"] == c
    assert (out / "duplicates.jsonl").read_text() == (tmp_path / "on/duplicates.jsonl").read_text()


def test_near_dup_index_finds_near_duplicates_and_keeps_distinct_docs() -> None:
    base = _essay(1)
    edited = list(base)
    for i in range(0, len(edited), 80):
        edited[i] = "edited"  # Jaccard of the 5-word shingles ~0.88
    index = ingest_mod.NearDupIndex(0.8)
    assert index.bands * index.rows <= 128
    assert index.signature("... !!") is None  # no words: nothing to compare
    for doc_id, words in (("a", base), ("c", _essay(2))):
        index.add(doc_id, index.signature(" ".join(words)))
    doc_id, sim = index.query(index.signature(" ".join(edited)))
    assert doc_id == "a" and 0.8 <= sim < 1.0
    assert index.query(index.signature(" ".join(base).upper()))[1] == 1.0  # lower-cased
    assert index.query(index.signature(" ".join(_essay(3)))) is None  # distinct: kept
    # a stricter threshold keeps the edited copy; a fresh index gives the same signature (resume
    # rebuilds the index in a new process and must take the same decisions)
    strict = ingest_mod.NearDupIndex(0.95)
    strict.add("a", strict.signature(" ".join(base)))
    assert strict.query(strict.signature(" ".join(edited))) is None
    again = ingest_mod.NearDupIndex(0.8).signature(" ".join(edited))
    assert (again.hashvalues == index.signature(" ".join(edited)).hashvalues).all()


def test_fast_sentencizer_matches_spacy_component() -> None:
    """`SentenceSplitter` applies the sentencizer rule to token arrays; spaCy's own component
    (run by `nlp(text)`) must give the same boundaries."""
    import random

    from longdoc.components.data.ingest import SentenceSplitter, refine_spans

    sp = SentenceSplitter()
    rng = random.Random(0)
    pieces = ["Hello", "world", ".", "!", "?", "...", "3.5", "Mr.", '"Quoted."', "(paren)", ",",
              "\n\n", "\n", "  ", "e.g.", "U.S.A.", "\U0001f600", "\u65e5\u672c\u3002", "end?!",
              "'s", "\u2014", "\u00ab", "\u00bb", '?"', ".)", "'", ""]  # fmt: skip
    texts = [
        "".join(rng.choice(pieces) + rng.choice(["", " ", " ", "\n"]) for _ in range(k))
        for k in [rng.randint(0, 40) for _ in range(400)]
    ]
    got = sp.split(texts)
    for text, (starts, ends) in zip(texts, got, strict=True):
        ref = refine_spans(text, ((s.start_char, s.end_char) for s in sp.nlp(text).sents))
        assert (starts.tolist(), ends.tolist()) == (ref[0].tolist(), ref[1].tolist()), text


def test_record_paths_reach_the_stage(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.xml").write_text(
        '<root><head>skip</head><articles><article id="7" title="T">'
        "<p>Body of the article.</p></article></articles></root>"
    )
    (src / "b.jsonl").write_text(json.dumps({"id": 1, "doc": {"body": "From JSONL."}}) + "\n")
    m = run(tmp_path, src, xml_record_path="article", text_field="doc.body")
    assert m["counts"]["written"] == 2 and m["params"]["xml_record_path"] == "article"
    rows = {r["member"]: r for r in read_corpus(tmp_path / "corpus")}
    assert rows["a.xml:0"]["text"] == "Body of the article."
    assert json.loads(rows["a.xml:0"]["meta"]) == {"id": "7", "title": "T", "tag": "article"}
    assert rows["b.jsonl:1"]["text"] == "From JSONL."
