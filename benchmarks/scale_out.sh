#!/usr/bin/env bash
# Two cores as two hosts: the default DAG spread over a two-worker work pool against plain `dvc repro`, back to back.
#
#   bash benchmarks/scale_out.sh [threads]      (about 40 minutes on 2 cores; threads: dvc repro's, default all cores)
#
# Every checkout is a fresh clone of this repository's HEAD with this checkout's .venv and default params:
# - pool: a Prefect server (127.0.0.1:4302), an MLflow server (127.0.0.1:5302, a sqlite store, served artifacts), a
#   local folder as the DVC remote; two clones as two hosts, each a process worker (`--limit 1`, one thread:
#   OMP_NUM_THREADS=1); the sweep started from a third clone with {"spread": true};
# - dvc: `dvc repro` in a fourth clone, after the pool part has stopped: the two never share the cores.
# Prints both wall times, then whether the two trilemma tables agree in every value but the measured times.
set -u
here=$(cd "$(dirname "$0")/.." && pwd)
threads=${1:-}
export PATH=$here/.venv/bin:$PATH PREFECT_SERVER_ANALYTICS_ENABLED=false PREFECT_WORKER_QUERY_SECONDS=1
work=$(mktemp -d)
now() { date +%s.%N; }
seconds() { awk -v t0="$1" -v t1="$(now)" 'BEGIN { printf "%.1f", t1 - t0 }'; }

git clone -q "$here" "$work/head" && cd "$work/head"
dvc remote add -q -d shared "$work/dvc-remote"
git -c user.name=bench -c user.email=bench@localhost commit -qam "the shared DVC remote"
for h in host-a host-b; do git clone -q "$work/head" "$work/$h"; done

export PREFECT_HOME=$work/prefect-home PREFECT_API_URL=http://127.0.0.1:4302/api
setsid prefect server start --host 127.0.0.1 --port 4302 > "$work/prefect-server.log" 2>&1 & prefect_server=$!
mkdir "$work/mlflow"
setsid mlflow server --backend-store-uri "sqlite:///$work/mlflow/mlflow.db" --artifacts-destination "$work/mlflow/artifacts" \
  --host 127.0.0.1 --port 5302 --workers 1 > "$work/mlflow-server.log" 2>&1 & mlflow_server=$!
until curl -sf "$PREFECT_API_URL/health" > /dev/null; do sleep 1; done
until curl -sf http://127.0.0.1:5302/health > /dev/null; do sleep 1; done
prefect work-pool create gpu-pool --type process > /dev/null
prefect --no-prompt deploy --all > "$work/deploy.log" 2>&1
workers=()
for h in host-a host-b; do
  (cd "$work/$h" && TRILEMMA_CHECKOUT=$work/$h OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \
    setsid prefect worker start --pool gpu-pool --limit 1 --name "$h" > "$work/$h.log" 2>&1) & workers+=($!)
done
sleep 5
t=$(now)
MLFLOW_TRACKING_URI=http://127.0.0.1:5302 python -c \
  "from pipelines.orchestration.flow_sweep import diffusion; diffusion(spread=True)" > "$work/sweep.log" 2>&1
echo "pool: two workers, one thread each: exit $?, $(seconds "$t") s"
MLFLOW_TRACKING_URI=http://127.0.0.1:5302 python - <<'EOF'
import tempfile
import mlflow, pandas as pd
client = mlflow.MlflowClient()
(sweep,) = [r for r in client.search_runs([client.get_experiment_by_name("trilemma").experiment_id])
            if "mlflow.parentRunId" not in r.data.tags]
report = pd.read_json(client.download_artifacts(sweep.info.run_id, "stages.json", tempfile.mkdtemp()), orient="split")
ran = report[report["status"].isin(["ran", "restored"])]
host = ran["host"].str.rsplit("/", n=1).str[-1]
print("pool: stages per host", ran.groupby(host)["stage"].count().to_dict(),
      "| busy seconds per host", ran.groupby(host)["seconds"].sum().round(0).to_dict())
EOF
grep -h "stages up to date\|ran or restored\|restored .* stages\|rebuilt" "$work/sweep.log" | sed 's/^.*| //' | cut -c1-200
for p in "${workers[@]}"; do pkill -TERM -P "$p"; done; sleep 3
pkill -INT -f "gpu-pool --limit 1 --name host-"; sleep 3; pkill -KILL -f "gpu-pool --limit 1 --name host-"
kill -- -"$prefect_server" -"$mlflow_server" 2> /dev/null

git clone -q "$here" "$work/dvc" && cd "$work/dvc"
t=$(now)
if [[ -n $threads ]]; then export OMP_NUM_THREADS=$threads MKL_NUM_THREADS=$threads; fi
dvc repro > "$work/dvc-repro.log" 2>&1
echo "dvc: repro${threads:+ ($threads threads)}: exit $?, $(seconds "$t") s"

python - "$work/head/metrics/trilemma.csv" "$work/dvc/metrics/trilemma.csv" <<'EOF'
import sys
import pandas as pd
times = ["wall_s_per_1k", "wall_s_per_1k_iqr"]
pool, dvc = (pd.read_csv(p).set_index("cell") for p in sys.argv[1:])
a, b = pool.drop(columns=times), dvc.drop(columns=times)
differ = [c for c in a.columns if not a[c].equals(b[c])]
print(f"table: {len(a)} rows; {'equal in every value but the times' if not differ else 'differ in ' + ', '.join(differ)}")
print(f"wall_s_per_1k, pool / dvc, median over rows: {(pool['wall_s_per_1k'] / dvc['wall_s_per_1k']).median():.2f}")
EOF
echo "logs in $work"
