#!/usr/bin/env bash
# Set up the tokenization benchmark (Debian 12, Python 3.11, root). Run from the repository root.
# Generated corpora and the Llama-3.1 tokenizer are built at run time and never committed.
set -euo pipefail

# Unique real Japanese text (GPL/DFSG documentation packages) for benchmarks/tokenize/corpus.py
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  debian-reference-ja developers-reference-ja debian-policy-ja maint-guide-ja debian-faq-ja \
  manpages-ja manpages-ja-dev npm

# More unique Japanese: the HTML manuals of four big documentation packages, unpacked without their
# dependencies (a web browser, GIMP, LibreOffice ...): only their files are read.
mkdir -p /tmp/jadebs /tmp/jadocs
(cd /tmp/jadebs && apt-get download gimp-help-ja libreoffice-help-ja kicad-doc-ja lilypond-doc-html-ja)
for deb in /tmp/jadebs/*.deb; do dpkg-deb -x "$deb" /tmp/jadocs; done

# (a) ours: numpy + tokenizers, and the optional fast engines; (b)/(c) need transformers, megatron-core
# (torch must already be installed: a CPU wheel, never pulled in here), gigatoken + awkward.
pip install "numpy>=1.24" "tokenizers>=0.20" "tiktoken>=0.7" "orjson>=3.9" "gigatoken==0.10.0" awkward \
  "transformers>=4.57,<5" "megatron-core==0.16.1"
