#!/bin/bash
# Made for bench/RESULTS.md "Disk, session 5": N = the gen.py JSONL (default ./recs.jsonl, from
# `python3 ../shared/gen.py --records 100000 --seed 42 --out recs.jsonl`); ROOT is wiped first.
# usage: run.sh BIN ROOT  -- import 100k into A, sync A->B, report time, CPU, RSS, disk
set -e
BIN=$1; ROOT=$2; N=${3:-recs.jsonl}
. "$(dirname "$0")/../pair.sh"
echo "load $(cut -d' ' -f1-3 /proc/loadavg)"
/usr/bin/time -f "import %e s user %U sys %S maxrss %M kB" $BIN --data-dir $ROOT/a import person $N >/dev/null
pair_start
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
ca0=$(cpu $(cat $ROOT/a.pid)); cb0=$(cpu $(cat $ROOT/b.pid))
fs $ROOT/a sync $BADDR | python3 -c "import sys,json; print('sync ms', sum(json.loads(l).get('ms',0) for l in sys.stdin))"
ca1=$(cpu $(cat $ROOT/a.pid)); cb1=$(cpu $(cat $ROOT/b.pid))
echo "sync cpu ticks(10ms) A $((ca1-ca0)) B $((cb1-cb0)); load $(cut -d' ' -f1-3 /proc/loadavg)"
for d in a b; do echo "$d $(grep -E 'VmHWM' /proc/$(cat $ROOT/$d.pid)/status | tr -s ' ')"; done
for d in a b; do echo "du right after sync $d: $(du -s --block-size=1 $ROOT/$d | cut -f1) (db $(du -s --block-size=1 $ROOT/$d/db | cut -f1))"; done
sleep 4
for d in a b; do echo "$d idle $(grep -E 'VmRSS' /proc/$(cat $ROOT/$d.pid)/status | tr -s ' ')"; done
fs $ROOT/a digest person; fs $ROOT/b digest person
fs $ROOT/a verify $BADDR >/dev/null && echo verified
for d in a b; do kill $(cat $ROOT/$d.pid); done
sleep 1
for d in a b; do echo "du $d: $(du -s --block-size=1 $ROOT/$d | cut -f1) total; db $(du -s --block-size=1 $ROOT/$d/db | cut -f1); snapshots $(du -s --block-size=1 $ROOT/$d/snapshots | cut -f1); blobs $(du -s --block-size=1 $ROOT/$d/db/blobs | cut -f1)"; ls -a $ROOT/$d/snapshots; done
