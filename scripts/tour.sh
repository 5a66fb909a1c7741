#!/usr/bin/env bash
# Regenerates the pictures of docs/tour.md by running the tour itself: every ```sh block of
# docs/tour.md, in order, in one shell, from the repository root, with the `keel` just built
# first on PATH. The commands in the tour are therefore exactly the ones that made its pictures.
#
# Then it checks the tour: every picture it embeds was written during this run, is a PNG, and is
# named by the sh block just before it (the command next to the picture made it); and there are
# at least 8 of them.
#
# Needs the real VGG16 weights and the ants-vs-bees photos in ../shared; where they are absent it
# prints why and skips (exit 0, and says SKIPPED, not passed). CI runs it after the tests.
#
#   bash scripts/tour.sh
set -euo pipefail
cd "$(dirname "$0")/.."

tour=docs/tour.md
need=(../shared/weights/vgg16_imagenet_notop.h5 ../shared/datasets/hymenoptera/val/bees)
for path in "${need[@]}"; do
    if [ ! -e "$path" ]; then
        echo "tour: SKIPPED: $path is absent (the tour's pictures need the real VGG16 weights and the ants-vs-bees photos)"
        exit 0
    fi
done

echo "== tour: building keel and the examples the tour runs"
cargo build --release --quiet --bin keel --example test_card --example see_inside
export PATH="$PWD/target/release:$PATH"

# The runnable part of the tour: the contents of its ```sh fences, in order.
commands=$(mktemp)
trap 'rm -f "$commands"' EXIT
awk '/^```sh[[:space:]]*$/ {inside = 1; next} /^```/ {inside = 0; next} inside' "$tour" >"$commands"
if [ ! -s "$commands" ]; then
    echo "tour: $tour has no \`\`\`sh blocks" >&2
    exit 1
fi

stamp=$(mktemp)
trap 'rm -f "$commands" "$stamp"' EXIT
started=$SECONDS
echo "== tour: running the $(grep -c . "$commands") command lines of $tour"
# -x echoes each command as it runs, so a failure names its command.
bash -euxo pipefail "$commands"
echo "== tour: the commands took $((SECONDS - started)) s"

# Each embedded picture `![...](tour/NAME)` paired with the sh block before it.
pairs=$(awk '
    /^```sh[[:space:]]*$/ {inside = 1; block = ""; next}
    /^```/ {inside = 0; next}
    inside {block = block " " $0; next}
    {
        line = $0
        while (match(line, /!\[[^]]*\]\(tour\/[^)]+\)/)) {
            img = substr(line, RSTART, RLENGTH)
            sub(/^.*\(tour\//, "", img); sub(/\)$/, "", img)
            made = index(block, "docs/tour/" img) > 0 ? "named" : "unnamed"
            print img "\t" made
            line = substr(line, RSTART + RLENGTH)
        }
    }' "$tour")

failures=0
count=0
while IFS=$'\t' read -r img made; do
    [ -n "$img" ] || continue
    count=$((count + 1))
    file="docs/tour/$img"
    if [ "$made" != named ]; then
        echo "tour: picture $img is not named by the sh block before it" >&2
        failures=$((failures + 1))
    elif [ ! -f "$file" ] || [ -z "$(find "$file" -newer "$stamp")" ]; then
        echo "tour: $file was not written by this run" >&2
        failures=$((failures + 1))
    elif [ "$(head -c 8 "$file" | od -An -tx1 | tr -d ' \n')" != 89504e470d0a1a0a ]; then
        echo "tour: $file is not a PNG" >&2
        failures=$((failures + 1))
    fi
done <<<"$pairs"

if [ "$count" -lt 8 ]; then
    echo "tour: $tour embeds $count pictures; it should have at least 8" >&2
    failures=$((failures + 1))
fi
if [ "$failures" -gt 0 ]; then
    echo "tour: FAILED ($failures problem(s))" >&2
    exit 1
fi
echo "tour: ok: $count pictures, each written by the command before it ($(du -ch docs/tour/*.png | tail -1 | cut -f1) in docs/tour)"
# The pictures depend on float rounding, so another CPU may redraw a few pixels: say which
# changed, without failing.
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    changed=$(git status --porcelain -- docs/tour | grep -c . || true)
    echo "tour: $changed file(s) in docs/tour differ from the commit"
fi
