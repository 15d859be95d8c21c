#!/usr/bin/env bash
# `lab --help` and `lab arch list` start-up, before (a checkout of BEFORE at /tmp/before) and after (this tree),
# interleaved round by round: git worktree add /tmp/before BEFORE && bash benchmarks/startup.sh
cd /tmp
for cmd in "--help" "arch list"; do
  b=(); a=()
  for i in 1 2 3 4 5; do
    s=$(date +%s.%N); PYTHONPATH=/tmp/before python -m lab.cli.main $cmd >/dev/null; e=$(date +%s.%N); b+=($(echo "$e - $s" | bc))
    s=$(date +%s.%N); python -m lab.cli.main $cmd >/dev/null; e=$(date +%s.%N); a+=($(echo "$e - $s" | bc))
  done
  echo "lab $cmd: before ${b[*]}  after ${a[*]}"
done
