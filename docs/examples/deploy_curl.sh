# From your backend's host; HUB is a node (or nginx), TRIO_HUB_API_KEY its key.
HUB=${HUB:-http://127.0.0.1:9000}

# Publish on a topic: every subscriber, on every node, gets {"topic", "data"}.
curl -fsS -X POST "$HUB/api/publish" \
    -H "Authorization: Bearer $TRIO_HUB_API_KEY" \
    -H "Content-Type: application/json" \
    -d '{"topic": "orders", "data": {"id": 42, "status": "shipped"}}'

# Broadcast to every client.
curl -fsS -X POST "$HUB/api/broadcast" \
    -H "Authorization: Bearer $TRIO_HUB_API_KEY" \
    -H "Content-Type: application/json" \
    -d '{"payload": "maintenance at 18:00"}'

# A wrong key publishes nothing: 401 with a JSON error.
curl -sS -o /dev/null -w '%{http_code}\n' -X POST "$HUB/api/broadcast" \
    -H "Authorization: Bearer wrong" -d '{"payload": "spam"}'
