#!/bin/bash
# zhpc service job (one task of a job array), written by `zhpc submit-services`.
#
# Slurm signals this batch shell, not its children: USR1 ahead of the time limit
# (--signal=B:USR1@N, up to a minute earlier than asked), TERM at the limit, on
# scancel and on scontrol requeue. The service runs as a background child so that
# the traps below can run while it works; each forwards the signal, and the loop
# waits again because `wait` returns as soon as a trapped signal arrives.
# SIGCONT is deliberately not trapped: bash would then lose the USR1 that follows it.
child=
forward() {
    if [ -n "$child" ]; then
        kill -s "$1" "$child" 2>/dev/null
    fi
}
trap 'forward TERM' TERM
trap 'forward USR1' USR1
trap 'forward USR2' USR2
trap 'forward INT' INT

echo "zhpc: ${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0} on $(hostname) (restart ${SLURM_RESTART_COUNT:-0})" >&2
@ZHPC_COMMAND@ &
child=$!
while kill -0 "$child" 2>/dev/null; do
    wait "$child"
done
# bash remembers the status of a child it has reaped: this returns the service's own.
wait "$child"
status=$?
echo "zhpc: service exited with status $status" >&2
exit "$status"
