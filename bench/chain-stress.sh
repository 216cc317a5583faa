#!/bin/bash
# Concurrent API writes on a chain of three laptops (x1 <-> x2 <-> x3, mutual TLS, x1 the
# coordinator), as trial 9 and its re-trial ran them: RUNS times, 9 threads PATCH 50 shared
# records for 5 s through the three HTTP APIs, then the three digests are polled (each CLI call
# bounded to 10 s) until equal. Says how long each run took to converge, counts "quarantined"
# and "invalid history" lines, and if an agent stops answering, dumps its threads with gdb (if
# installed) to chain-stress-<name>.gdb in the current directory and stops. Needs python3.
#
# Usage: bench/chain-stress.sh   (F=path/to/fieldsync, default target/release/fieldsync;
# RUNS=6; P0=first sync port, default 7661)
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
F=$(realpath "${F:-$here/target/release/fieldsync}") && [ -x "$F" ] \
  || { echo "no fieldsync binary (build it or set F=)"; exit 1; }
RUNS=${RUNS:-6}; P0=${P0:-7661}; out=$PWD
R=$(mktemp -d); cd "$R" || exit 1
PIDS=""
cleanup() { kill $PIDS 2>/dev/null; wait 2>/dev/null; rm -rf "$R"; }
trap cleanup EXIT
"$F" --data-dir x1 init --name x1 >/dev/null
"$F" --data-dir x1 mesh create --name Stress >/dev/null
for n in x2 x3; do
  "$F" --data-dir x1 mesh enroll --name $n --out $n.fsmesh >/dev/null
  "$F" --data-dir $n init --mesh $n.fsmesh >/dev/null
done
start() { # name port peers...
  local n=$1 p=$2; shift 2
  local peers=""; for q in "$@"; do peers="$peers --peer 127.0.0.1:$q"; done
  "$F" --data-dir $n run --listen 127.0.0.1:$p --no-discovery --api-listen 127.0.0.1:0 $peers \
    > $n.log 2>&1 &
  PIDS="$PIDS $!"; echo $! > $n.pid
}
start x1 $P0 $((P0 + 1)); start x2 $((P0 + 1)) $P0 $((P0 + 2)); start x3 $((P0 + 2)) $((P0 + 1))
sleep 4
for i in $(seq 1 50); do "$F" --data-dir x1 put person "{\"name\":\"P$i\",\"n\":0}" >/dev/null; done
cat > patch.py <<'P'
import json, random, sys, threading, time, urllib.request
api = {n: json.load(open(f"{n}/api.json")) for n in ("x1", "x2", "x3")}
def req(n, method, path, body=None):
    r = urllib.request.Request(api[n]["url"] + path, method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Authorization": "Bearer " + api[n]["token"], "Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(r, timeout=30))
ids = [r["id"] for r in req("x1", "GET", "/v1/tables/person/records?limit=100")["records"]]
def worker(n, t):
    end, i = time.time() + 5, 0
    while time.time() < end:
        i += 1
        try:
            req(n, "PATCH", f"/v1/tables/person/records/{random.choice(ids)}",
                {"n": i, f"note_{n}": f"{n}-{t}-{i}",
                 "status": random.choice(["missing", "found_alive", "in_shelter"])})
        except Exception as e:
            print(n, t, e, file=sys.stderr)
ts = [threading.Thread(target=worker, args=(n, t)) for n in api for t in range(3)]
[t.start() for t in ts]; [t.join() for t in ts]
P
# Wait for x3 to hold the 50 records through x2.
for _ in $(seq 1 60); do
  [ "$("$F" --data-dir x3 digest --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["count"])' 2>/dev/null)" = 50 ] && break
  sleep 1
done
for run in $(seq 1 "$RUNS"); do
  timeout 60 python3 patch.py
  t0=$(date +%s); state=diverged
  for _ in $(seq 1 60); do
    for n in x1 x2 x3; do
      if ! timeout 10 "$F" --data-dir $n digest --json > $n.dig 2>/dev/null; then state="frozen:$n"; break 2; fi
    done
    if cmp -s x1.dig x2.dig && cmp -s x1.dig x3.dig; then state=converged; break; fi
    sleep 1
  done
  echo "run $run: $state after $(( $(date +%s) - t0 )) s; quarantined: $(cat x?.log | grep -c quarantined), invalid history: $(cat x?.log | grep -c 'invalid history')"
  case $state in frozen:*)
    n=${state#frozen:}
    if command -v gdb >/dev/null; then
      gdb -p "$(cat $n.pid)" -batch -ex "thread apply all bt 15" > "$out/chain-stress-$n.gdb" 2>&1
      echo "threads of $n in $out/chain-stress-$n.gdb"
    fi
    exit 1;;
  esac
done
