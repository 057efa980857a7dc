# Start or stop the test Slurm cluster (two nodes, node1 and node2, on this host) that
# tests/test_slurm.py submits to. Uses ../shared/slurm (munge, slurmctld, 2 x slurmd, slurmdbd +
# MariaDB for sacct); needs root, and installs Debian's Slurm packages through apt when missing.
#
#   source .ci/slurm.sh start   # start (idempotent) and export SLURM_CONF into this shell
#   bash .ci/slurm.sh stop      # stop the daemons (cancels running jobs)
#
# A cluster that cannot start is not fatal: the Slurm tests then skip, saying why.
# shellcheck shell=bash

_gpt_ds_slurm() {
  local here shared base
  here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
  shared=${GPT_DS_SHARED:-$(cd "$here/../.." && pwd)/shared}/slurm
  base=${SLURM_BASE:-/tmp/slurm_ci}
  case "${1:-}" in
    start)
      if [ ! -x "$shared/start_slurm.sh" ] && [ ! -f "$shared/start_slurm.sh" ]; then
        echo "slurm.sh: $shared/start_slurm.sh not found; the Slurm tests will skip" >&2
        return 0
      fi
      if SLURM_NODES=2 SLURM_BASE=$base bash "$shared/start_slurm.sh"; then
        # shellcheck disable=SC1091
        source "$base/env.sh"
        export SLURM_CONF
      else
        echo "slurm.sh: the test cluster did not start; the Slurm tests will skip" >&2
      fi
      ;;
    stop)
      if [ -f "$shared/stop_slurm.sh" ]; then
        SLURM_BASE=$base bash "$shared/stop_slurm.sh" || true
      fi
      ;;
    *)
      echo "usage: source .ci/slurm.sh start | bash .ci/slurm.sh stop" >&2
      return 2
      ;;
  esac
}

_gpt_ds_slurm "$@"
_gpt_ds_slurm_status=$?
unset -f _gpt_ds_slurm
# `return` when sourced, `exit` when run
return $_gpt_ds_slurm_status 2>/dev/null || exit $_gpt_ds_slurm_status
