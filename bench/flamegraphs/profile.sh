#!/usr/bin/env bash
# CPU profile of one initial sync on both sides: two agents of BIN on 127.0.0.1, N gen.py records
# imported into A, `fieldsync sync` A → B, `perf record` attached to each agent for the sync only.
# Writes OUT-sender.svg and OUT-receiver.svg (flamegraph.py beside this script).
#
#   bench/flamegraphs/profile.sh BIN N OUT
#
# BIN needs symbols: build it with the release profile but without stripping, e.g.
#   CARGO_PROFILE_RELEASE_STRIP=none CARGO_PROFILE_RELEASE_DEBUG=line-tables-only \
#   CARGO_PROFILE_RELEASE_LTO=off CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 cargo build --release
set -euo pipefail
BIN=$(realpath "$1"); N=$2; OUT=$(realpath -m "$3")
HERE=$(cd "$(dirname "$0")" && pwd)
GEN=$HERE/../../../shared/gen.py
W=$(mktemp -d /tmp/fs-profile.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 1; rm -rf "$W"; }
trap cleanup EXIT
DATA=/tmp/fs-profile-$N.jsonl
[ -s "$DATA" ] || python3 "$GEN" --records "$N" --seed 42 --out "$DATA" 2>/dev/null
"$BIN" --data-dir "$W/a" init --name prof-a >/dev/null
"$BIN" --data-dir "$W/a" mesh create --name prof >/dev/null
"$BIN" --data-dir "$W/a" mesh enroll --out "$W/b.fsmesh" --name prof-b >/dev/null
"$BIN" --data-dir "$W/b" init --mesh "$W/b.fsmesh" >/dev/null
"$BIN" --data-dir "$W/a" import person "$DATA" >/dev/null
start() { # dir -> sets PID, ADDR
  "$BIN" --data-dir "$1" run --listen 127.0.0.1:0 --no-discovery >"$1.out" 2>/dev/null &
  PID=$!; PIDS+=("$PID")
  for _ in $(seq 100); do [ -s "$1.out" ] && break; sleep 0.1; done
  ADDR=$(head -1 "$1.out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["listen"])')
}
start "$W/a"; PA=$PID
start "$W/b"; PB=$PID; AB=$ADDR
perf record -F 400 --call-graph dwarf,32768 -p "$PA" -o "$W/a.data" 2>/dev/null & PERF_A=$!; PIDS+=("$PERF_A")
perf record -F 400 --call-graph dwarf,32768 -p "$PB" -o "$W/b.data" 2>/dev/null & PERF_B=$!; PIDS+=("$PERF_B")
sleep 1
/usr/bin/time -f "sync wall %e s" "$BIN" --data-dir "$W/a" sync "$AB"
kill -INT "$PERF_A" "$PERF_B"; wait "$PERF_A" "$PERF_B" || true
grep VmHWM /proc/"$PA"/status /proc/"$PB"/status || true
perf script --no-inline -i "$W/a.data" 2>/dev/null | python3 "$HERE/flamegraph.py" "sender (A) agent, initial sync of $N records" >"$OUT-sender.svg"
perf script --no-inline -i "$W/b.data" 2>/dev/null | python3 "$HERE/flamegraph.py" "receiver (B) agent, initial sync of $N records" >"$OUT-receiver.svg"
echo "wrote $OUT-sender.svg $OUT-receiver.svg"
