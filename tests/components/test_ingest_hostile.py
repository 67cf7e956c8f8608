"""More hostile input: deeply nested JSON, zip members lying about size, tars of many files."""

from __future__ import annotations

import io
import json
import struct
import zipfile
from pathlib import Path

from longdoc.components.core.config import IngestParams
from longdoc.components.data.ingest import ingest, read_corpus
from longdoc.components.data.readers import Document, Rejected, iter_documents

DEEP = "[" * 200_000 + "]" * 200_000


def test_deeply_nested_json_is_rejected_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "deep.json").write_text(DEEP)
    lines = [json.dumps({"text": "Before."}), DEEP, json.dumps({"text": "After the bad line."})]
    (tmp_path / "deep.jsonl").write_text("\n".join(lines) + "\n")
    found = list(iter_documents(tmp_path))
    docs = {d.member: d.text for d in found if isinstance(d, Document)}
    rejected = {r.member: r.reason for r in found if isinstance(r, Rejected)}
    assert rejected == {
        "deep.json": "invalid JSON: nested too deeply",
        "deep.jsonl:2": "invalid JSON line: nested too deeply",
    }
    assert docs == {"deep.jsonl:1": "Before.", "deep.jsonl:3": "After the bad line."}

    m = ingest(IngestParams(sources=[tmp_path], out=tmp_path / "corpus"))
    assert (m["counts"]["inputs"], m["counts"]["written"], m["counts"]["quarantined"]) == (4, 2, 2)
    assert [r["member"] for r in read_corpus(tmp_path / "corpus")] == [
        "deep.jsonl:1",
        "deep.jsonl:3",
    ]


def _lying_zip(payload: bytes, claimed: int) -> bytes:
    """A zip whose headers (local and central) claim `claimed` bytes for a larger member."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("small.txt", payload)
    data = bytearray(buf.getvalue())
    local = data.find(b"PK\x03\x04")
    struct.pack_into("<I", data, local + 22, claimed)  # uncompressed size
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, claimed)
    return bytes(data)


def test_zip_member_lying_about_its_size_stays_bounded(tmp_path: Path) -> None:
    limit = 100_000
    (tmp_path / "liar.zip").write_bytes(_lying_zip(b"A" * 2_000_000, claimed=1_000))
    found = list(iter_documents(tmp_path / "liar.zip", max_member_bytes=limit))
    assert all(len(d.text) <= limit for d in found if isinstance(d, Document))
    (rej,) = [r for r in found if isinstance(r, Rejected)]
    assert rej.member == "small.txt"
    # zipfile reads no more than the claimed size and then fails the CRC check
    assert "corrupt" in rej.reason or "max_member_bytes" in rej.reason


def test_tar_of_many_members_does_not_accumulate_headers(tmp_path: Path, monkeypatch) -> None:
    """tarfile remembers every member header it reads; on a tar of millions of small files that
    alone is gigabytes, so the reader forgets them as it streams."""
    import tarfile

    path = tmp_path / "many.tar.gz"
    with tarfile.open(path, "w:gz") as tf:
        for i in range(500):
            data = b"Doc %d." % i
            info = tarfile.TarInfo(f"d/{i:04d}.txt")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    opened: list[tarfile.TarFile] = []
    real_open = tarfile.open

    def spy(*a, **k):
        tf = real_open(*a, **k)
        opened.append(tf)
        return tf

    monkeypatch.setattr(tarfile, "open", spy)
    found = list(iter_documents(path))
    assert len(found) == 500 and all(isinstance(d, Document) for d in found)
    assert found[-1].text == "Doc 499."
    assert len(opened) == 1 and len(opened[0].members) <= 1
