"""Pseudonyms for patients and scans: a keyed hash (HMAC-SHA256) with a key kept outside the dataset.

The same key gives the same pseudonyms on every import, so a later ``--append`` keeps a patient's
scans together; without the key a pseudonym cannot be traced back. :func:`redact` replaces any
text that contains one of a scan's identifiers (name, ids, birth date, serial number).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from fpnunet.errors import FPNError

KEY_ENV = "FPN_IMPORT_KEY"
DEFAULT_KEY = Path("~/.fpnunet/import.key")


def default_key_path() -> Path:
    """``$FPN_IMPORT_KEY`` or ``~/.fpnunet/import.key``."""
    return Path(os.environ.get(KEY_ENV) or DEFAULT_KEY).expanduser()


def check_key_location(key_path: Path, output: Path) -> None:
    """Refuse a key inside the dataset folder (the key must never travel with the data)."""
    k, o = key_path.expanduser().resolve(), output.expanduser().resolve()
    if k == o or o in k.parents:
        raise FPNError(f"--key {key_path}: the pseudonymisation key must be stored outside the dataset folder {output}")


def load_or_create_key(key_path: Path) -> tuple[bytes, bool]:
    """Read the key (hex text), or create a new random one (file mode 0600). Returns ``(key, created)``."""
    key_path = key_path.expanduser()
    if key_path.is_file():
        text = key_path.read_text().strip()
        if not re.fullmatch(r"[0-9a-fA-F]{32,}", text):
            raise FPNError(f"{key_path}: not a pseudonymisation key (expected at least 32 hex digits)")
        return bytes.fromhex(text if len(text) % 2 == 0 else text[:-1]), False
    if key_path.exists():
        raise FPNError(f"--key {key_path}: exists and is not a file")
    try:
        key_path.parent.mkdir(parents=True, exist_ok=True)
        text = secrets.token_hex(32)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(text + "\n")
    except OSError as exc:
        raise FPNError(f"--key {key_path}: cannot create the key file ({exc.strerror})") from None
    return bytes.fromhex(text), True


def keyed_hash(key: bytes, kind: str, value: str, n: int = 10) -> str:
    """First ``n`` hex digits of HMAC-SHA256(key, kind + NUL + value)."""
    return hmac.new(key, f"{kind}\0{value}".encode(), hashlib.sha256).hexdigest()[:n]


def patient_pseudonym(key: bytes, patient_key: str) -> str:
    """``P`` + 10 hex digits; unknown patients (empty key) are ``Punknown``."""
    return f"P{keyed_hash(key, 'patient', patient_key)}" if patient_key else "Punknown"


def safe_id(text: str) -> str:
    """An original id made safe for file names (``--keep-ids``): letters, digits and ``-`` only."""
    s = re.sub(r"[^A-Za-z0-9-]+", "-", text.strip()).strip("-")
    return s or "unknown"


def identifier_variants(values: list[str]) -> list[str]:
    """The strings to look for: each value, its words (names), and dates in several spellings."""
    out: set[str] = set()
    for v in values:
        v = str(v or "").strip().strip("\x00")
        if len(v) < 3 or v.lower() in ("unknown", "none", "anonymous"):
            continue
        out.add(v.lower())
        for part in re.split(r"[\s^,]+", v):
            if len(part) >= 3:
                out.add(part.lower())
        m = re.fullmatch(r"(\d{4})-?(\d{2})-?(\d{2}).*", v)
        if m:
            y, mo, d = m.groups()
            out.update({f"{y}{mo}{d}", f"{y}-{mo}-{d}", f"{d}.{mo}.{y}", f"{d}/{mo}/{y}", f"{mo}/{d}/{y}"})
    return sorted(out)


def contains_identifier(text: str, identifiers: list[str]) -> bool:
    low = text.lower()
    return any(i in low for i in identifiers)


def source_token(key: bytes, rel_path: str) -> str:
    """What the report says instead of a source path (file names often hold patient names)."""
    return f"src-{keyed_hash(key, 'source', rel_path, 10)}"


def sources_map_path(key_path: Path, output: Path) -> Path:
    """The private list ``source token -> case -> path``, kept beside the key (outside the dataset)."""
    return key_path.expanduser().parent / f"{output.name}.sources.csv"


def redact(text: str, identifiers: list[str], key: bytes) -> str:
    """``text`` unchanged when it holds no identifier, else ``redacted-<keyed hash>``."""
    if contains_identifier(text, identifiers):
        return f"redacted-{keyed_hash(key, 'source', text, 8)}"
    return text


def read_sources_map(path: Path) -> list[tuple[str, str, str]]:
    """The rows ``(source token, case, path relative to the import's -i)`` of a private sources map."""
    import csv

    with open(path, newline="") as f:
        return [(r.get("source", ""), r.get("case", ""), r.get("path", "")) for r in csv.DictReader(f)]


def scan_hash(key: bytes, digest: str, series: str) -> str:
    """The last part of a case name: the keyed hash of the export file's SHA-256 and the scan's series."""
    return keyed_hash(key, "scan", f"{digest}|{series}", 6)
