# Sourced by the hand probes (bench/idle-probe.sh, bench/disk-probe/run.sh) with BIN and ROOT
# set: two laptops of one deployment in ROOT (wiped first), A the coordinator and B enrolled,
# neither announcing its changes to the other (`[sync] notify = false`, as benches/sync.rs).
#   fs DIR ARGS...        runs BIN with --data-dir DIR
#   pair_start [VAR=v ...] starts both agents on 127.0.0.1 (VAR=v set for them), stops them on
#                         exit, and sets BADDR and AADDR to their listen addresses
fs() { d=$1; shift; $BIN --data-dir $d "$@"; }
rm -rf $ROOT; mkdir -p $ROOT
fs $ROOT/a init --name bench-a >/dev/null
fs $ROOT/a mesh create --name bench >/dev/null
fs $ROOT/a mesh enroll --out $ROOT/b.fsmesh --name bench-b >/dev/null
fs $ROOT/b init --mesh $ROOT/b.fsmesh >/dev/null
for d in a b; do printf '[sync]\nnotify = false\n' > $ROOT/$d/fieldsync.toml; done
pair_start() {
  for d in a b; do
    env "$@" $BIN --data-dir $ROOT/$d run --listen 127.0.0.1:0 --api-listen 127.0.0.1:0 --no-discovery > $ROOT/$d.out 2>$ROOT/$d.err &
    echo $! > $ROOT/$d.pid
  done
  trap 'for d in a b; do kill $(cat $ROOT/$d.pid) 2>/dev/null; done' EXIT
  for i in $(seq 1 100); do grep -q listen $ROOT/b.out && grep -q listen $ROOT/a.out && break; sleep 0.2; done
  BADDR=$(python3 -c "import json;print(json.loads(open('$ROOT/b.out').readline())['listen'])")
  AADDR=$(python3 -c "import json;print(json.loads(open('$ROOT/a.out').readline())['listen'])")
}
