#!/usr/bin/env python3
"""The PgQ peer: a consumer of queue `items` (filled by pgq.jsontriga, ticked by pgqd) that runs
the same one-row atomic query per event and POSTs its JSON over one keep-alive connection, then
finishes the batch. Sleeps --idle-sleep seconds when no batch is ready (as pgq's Consumer does
with its loop_delay). Stops on SIGTERM."""
import argparse, http.client, json, signal, time
import psycopg2

ap = argparse.ArgumentParser()
ap.add_argument("--dsn", required=True)
ap.add_argument("--url-port", type=int, required=True)
ap.add_argument("--idle-sleep", type=float, default=0.1)
a = ap.parse_args()
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)

db = psycopg2.connect(a.dsn)
cur = db.cursor()
cur.execute("SELECT pgq.register_consumer('items', 'peer')")
db.commit()
http_conn = http.client.HTTPConnection("127.0.0.1", a.url_port)
QUERY = "SELECT row_to_json(t)::text FROM (SELECT id, counter, payload, updated_at FROM items WHERE id = %s) t"
while running:
    cur.execute("SELECT pgq.next_batch('items', 'peer')")
    batch = cur.fetchone()[0]
    if batch is None:
        db.commit()
        time.sleep(a.idle_sleep)
        continue
    cur.execute("SELECT ev_data FROM pgq.get_batch_events(%s)", (batch,))
    events = cur.fetchall()
    for (data,) in events:
        key = json.loads(data)["id"]
        cur.execute(QUERY, (key,))
        row = cur.fetchone()
        body = (row[0] if row else "null").encode()
        while True:
            try:
                http_conn.request("POST", "/items", body=body, headers={"Content-Type": "application/json"})
                http_conn.getresponse().read()
                break
            except (http.client.HTTPException, OSError):
                http_conn.close()
                http_conn = http.client.HTTPConnection("127.0.0.1", a.url_port)
    cur.execute("SELECT pgq.finish_batch(%s)", (batch,))
    db.commit()
