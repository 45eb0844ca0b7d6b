#!/bin/bash
# Alternating off/deflate runs of one server against bench/loadgen.py, each against a
# fresh server process pinned to CPU 0 (the load generator on CPU 1). This is how the
# compression table of docs/performance.rst was measured: on a shared machine,
# alternating runs keep drift from looking like an effect.
#
#   bench/compression_ab.sh SERVER CLIENTS BATCHES PAIRS
#   bench/compression_ab.sh trio_hub 100 400 3
#   bench/compression_ab.sh websockets_asyncio 1000 100 1
#
# Prints one line per run: server, mode, N, CPU us per delivery (total, user, system),
# wire bytes per delivery, deliveries per second.
set -euo pipefail
server=$1 clients=$2 batches=$3 pairs=$4
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
for _ in $(seq "$pairs"); do
    for mode in off deflate; do
        err=$(mktemp)
        if [ "$server" = trio_hub ]; then
            PYTHONPATH=$PWD taskset -c 0 "$python" -m trio_hub serve --host 127.0.0.1 \
                --port 0 --compression "$mode" --ping-interval 0 --log-level warning 2>"$err" &
        else
            taskset -c 0 "$python" "bench/servers/$server.py" --port 0 \
                --compression "$mode" 2>"$err" &
        fi
        pid=$!
        for _ in $(seq 150); do grep -q listening "$err" && break; sleep 0.2; done
        port=$(grep -o 'ws://127.0.0.1:[0-9]*' "$err" | grep -o '[0-9]*$')
        flag=()
        [ "$mode" = deflate ] && flag=(--compression)
        taskset -c 1 "$python" bench/loadgen.py --port "$port" --clients "$clients" \
            --server-pid "$pid" "${flag[@]}" --payload words --check one \
            --min-batches "$batches" --max-batches "$batches" --seconds 0 \
            --warmup-batches 5 --timeout 120 |
            "$python" -c "import json, sys; r = json.load(sys.stdin); print('$server', '$mode', \
'N=$clients', round(r['server_us_per_delivery'], 2), round(r['server_user_us_per_delivery'], 2), \
round(r['server_system_us_per_delivery'], 2), round(r['wire_bytes_per_delivery']), \
round(r['deliveries_per_s']))"
        kill -INT "$pid"
        wait "$pid" || true
        rm -f "$err"
    done
done
