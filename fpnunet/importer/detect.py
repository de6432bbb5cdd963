"""Which export a file is, by its content first and its extension second; walking an input folder."""
from __future__ import annotations

from pathlib import Path

from fpnunet.importer.topcon import file_type

FORMATS = ("heyex-vol", "heyex-xml", "heyex-e2e", "topcon-fda", "topcon-fds", "dicom")
_EXTENSIONS = {".vol": "heyex-vol", ".e2e": "heyex-e2e", ".sdb": "heyex-e2e", ".fda": "topcon-fda",
               ".fds": "topcon-fds", ".dcm": "dicom", ".dicom": "dicom"}
_SKIP = {".png", ".tif", ".tiff", ".bmp", ".jpg", ".jpeg", ".txt", ".csv", ".json", ".md", ".pdf"}


def detect_format(path: Path) -> str | None:
    """One of :data:`FORMATS`, or ``None`` for a file that is no known export."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    if head.startswith(b"HSF-OCT") or head.startswith(b"HSF-XXX"):
        return "heyex-vol"
    if head.startswith(b"CMDb"):
        return "heyex-e2e"
    if head.startswith(b"FOCT"):  # Topcon: FDA (or FAA) and FDS by the three bytes after the magic
        return file_type(head)
    if len(head) >= 132 and head[128:132] == b"DICM":
        return "dicom"
    suffix = path.suffix.lower()
    if suffix == ".xml":
        return "heyex-xml" if b"<HEDX" in head or b"<BODY" in head else None
    if suffix in _SKIP:
        return None
    return _EXTENSIONS.get(suffix)


def find_exports(root: Path) -> tuple[list[tuple[Path, str]], int]:
    """``([(file, format), ...] sorted by path, number of other files ignored)`` under ``root``.

    ``root`` may be one file. Hidden files and folders are skipped.
    """
    if root.is_file():
        fmt = detect_format(root)
        return ([(root, fmt)] if fmt else []), (0 if fmt else 1)
    found: list[tuple[Path, str]] = []
    ignored = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(root).parts):
            continue
        fmt = detect_format(p)
        if fmt:
            found.append((p, fmt))
        elif p.suffix.lower() not in _SKIP:
            ignored += 1
    return found, ignored
