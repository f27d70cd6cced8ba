#!/usr/bin/env bash
# Demo: start a real program, checkpoint it, restore it, watch it go on.
# Run as root from the repository: ./scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== building crest (release)"
cargo build --release -q -p crest-cli
CREST=$(realpath "${CARGO_TARGET_DIR:-target}")/release/crest
WORK=$(mktemp -d /tmp/crest-demo.XXXXXX)
trap 'kill "${PID:-0}" 2>/dev/null || true' EXIT
show() { sed 's/^/    | /' "$WORK/log" | tail -n "${1:-4}"; }

echo "== starting an unmodified program: python3 demo/counter.py"
PID=$("$CREST" run --log "$WORK/log" -- python3 "$PWD/demo/counter.py")
sleep 2.5; show

echo "== crest check -p $PID"
"$CREST" check -p "$PID"

echo "== crest dump -p $PID -o $WORK/image   (the process is stopped and saved)"
"$CREST" dump -p "$PID" -o "$WORK/image"
sleep 1
if kill -0 "$PID" 2>/dev/null && ! grep -q '^State:.*Z' "/proc/$PID/status"; then
    echo "the process should be gone" >&2; exit 1
fi
echo "   pid $PID is gone; nothing has run for a second:"; show 2

echo "== crest inspect $WORK/image (first lines)"
"$CREST" inspect "$WORK/image" > "$WORK/inspect.txt"
head -n 6 "$WORK/inspect.txt"

echo "== crest restore -i $WORK/image -d"
"$CREST" restore -i "$WORK/image" -d
sleep 2; echo "   the same process goes on counting with the same state:"; show 6

echo "== live move through a pipe: crest dump -o - | crest restore -i - -d"
"$CREST" dump -p "$PID" -o - | "$CREST" restore -i - -d
sleep 1.5; show 3
echo "== done (image kept in $WORK)"
