#!/usr/bin/env bash
# Wall time of the full sweep through the Prefect deployment against plain `dvc repro`, cold and no-op.
#
#   bash benchmarks/prefect_overhead.sh [flow|dvc|both]      (default both; about 40 minutes on 2 cores)
#
# Each part works in a fresh clone of this repository's HEAD, with this checkout's .venv, default params:
# - flow: a Prefect server on 127.0.0.1:4301 (its own PREFECT_HOME), `python -m pipelines.orchestration.flow serve`, then
#   `prefect deployment run diffusion/full-sweep --watch` cold and three times with nothing changed;
# - dvc: `dvc repro` cold and three times with nothing changed.
# The two parts run one after the other, never at once: they would share the two cores.
set -u
part=${1:-both}
here=$(cd "$(dirname "$0")/.." && pwd)
export PATH=$here/.venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false
work=$(mktemp -d)
now() { date +%s.%N; }
seconds() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

if [[ $part == flow || $part == both ]]; then
  git clone -q "$here" "$work/flow" && cd "$work/flow"
  export PREFECT_HOME=$work/prefect-home PREFECT_API_URL=http://127.0.0.1:4301/api
  setsid prefect server start --host 127.0.0.1 --port 4301 > "$work/server.log" 2>&1 & server=$!
  until curl -sf "$PREFECT_API_URL/health" > /dev/null; do sleep 1; done
  setsid python -m pipelines.orchestration.flow serve > "$work/serve.log" 2>&1 & serve=$!
  until prefect deployment inspect diffusion/full-sweep > /dev/null 2>&1; do sleep 1; done
  t=$(now)
  prefect deployment run diffusion/full-sweep --watch --watch-timeout 7200 > "$work/cold-run.log" 2>&1
  echo "flow: cold sweep, exit $?, $(seconds "$t") s"
  for i in 1 2 3; do
    t=$(now)
    prefect deployment run diffusion/full-sweep --watch > /dev/null 2>&1
    echo "flow: no-op sweep, exit $?, $(seconds "$t") s"
  done
  kill -- -"$serve" -"$server"
  echo "flow: logs in $work (serve.log has every stage's output); stage report in MLflow: stages.json"
fi

if [[ $part == dvc || $part == both ]]; then
  git clone -q "$here" "$work/dvc" && cd "$work/dvc"
  t=$(now)
  dvc repro > "$work/dvc-repro.log" 2>&1
  echo "dvc: cold repro, exit $?, $(seconds "$t") s"
  for i in 1 2 3; do
    t=$(now)
    dvc repro > /dev/null 2>&1
    echo "dvc: no-op repro, exit $?, $(seconds "$t") s"
  done
fi
