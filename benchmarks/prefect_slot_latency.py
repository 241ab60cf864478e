"""How long Prefect's `concurrency()` takes to grant a slot inside a flow, when the slot is free.

    PREFECT_API_URL=http://127.0.0.1:<port>/api .venv/bin/python benchmarks/prefect_slot_latency.py [--tasks 12]

Runs a flow of one-second tasks, one after another, each holding one slot of a global limit far larger
than it needs, so no acquisition ever waits for a slot. Prints the time each `concurrency()` took to enter:
what the sweep's `lease_s` column shows besides any real wait. Needs a running Prefect server.
"""

import argparse
import statistics
import time

from prefect import flow, get_client, task
from prefect.concurrency.sync import concurrency
from prefect.task_runners import ThreadPoolTaskRunner

LIMIT = "slot-latency-probe"


@task
def hold(i: int) -> float:
    t0 = time.time()
    with concurrency(LIMIT, occupy=1, strict=True):
        waited = time.time() - t0
        time.sleep(1.0)
    return waited


@flow(name="slot-latency", task_runner=ThreadPoolTaskRunner())
def probe(tasks: int) -> list[float]:
    with get_client(sync_client=True) as client:
        client.upsert_global_concurrency_limit_by_name(LIMIT, 100)
    futures = []
    for i in range(tasks):
        futures.append(hold.submit(i, wait_for=futures[-1:]))
    return [f.result() for f in futures]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=12)
    waits = probe(parser.parse_args().tasks)
    print("concurrency() entry, s: " + ", ".join(f"{w:.2f}" for w in waits))
    print(f"median {statistics.median(waits):.2f} s, max {max(waits):.2f} s, total {sum(waits):.1f} s "
          f"over {len(waits)} tasks (limit 100, never full)")
