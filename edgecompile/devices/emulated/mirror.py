"""Which Debian mirror the arm64 rootfs comes from: this machine's apt sources, or the default."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

DEFAULT_MIRROR = "http://deb.debian.org/debian"
_DEBIAN_SUITES = {
    "bookworm", "trixie", "forky", "bullseye", "buster", "sid",
    "stable", "testing", "unstable", "oldstable",
}


def _apt_source_entries(etc_apt: Path) -> Iterator[tuple[list[str], list[str], list[str]]]:
    """(types, uris, suites) of every enabled entry in sources.list and sources.list.d."""
    files = [etc_apt / "sources.list"]
    d = etc_apt / "sources.list.d"
    if d.is_dir():
        files += sorted(d.glob("*.list")) + sorted(d.glob("*.sources"))
    for f in files:
        try:
            text = f.read_text(errors="replace")
        except OSError:
            continue
        if f.suffix == ".sources":  # deb822 stanzas
            for stanza in re.split(r"\n\s*\n", text):
                fields: dict[str, str] = {}
                for line in stanza.splitlines():
                    if line.startswith("#") or ":" not in line or line[:1].isspace():
                        continue
                    k, _, v = line.partition(":")
                    fields[k.strip().lower()] = v.strip()
                if fields.get("enabled", "yes").lower() == "no":
                    continue
                yield (fields.get("types", "").split(), fields.get("uris", "").split(),
                       fields.get("suites", "").split())
        else:  # one-line format: deb [options] uri suite [component...]
            for line in text.splitlines():
                line = re.sub(r"\[[^\]]*\]", " ", line.split("#", 1)[0]).split()
                if len(line) >= 3:
                    yield [line[0]], [line[1]], [line[2]]


def debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror for the rootfs: $EDGECOMPILE_DEBIAN_MIRROR, else the first apt source
    of this machine that serves a Debian release, else deb.debian.org."""
    env = os.environ.get("EDGECOMPILE_DEBIAN_MIRROR")
    if env:
        return env
    for types, uris, suites in _apt_source_entries(etc_apt):
        if "deb" in types and any(s in _DEBIAN_SUITES for s in suites):
            for uri in uris:
                if re.match(r"(https?|ftp|file):", uri):
                    return uri
    return DEFAULT_MIRROR
