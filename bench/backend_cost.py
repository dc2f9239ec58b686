#!/usr/bin/env python3
"""Deterministic-ish cost of one UPDATE statement in the server, for bench/trigger-variants --cpu:
runs N autocommitted UPDATEs (single-row, or 1,000-row ranges) on one connection and prints the
statements per second of *backend CPU* (utime+stime of that backend, from /proc: unaffected by
other load queuing for the CPU) and the WAL bytes per statement."""
import os, random, sys
import psycopg2

port, kind, n, rows = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
c = psycopg2.connect(f"host=127.0.0.1 port={port} user=postgres dbname=postgres")
c.autocommit = True
cur = c.cursor()
cur.execute("SELECT pg_backend_pid()")
pid = cur.fetchone()[0]
def cpu():
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
rnd = random.Random(1)
sql = ("UPDATE items SET counter = counter + 1 WHERE id = %s" if kind == "single"
       else "UPDATE items SET counter = counter + 1 WHERE id BETWEEN %s AND %s + 999")
for _ in range(min(n // 10, 200)):  # warm the plan caches
    cur.execute(sql, (rnd.randint(1, rows - 1000),) * (1 if kind == "single" else 2))
cur.execute("SELECT pg_current_wal_lsn()")
lsn0 = cur.fetchone()[0]
t0 = cpu()
for _ in range(n):
    cur.execute(sql, (rnd.randint(1, rows - 1000),) * (1 if kind == "single" else 2))
t1 = cpu()
cur.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), %s)", (lsn0,))
wal = float(cur.fetchone()[0]) / n
print(f"{n / max(t1 - t0, 1e-9):.1f} {wal:.0f}")
