#!/bin/bash
# Made for bench/RESULTS.md "Idle memory and jemalloc's thread caches, session 11".
# usage: idle-probe.sh BIN ROOT [VAR=value ...]
#   The sync benchmark's sequence by hand (benches/sync.rs): import RECS into A, agents A and B,
#   sync A->B, B->A, apply OPS on A, sync A->B twice; then B's idle VmRSS read as the benchmark
#   reads it (2 s after B has had no reopen due for 6 s). VAR=value pairs (e.g.
#   _RJEM_MALLOC_CONF=tcache:false) are set for the import and both agents. ROOT is wiped first.
#   RECS, OPS: `python3 ../shared/gen.py --records 100000 --seed 42 --out recs.jsonl` and
#   `--mutate 1000 --deletes 20 --from recs.jsonl --seed 7 --out ops.jsonl` (defaults: ./recs.jsonl,
#   ./ops.jsonl).
set -e
BIN=$1; ROOT=$2; shift 2
RECS=$(realpath ${RECS:-recs.jsonl}); OPS=$(realpath ${OPS:-ops.jsonl})
. "$(dirname "$0")/pair.sh"
env "$@" /usr/bin/time -f "import %e s user %U maxrss %M kB" $BIN --data-dir $ROOT/a import person $RECS >/dev/null
pair_start "$@"
ms() { python3 -c "import sys,json; print(sum(json.loads(l).get('ms',0) for l in sys.stdin))"; }
echo "initial $(fs $ROOT/a sync $BADDR | ms) ms"
for d in a b; do echo "$d $(grep -E 'VmHWM' /proc/$(cat $ROOT/$d.pid)/status | tr -s ' ')"; done
fs $ROOT/b sync $AADDR >/dev/null
fs $ROOT/a apply $OPS >/dev/null
echo "incr $(fs $ROOT/a sync $BADDR | ms) ms"
fs $ROOT/a sync $BADDR >/dev/null
q=0
for i in $(seq 1 180); do
  due=$(fs $ROOT/b status | python3 -c "import sys,json; print(json.load(sys.stdin)['agent']['store']['reopen_due'])")
  if [ "$due" = "False" ]; then q=$((q+1)); else q=0; fi
  [ $q -ge 12 ] && break
  sleep 0.5
done
sleep 2
for d in a b; do echo "$d idle $(grep -E 'VmRSS' /proc/$(cat $ROOT/$d.pid)/status | tr -s ' ')"; done
for d in a b; do echo "$d threads $(ls /proc/$(cat $ROOT/$d.pid)/task | wc -l)"; done
for d in a b; do echo "$d names $(cat /proc/$(cat $ROOT/$d.pid)/task/*/comm | sort | uniq -c | tr -s " \n" " ")"; done
for d in a b; do kill -TERM $(cat $ROOT/$d.pid); done
sleep 2
