#!/bin/bash
# Records moved in a three-laptop mesh (bench/RESULTS.md, "Three-laptop mesh traffic").
#
# Three agents on 127.0.0.1 (plaintext, static peers, each knows the other two) all running;
# N gen.py records imported on hq, then 5,000 of them edited on laptop a (an import of the
# changed rows). Waits (bounded) until the three digests agree after each step, then sums what
# the sessions each agent started moved ("synced with X: received R, sent S" lines). Needed:
# 2N for the import (to a and b), 10,000 for the edits (to hq and b).
#
# Usage: bench/mesh-traffic.sh [N]   (F=path/to/fieldsync, default target/release/fieldsync;
# GEN=path/to/gen.py, default ../shared/gen.py; P0=first port, default 7711)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
F=${F:-$here/target/release/fieldsync}; N=${1:-20000}
GEN=${GEN:-$here/../shared/gen.py}; P0=${P0:-7711}
R=$(mktemp -d); cd "$R" || exit 1
PIDS=""
cleanup() { kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$R"; }
trap cleanup EXIT
python3 "$GEN" --records "$N" --seed 42 --out recs.jsonl
python3 "$GEN" --mutate 5000 --deletes 0 --from recs.jsonl --seed 7 --out ops.jsonl
python3 - <<'P'
import json
with open("ops.jsonl") as f, open("edits.jsonl", "w") as o:
    for l in f:
        d = json.loads(l)
        o.write(json.dumps({"table": d["table"], "id": d["id"], "fields": d["fields"]}) + "\n")
P
declare -A port=([hq]=$P0 [a]=$((P0 + 1)) [b]=$((P0 + 2)))
for n in hq a b; do "$F" --data-dir $n init --name lap-$n >/dev/null; done
for n in hq a b; do
  peers=""; for m in hq a b; do [ $m != $n ] && peers="$peers --peer 127.0.0.1:${port[$m]}"; done
  "$F" --data-dir $n run --insecure-plaintext --listen 127.0.0.1:${port[$n]} --no-discovery \
    --no-api $peers > $n.log 2>&1 &
  PIDS="$PIDS $!"
done
sleep 3
settle() {
  for _ in $(seq 1 120); do
    for n in hq a b; do "$F" --data-dir $n digest --json > $n.dig 2>/dev/null; done
    if cmp -s hq.dig a.dig && cmp -s hq.dig b.dig; then sleep 2; return 0; fi
    sleep 1
  done
  echo "the three laptops did not converge within 120 s"; exit 1
}
moved() { cat hq.log a.log b.log | grep '^synced with ' \
  | sed -E 's/.*received ([0-9]+), sent ([0-9]+).*/\1 \2/' | awk '{s += $1 + $2} END {print s + 0}'; }
t0=$(date +%s.%N)
"$F" --data-dir hq import person recs.jsonl >/dev/null
settle
t1=$(date +%s.%N); first=$(moved)
"$F" --data-dir a import person edits.jsonl >/dev/null
settle
t2=$(date +%s.%N); second=$(( $(moved) - first ))
printf 'import of %d on hq: %d records moved (%d needed), converged in %.1f s\n' \
  "$N" "$first" $((2 * N)) "$(echo "$t1 - $t0 - 2" | bc)"
printf 'edit of 5000 on a: %d records moved (10000 needed), converged in %.1f s\n' \
  "$second" "$(echo "$t2 - $t1 - 2" | bc)"
