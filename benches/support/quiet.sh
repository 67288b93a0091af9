# Shared by the benchmark scripts (source it): wait for an idle machine before a
# timed run. Wall times mean little on a busy machine (2 cores, shared), so before
# each run `wait_quiet FLAG` waits up to QUIET_MAX seconds (default 10) until the
# whole system was <15% busy for 2 s; a run that starts busy gets FLAG written
# (holding the last busy percentage), and the summaries count those runs.

busy_pct() {  # system-wide CPU busy % over 1 s, from /proc/stat
  local a b
  read -r -a a < /proc/stat; sleep 1; read -r -a b < /proc/stat
  local idle=$(( b[4] + b[5] - a[4] - a[5] )) total=0 i
  for i in 1 2 3 4 5 6 7 8; do total=$(( total + b[i] - a[i] )); done
  echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

wait_quiet() {  # $1 = flag file to write if the machine never became quiet
  local deadline=$(( SECONDS + ${QUIET_MAX:-10} )) calm=0 pct=0
  while (( SECONDS < deadline )); do
    pct=$(busy_pct)
    if (( pct < 15 )); then (( ++calm >= 2 )) && return 0; else calm=0; fi
  done
  echo "   warning: machine not idle for 2 s within ${QUIET_MAX:-10} s (last ${pct}% CPU) - timing may be unreliable" >&2
  echo "$pct" >"$1"
}
