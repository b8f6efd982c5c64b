"""Build a several-MB corpus of UNIQUE real Japanese text from Debian packages, as JSONL.

Sources (install with setup.sh): debian-reference-ja, debian-faq-ja, developers-reference-ja,
debian-policy-ja, maint-guide-ja (paragraphs), manpages-ja and manpages-ja-dev (one document per
man page, troff markup stripped), and the HTML pages of gimp-help-ja, libreoffice-help-ja,
kicad-doc-ja and lilypond-doc-html-ja (one document per page) when setup.sh has unpacked them. Exact duplicate documents are dropped: repeating a small corpus
flatters tokenizers that cache pre-token results.

    python benchmarks/tokenize/corpus.py OUT.jsonl
"""

from __future__ import annotations

import glob
import gzip
import html
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.fixtures.real_data import _is_japanese, text_paragraphs

TEXT_SOURCES = [
    "/usr/share/debian-reference/debian-reference.ja.txt.gz",
    "/usr/share/doc/debian/FAQ/debian-faq.ja.txt.gz",
    "/usr/share/developers-reference/ja/developers-reference.txt.gz",
    "/usr/share/developers-reference/ja/_sources/*.rst.txt",
    "/usr/share/doc/debian-policy/ja/policy.html/_sources/*.rst.txt",
]
HTML_SOURCES = ["/usr/share/doc/maint-guide-ja/html/*.ja.html"]
MAN_SOURCES = ["/usr/share/man/ja/man*/*.gz"]


def _read(path: str) -> str:
    if path.endswith(".gz"):
        with gzip.open(path, "rt", encoding="utf-8", errors="replace") as f:
            return f.read()
    return Path(path).read_text(encoding="utf-8", errors="replace")


def _strip_html(text: str) -> str:
    text = re.sub(r"(?is)<(script|style)\b.*?</\1>", " ", text)
    text = re.sub(r"(?i)<br\s*/?>|</p>|</div>|</h\d>|</li>|</pre>", "\n\n", text)
    return html.unescape(re.sub(r"<[^>]+>", "", text))


def _strip_troff(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.startswith(('.\\"', "'\\\"")):
            continue
        if line.startswith("."):
            parts = line.split(None, 1)
            line = parts[1] if len(parts) > 1 and parts[0] in (".SH", ".SS", ".B", ".I", ".BR", ".IR", ".RB", ".IP", ".TP") else ""
            if not line:
                lines.append("")
                continue
        line = re.sub(r"\\f[BIRPC]|\\f\(..|\\[,/&]|\\\(..", "", line)
        lines.append(line.replace("\\-", "-").replace("\\e", "\\").strip('"'))
    return "\n".join(lines)


# Larger HTML manuals, fetched without their dependencies by setup.sh (`apt-get download` + `dpkg-deb -x`
# into /tmp/jadocs): one document per page, like an encyclopedia article.
PAGE_SOURCES = ["/tmp/jadocs/usr/share/**/*.html"]


def documents(pages: bool = True) -> list[str]:
    docs: list[str] = []
    for pattern in TEXT_SOURCES:
        for path in sorted(glob.glob(pattern)):
            docs.extend(text_paragraphs(_read(path)))
    for pattern in HTML_SOURCES:
        for path in sorted(glob.glob(pattern)):
            docs.extend(text_paragraphs(_strip_html(_read(path))))
    for pattern in MAN_SOURCES:
        for path in sorted(glob.glob(pattern)):
            page = "\n\n".join(text_paragraphs(_strip_troff(_read(path)), min_japanese=1))
            if sum(1 for ch in page if _is_japanese(ch)) >= 50:
                docs.append(page)
    if pages:
        for pattern in PAGE_SOURCES:
            for path in sorted(glob.glob(pattern, recursive=True)):
                page = "\n\n".join(text_paragraphs(_strip_html(_read(path)), min_japanese=1))
                if sum(1 for ch in page if _is_japanese(ch)) >= 50:
                    docs.append(page)
    seen: set[str] = set()
    unique = []
    for d in docs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def build(dest: str) -> tuple[int, int]:
    """Write the corpus to ``dest``; return (documents, UTF-8 bytes of text)."""
    docs = documents()
    n_bytes = 0
    with open(dest, "w", encoding="utf-8") as f:
        for i, d in enumerate(docs):
            n_bytes += len(d.encode("utf-8"))
            f.write(json.dumps({"id": i, "text": d}, ensure_ascii=False) + "\n")
    return len(docs), n_bytes


if __name__ == "__main__":
    n, b = build(sys.argv[1])
    print(f"{sys.argv[1]}: {n} documents, {b / 1e6:.2f} MB of UTF-8 text")
