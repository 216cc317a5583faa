#!/usr/bin/env bash
# Shell twin of tests/common/netns.rs: a throw-away LAN of network namespaces for manual
# experiments and benchmarks with real `fieldsync run` agents and real mDNS. Needs root.
#
#   scripts/netns.sh up N [LAB]        switch ns ${LAB}s with bridge br0 + hosts ${LAB}h0..h(N-1);
#                                      host I has eth0 = 198.51.100.(I+1)/24 and lo up
#   scripts/netns.sh exec LAB I CMD..  run CMD inside host I
#   scripts/netns.sh agent LAB I DIR [ARGS..]   start `fieldsync --data-dir DIR run ARGS` in
#                                      host I in the background (log: DIR.log, pid: DIR.pid)
#   scripts/netns.sh block LAB I       drop mDNS (224.0.0.251, ff02::fb) in host I with nftables
#   scripts/netns.sh down [LAB]        kill everything inside the lab's namespaces, delete them
#
# LAB defaults to "fsb". FIELDSYNC (default: target/release/fieldsync, else target/debug)
# selects the binary. Addresses exist only inside the namespaces; nothing is routed out.
#
# Example (time to first sync of two agents, release build):
#   scripts/netns.sh up 2
#   scripts/netns.sh exec fsb 0 "$FIELDSYNC" --data-dir /tmp/b0 put person '{"name":"x"}'
#   scripts/netns.sh agent fsb 0 /tmp/b0; scripts/netns.sh agent fsb 1 /tmp/b1
#   scripts/netns.sh exec fsb 1 "$FIELDSYNC" --data-dir /tmp/b1 digest
#   scripts/netns.sh down
set -euo pipefail

die() { echo "netns.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"

here=$(cd "$(dirname "$0")/.." && pwd)
if [ -z "${FIELDSYNC:-}" ]; then
  FIELDSYNC=$here/target/release/fieldsync
  [ -x "$FIELDSYNC" ] || FIELDSYNC=$here/target/debug/fieldsync
fi

lab_namespaces() { # LAB -> its namespaces, one per line
  ip netns list | awk '{print $1}' | grep -E "^$1(s|h[0-9]+)$" || true
}

destroy() { # NS
  local ns=$1 i pids
  for i in $(seq 1 20); do
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] && break
    # shellcheck disable=SC2086
    kill -9 $pids 2>/dev/null || true
    sleep 0.05
  done
  ip netns del "$ns" 2>/dev/null || true
}

cmd=${1:-}; shift || true
case "$cmd" in
  up)
    n=${1:?number of hosts}; lab=${2:-fsb}
    [ "$n" -ge 1 ] && [ "$n" -le 200 ] || die "1..200 hosts"
    for ns in $(lab_namespaces "$lab"); do destroy "$ns"; done # leftovers of a crashed run
    sw=${lab}s
    ip netns add "$sw"
    ip -n "$sw" link set lo up
    ip -n "$sw" link add br0 type bridge
    ip -n "$sw" link set br0 up
    for i in $(seq 0 $((n - 1))); do
      h=${lab}h$i
      ip netns add "$h"
      ip link add name "p$i" netns "$sw" type veth peer name eth0 netns "$h"
      ip -n "$sw" link set "p$i" master br0 up
      ip -n "$h" addr add "198.51.100.$((i + 1))/24" dev eth0
      ip -n "$h" link set eth0 up
      ip -n "$h" link set lo up
    done
    echo "lab $lab: $n hosts (${lab}h0..${lab}h$((n - 1))), 198.51.100.1..$n"
    ;;
  exec)
    lab=${1:?lab}; i=${2:?host}; shift 2
    exec ip netns exec "${lab}h$i" "$@"
    ;;
  agent)
    lab=${1:?lab}; i=${2:?host}; dir=${3:?data dir}; shift 3
    mkdir -p "$dir"
    ip netns exec "${lab}h$i" "$FIELDSYNC" --data-dir "$dir" run "$@" >"$dir.log" 2>&1 &
    echo $! >"$dir.pid"
    for _ in $(seq 1 300); do # up to 30 s for the listening line
      grep -q '"event":"listening"' "$dir.log" 2>/dev/null && { grep '"event"' "$dir.log"; exit 0; }
      kill -0 "$(cat "$dir.pid")" 2>/dev/null || { cat "$dir.log" >&2; die "agent exited"; }
      sleep 0.1
    done
    die "agent in host $i did not start within 30 s (log: $dir.log)"
    ;;
  block)
    lab=${1:?lab}; i=${2:?host}
    ip netns exec "${lab}h$i" nft -f - <<'EOF'
table inet fsblock {
  chain out { type filter hook output priority 0; policy accept;
    ip daddr 224.0.0.251 drop
    ip6 daddr ff02::fb drop
  }
  chain in { type filter hook input priority 0; policy accept;
    ip daddr 224.0.0.251 drop
    ip6 daddr ff02::fb drop
  }
}
EOF
    ;;
  down)
    lab=${1:-fsb}
    for ns in $(lab_namespaces "$lab"); do destroy "$ns"; done
    ;;
  *)
    sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
