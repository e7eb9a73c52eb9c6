#!/usr/bin/env bash
# GPU machine: alternating `oss-engine bench` runs of two or more source trees in one session, for an A/B
# whose figures share a GPU, a clock and a thermal state (METHOD: rerun the baseline beside the change).
#
# Each TREE is a directory holding an `oss_engine/` package (the repository root, or a copy of another
# revision made on the CPU machine and carried to the device, which has no git history), optionally with a
# label: DIR:LABEL. The bench arguments follow `--`. Rounds: $ROUNDS (default 2), each running every tree
# once in the order given; only the figure lines are printed, prefixed by label and round.
#
# Example (on the CPU machine: copy the old revision into an ignored folder, then carry it):
#   mkdir -p tmp_gpu/old && git archive main oss_engine | tar -x -C tmp_gpu/old
#   bash scripts/gpu_ab_bench.sh tmp_gpu/old:old .:new -- --preset gpt-oss-20b --random-weights \
#       --batch-sizes 1,64 --decode-steps 64 --prefill-lens 2048 --gpu-memory-utilization 0.5
set -uo pipefail
trees=()
while [ $# -gt 0 ] && [ "$1" != "--" ]; do trees+=("$1"); shift; done
[ $# -gt 0 ] && shift  # the --
if [ ${#trees[@]} -lt 2 ] || [ $# -eq 0 ]; then
  echo "usage: $0 DIR[:LABEL] DIR[:LABEL] [...] -- BENCH ARGS" >&2
  exit 2
fi
for r in $(seq 1 "${ROUNDS:-2}"); do
  for tv in "${trees[@]}"; do
    d=${tv%%:*}; label=${tv#*:}
    [ "$label" = "$tv" ] && label=$d
    if [ ! -d "$d/oss_engine" ]; then echo "$d: no oss_engine/ package" >&2; exit 2; fi
    (cd "$d" && PYTHONPATH=. python -m oss_engine bench "$@" 2>&1) \
      | grep -v "^\[bench" | grep -E "decode batch|prefill|first token|layer, |Error" | sed "s/^/$label r$r: /"
  done
done
