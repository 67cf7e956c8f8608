"""Archives and web pages with reproducible bytes: fixed mtimes, owners and member order."""

from __future__ import annotations

import gzip
import html
import io
import tarfile
import zipfile
from collections.abc import Sequence

#: Fixed timestamp for archive members (tar mtime, zip date_time) so archives are reproducible.
ARCHIVE_MTIME = 315532800  # 1980-01-01T00:00:00Z, the earliest date zip can store
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


def tar_gz_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A .tar.gz with sorted members, fixed mtime/owner/mode and a gzip header without name/time."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = ARCHIVE_MTIME
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tf.addfile(info, io.BytesIO(data))
    return gzip.compress(buf.getvalue(), compresslevel=6, mtime=0)


def zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A deflated .zip with sorted members and a fixed date on each."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in sorted(members):
            info = zipfile.ZipInfo(name, date_time=_ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            info.create_system = 3
            zf.writestr(info, data, compresslevel=6)
    return buf.getvalue()


def html_page(title: str, paras: Sequence[str], n: int) -> str:
    """A web page whose only text is `paras` in <p> elements: the <title>, <style> and <script>
    blocks are there for the ingester to skip (the script even holds sentence-like strings)."""
    body = "\n".join(f"<p>{html.escape(p)}</p>" for p in paras)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>\nbody { font-family: serif; margin: 2em; }\np.note > a { color: #336; }\n"
        "</style>\n"
        f'<script>\nvar page = {{"id": {n}, "note": "this script text is not content"}};\n'
        'function track() { return "never index the words in a script block"; }\n</script>\n'
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )
