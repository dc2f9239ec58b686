#!/usr/bin/env python3
"""The benchmark behind bench/run (which installs packages and builds first). Prints one table.

Everything runs on this host, loopback only, against throwaway PostgreSQL instances under a temp
folder: one durable (PostgreSQL's defaults) and one with fsync, synchronous_commit and
full_page_writes off. The drains and latencies use the fsync-off instance (a durable commit here is
bounded by the disk, not by the service). Every loop is bounded in count and time. The machine may
be shared: read the ratios, which are measured side by side in the same run.
"""
import argparse, json, os, pwd, re, shutil, signal, socket, statistics, subprocess, sys, tempfile, time

import psycopg2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "bench")


def log(msg):
    print(f"\033[1m==> {msg}\033[0m", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_for(cond, timeout, step=0.05, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout}s waiting for {what}")


def pg_bindir():
    dirs = sorted(d for d in os.listdir("/usr/lib/postgresql") if os.path.isdir(f"/usr/lib/postgresql/{d}/bin"))
    return f"/usr/lib/postgresql/{dirs[-1]}/bin"


def as_pg(cmd, **kw):
    if os.getuid() == 0:
        cmd = ["runuser", "-u", "postgres", "--"] + cmd
    return subprocess.run(cmd, check=True, **kw)


class Postgres:
    def __init__(self, work, name, durable):
        self.dir = os.path.join(work, name)
        self.port = free_port()
        self.durable = durable
        os.makedirs(self.dir)
        if os.getuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
        b = pg_bindir()
        as_pg([f"{b}/initdb", "-D", f"{self.dir}/data", "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"],
              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.dir} -c max_connections=200 "
                "-c shared_buffers=256MB -c shared_preload_libraries=pg_stat_statements "
                "-c wal_level=logical -c max_wal_size=4GB")
        if not durable:
            opts += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        as_pg([f"{b}/pg_ctl", "-D", f"{self.dir}/data", "-l", f"{self.dir}/postgres.log", "-w", "-t", "60", "start", "-o", opts],
              stdout=subprocess.DEVNULL)

    def stop(self):
        subprocess.run((["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []) +
                       [f"{pg_bindir()}/pg_ctl", "-D", f"{self.dir}/data", "-m", "fast", "-w", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def dsn(self, db="postgres"):
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={db}"

    def connect(self, db="postgres", autocommit=True):
        c = psycopg2.connect(self.dsn(db))
        c.autocommit = autocommit
        return c

    def sql(self, db, text):
        c = self.connect(db)
        try:
            cur = c.cursor()
            cur.execute(text)
            return cur.fetchall() if cur.description else None
        finally:
            c.close()

    def env(self, db="postgres"):
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres", PGDATABASE=db,
                    PGOPTIONS="-c client_min_messages=warning")


ITEMS_DDL = """
CREATE TABLE {t} (id bigint PRIMARY KEY, counter bigint NOT NULL DEFAULT 0,
                  payload text NOT NULL DEFAULT repeat('x', 100), updated_at timestamptz NOT NULL DEFAULT now());
INSERT INTO {t} (id) SELECT g FROM generate_series(1, {rows}) g;
"""
QUERY = "SELECT id, counter, payload, updated_at FROM {t} WHERE id = $PRIMARY_KEY"


def publisher_config(path, pg, db, ingestor_port, tables=("items",), service=None, partitions=1, batch=False, capture=None, compression=None):
    service = service or {}
    lines = ["[database]", 'host = "127.0.0.1"', f"port = {pg.port}", 'username = "postgres"', f'database_name = "{db}"',
             "[ingestor]", f'base_url = "http://127.0.0.1:{ingestor_port}"']
    if compression:
        lines += [f'compression = "{compression}"']
    lines += ["[service]"]
    lines += [f"{k} = {v}" for k, v in service.items()]
    for t in tables:
        lines += ["[[service.watched_tables]]", f'name = "{t}"', 'change_column = "counter"',
                  f'atomic_data_query = "{QUERY.format(t=t)}"', f'publish_endpoint = "/{t}"', f"partitions = {partitions}"]
        if batch:
            lines += [f'batch_publish_endpoint = "/{t}/batch"']
        if capture:
            lines += [f'capture = "{capture}"']
    lines += ["[logging]", 'level = "warning"']
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def proc_fields(path, names):
    """The named "Name:   N kB" fields of a /proc file, in MiB (0 when absent or the process is gone)."""
    values = dict.fromkeys(names, 0.0)
    try:
        for line in open(path):
            name = line.split(":", 1)[0]
            if name in values:
                values[name] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return tuple(values[n] for n in names)


def proc_mem(pid):
    """(RSS, peak RSS) in MiB."""
    return proc_fields(f"/proc/{pid}/status", ("VmRSS", "VmHWM"))


def proc_private(pid):
    """(anonymous, PSS) in MiB: RSS also counts the binary's and the libraries' file pages, which
    every worker and the supervisor share; the anonymous pages are what one more worker costs."""
    return proc_fields(f"/proc/{pid}/smaps_rollup", ("Anonymous", "Pss"))


def proc_cpu(pid):
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return 0.0


def postgres_cpu():
    """CPU seconds of every process named postgres (the servers, their backends and workers),
    with the backends that exited meanwhile: a postmaster's reaped children's time (cutime, cstime)
    counts too (the worker's read-ahead connection closes before the drain ends)."""
    total = 0.0
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                raw = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            if raw[raw.index("(") + 1:raw.rindex(")")] == "postgres":
                f = raw.rsplit(")", 1)[1].split()
                total += (int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])) / os.sysconf("SC_CLK_TCK")
    return total


def children(pid):
    try:
        out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
        return [int(x) for x in out.split()]
    except OSError:
        return []


class Publisher:
    """The service (supervisor + workers), started on a config, stopped with SIGTERM."""

    def __init__(self, b, config, logfile):
        self.health = free_port()
        env = dict(os.environ, ATOMIC_DATA_PUBLISHER_SERVICE_HEALTH_CHECK_PORT=str(self.health),
                   ATOMIC_DATA_PUBLISHER_SERVICE_HEALTH_CHECK_ADDRESS="127.0.0.1")
        self.p = subprocess.Popen([b.publisher, "--config", config], env=env, stdout=subprocess.DEVNULL,
                                  stderr=open(logfile, "a"))

    def workers(self, n, timeout=30):
        return wait_for(lambda: (lambda c: c if len(c) >= n else None)(children(self.p.pid)), timeout, what="workers")

    def stop(self):
        if self.p.poll() is None:
            self.p.send_signal(signal.SIGTERM)
            try:
                self.p.wait(20)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()


class Bench:
    def __init__(self, a):
        self.a = a
        self.quick = a.quick
        self.markdown = a.markdown
        self.work = tempfile.mkdtemp(prefix="adp-bench.")
        os.chmod(self.work, 0o755)
        self.publisher = os.path.join(a.bin, "atomic-data-publisher")
        self.procs = []
        self.pgs = []
        self.rows = []  # (section, figure, ours, peer, limit, unit, note)
        self.results = {}

    # ---------- infrastructure ----------
    def start(self):
        log(f"PostgreSQL instances, nginx and the recording ingestor under {self.work}")
        self.durable = Postgres(self.work, "pg-durable", True)
        self.fast = Postgres(self.work, "pg-nofsync", False)
        self.pgs = [self.durable, self.fast]
        for db in ("adp", "peer", "idle"):
            self.fast.sql("postgres", f"CREATE DATABASE {db}")
        for db in ("adp", "peer") if not self.a.only or "batch" in self.a.only else ():
            self.fast.sql(db, ITEMS_DDL.format(t="items", rows=self.a.keys))
            self.fast.sql(db, "VACUUM ANALYZE items")
            self.fast.sql(db, "CREATE EXTENSION pg_stat_statements")
        if not self.a.only or "batch" in self.a.only:
            self.fast.sql("peer", "CREATE EXTENSION pgq")
        self.start_nginx()
        port_file = os.path.join(self.work, "ingestor.port")
        self.procs.append(subprocess.Popen([sys.executable, os.path.join(BENCH, "ingestor.py"), "--port-file", port_file]))
        self.rec_port = int(wait_for(lambda: os.path.exists(port_file) and open(port_file).read(), 10, what="ingestor"))

    def start_nginx(self):
        self.nginx_port = free_port()
        d = os.path.join(self.work, "nginx")
        os.makedirs(d)
        self.access_log = os.path.join(d, "access.log")
        conf = os.path.join(d, "nginx.conf")
        with open(conf, "w") as f:
            f.write(f"""daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log; user root;
events {{ worker_connections 1024; }}
http {{
  log_format arrival '$msec $status $request_length $http_content_length';
  access_log {self.access_log} arrival buffer=256k flush=200ms;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  keepalive_requests 10000000; client_body_buffer_size 1m;
  server {{ listen 127.0.0.1:{self.nginx_port} backlog=1024; location / {{ return 204; }} }}
}}
""")
        self.procs.append(subprocess.Popen(["nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        wait_for(lambda: subprocess.run(["curl", "-s", "-o", "/dev/null", "-X", "POST", f"http://127.0.0.1:{self.nginx_port}/"]).returncode == 0,
                 10, what="nginx")

    def cleanup(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(10)
                except subprocess.TimeoutExpired:
                    p.kill()
        for pg in self.pgs:
            pg.stop()
        if not self.a.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def log_offset(self):
        return os.path.getsize(self.access_log) if os.path.exists(self.access_log) else 0

    def arrivals_since(self, offset):
        time.sleep(0.5)  # nginx flushes its log buffer every 200 ms
        with open(self.access_log) as f:
            f.seek(offset)
            return [float(line.split()[0]) for line in f if line.strip()]

    def request_bytes_since(self, offset):
        """Bytes on the wire of the requests logged since `offset`: request line and headers
        ($request_length: nginx answers 204 without reading the body, so it counts none of it)
        plus the body (its Content-Length)."""
        total = 0
        with open(self.access_log) as f:
            f.seek(offset)
            for line in f:
                fields = line.split()
                if len(fields) > 3:
                    total += int(fields[2]) + (int(fields[3]) if fields[3].isdigit() else 0)
        return total

    def add(self, section, figure, ours, peer=None, limit=None, unit="", note="", higher_is_better=True):
        self.rows.append((section, figure, ours, peer, limit, unit, note, higher_is_better))
        log(f"   {section}: {figure}: ours {ours}, peer {peer}, limit {limit} {unit} {note}")

    # ---------- the raw limits ----------
    def limits(self):
        log("limits: wrk POSTs against nginx answering 204; the atomic query alone (pgbench, pipelined)")
        lua = os.path.join(self.work, "post.lua")
        body = json.dumps({"id": "public.items:1:1", "table_name": "items", "primary_key": "1", "atomic_data":
                           {"id": 1, "counter": 1, "payload": "x" * 100, "updated_at": "2026-11-29T12:00:00Z"}})
        with open(lua, "w") as f:
            f.write(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\nwrk.headers["Content-Type"] = "application/json"\n')
        secs = 3 if self.quick else 8
        out = subprocess.run(["wrk", "-t1", "-c8", f"-d{secs}s", "-s", lua, f"http://127.0.0.1:{self.nginx_port}/items"],
                             capture_output=True, text=True, timeout=secs + 30).stdout
        self.wrk = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
        self.add("limits", "POSTs/s, wrk -t1 -c8 against nginx 204", self.wrk, unit="/s")
        script = os.path.join(self.work, "query.sql")
        with open(script, "w") as f:
            f.write(f"\\set id random(1, {self.a.keys})\n\\startpipeline\n")
            for _ in range(100):
                f.write("SELECT id, counter, payload, updated_at FROM items WHERE id = :id;\n")
            f.write("\\endpipeline\n")
        out = subprocess.run(["pgbench", "-n", "-M", "prepared", "-c", "1", "-T", str(secs), "-f", script],
                             env=self.fast.env("adp"), capture_output=True, text=True, timeout=secs + 60).stdout
        self.query_rate = float(re.search(r"tps = ([\d.]+)", out).group(1)) * 100
        self.add("limits", "atomic query alone, 1 connection pipelined 100 deep", self.query_rate, unit="/s")
        self.limit = min(self.wrk, self.query_rate)
        # libcurl alone: the same POSTs through curl_multi from a C loop, its CPU per request (the
        # floor under the worker's CPU per change while it uses libcurl).
        floor = os.path.join(self.work, "libcurl-floor")
        cc = shutil.which("clang") or shutil.which("cc") or "gcc"
        flags = subprocess.run(["pkg-config", "--cflags", "--libs", "libcurl"], capture_output=True, text=True, check=True).stdout.split()
        subprocess.run([cc, "-O2", "-o", floor, os.path.join(BENCH, "libcurl-floor.c")] + flags, check=True)
        self.curl_floor = {}
        for inflight in (5, 16):
            out = subprocess.run([floor, f"http://127.0.0.1:{self.nginx_port}/items", str(20000 if self.quick else 100000), str(inflight)],
                                 capture_output=True, text=True, timeout=300, check=True).stdout
            self.curl_floor[inflight] = float(re.search(r"total ([\d.]+)", out).group(1))
            self.add("limits", f"libcurl alone: CPU per request (user + sys), {inflight} in flight, C loop", self.curl_floor[inflight],
                     unit="us", higher_is_better=False, note=out.strip())

    # ---------- our drains ----------
    def setup_ours(self):
        cfg = publisher_config(os.path.join(self.work, "ours.toml"), self.fast, "adp", self.nginx_port)
        subprocess.run([self.publisher, "--config", cfg, "setup"], check=True, stdout=subprocess.DEVNULL)

    def commit_distinct(self, db, n):
        self.fast.sql(db, f"UPDATE items SET counter = counter + 1 WHERE id <= {n}")

    def commit_over_keys(self, db, n, keys):
        self.fast.sql(db, f"DO $$ BEGIN FOR i IN 1..{n} LOOP UPDATE items SET counter = counter + 1 WHERE id = 1 + (i % {keys}); END LOOP; END $$")

    def backlog(self, db, table):
        return self.fast.sql(db, f"SELECT count(*) FROM {table}")[0][0]

    def drain_ours(self, label, n, service, commit, measure_rss=False, partitions=1, batch=False, compression=None):
        cfg = publisher_config(os.path.join(self.work, f"drain-{label}.toml"), self.fast, "adp", self.nginx_port, service=service,
                               partitions=partitions, batch=batch, compression=compression)
        commit()
        assert self.backlog("adp", "items_changes") >= n * 0.99, "backlog not committed"
        off = self.log_offset()
        pg0 = postgres_cpu()
        pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
        try:
            workers = pub.workers(partitions)
            worker = workers[0]
            if measure_rss:
                time.sleep(0.2)
            wait_for(lambda: self.backlog("adp", "items_changes") == 0, 300, step=0.5, what=f"drain {label}")  # the rate comes from nginx's log; a rarer count(*) leaves PostgreSQL's CPU to the drain
            mem = proc_mem(pub.p.pid), proc_mem(worker)
            # The workers started with the drain: their whole CPU is the drain's (and start-up's).
            cpu = sum(proc_cpu(w) for w in workers) / n * 1e6, (postgres_cpu() - pg0) / n * 1e6
        finally:
            pub.stop()
        t = self.arrivals_since(off)
        rate = n / (max(t) - min(t)) if len(t) > 1 else 0
        return rate, len(t), mem, cpu, self.request_bytes_since(off) / n

    # ---------- batched delivery ----------
    def gzip_rows(self, batch, gzipped):
        """Batch mode with ingestor.compression = "gzip" against batch mode without, from drains of the same run."""
        n = self.a.distinct
        med = lambda rs, f: statistics.median(f(r) for r in rs)
        self.add("batch", f"{n:,} distinct keys, batch mode with gzip", med(gzipped, lambda r: r[0]), med(batch, lambda r: r[0]),
                 unit="documents/s", note="peer column: batch mode without compression; runs " + "/".join(f"{r[0]:.0f}" for r in gzipped))
        self.add("batch", "bytes on the wire per document (request line, headers, body), batch mode with gzip",
                 med(gzipped, lambda r: r[4]), med(batch, lambda r: r[4]), unit="B", higher_is_better=False,
                 note="peer column: without compression")
        self.add("batch", "the worker's CPU per document, batch mode with gzip", med(gzipped, lambda r: r[3][0]),
                 med(batch, lambda r: r[3][0]), unit="us", higher_is_better=False,
                 note="peer column: without compression; runs " + "/".join(f"{r[3][0]:.1f}" for r in gzipped))

    def gzip_levels(self):
        """zlib (the library the worker links) at levels 1, 6 and 9 on a batch body like the drains':
        100 documents of the benchmark table; bytes and CPU per document, side by side."""
        import zlib
        docs = []
        for i in range(1, 101):
            docs.append(json.dumps({"id": f"public.items:16384:{1000 + i}", "table_name": "items", "schema": "public",
                                    "primary_key": str(i), "operation": "update", "change_column_value": str(i),
                                    "changed_at": f"2026-12-07T10:00:{i % 60:02d}.{i:06d}Z",
                                    "atomic_data": [{"id": i, "counter": i, "payload": "x" * 100,
                                                     "updated_at": f"2026-12-07T10:00:{i % 60:02d}.{i:06d}+00:00"}],
                                    "metadata": {"service_name": "atomic-data-publisher", "version": "0.1.0",
                                                 "timestamp": "2026-12-07T10:00:01.000Z", "retry_count": 0, "publisher_epoch": 1}},
                                   separators=(",", ":")))
        body = ("[" + ",".join(docs) + "]").encode()
        reps = 200 if self.quick else 1000
        result = {}
        for level in (1, 6, 9):
            start = time.process_time()
            for _ in range(reps):
                c = zlib.compressobj(level, zlib.DEFLATED, 31)
                out = c.compress(body) + c.flush()
            result[level] = (len(out) / 100, (time.process_time() - start) / reps / 100 * 1e6)
        for level in (1, 6, 9):
            self.add("batch", f"zlib level {level} on a 100-document batch body: bytes, CPU per document", result[level][0], len(body) / 100,
                     unit="B", higher_is_better=False, note=f"{result[level][1]:.2f} us CPU per document; peer column: uncompressed")

    def batch_rows(self, single, batch, peer):
        """Batch mode against single-document mode and PgQ, from drains of the same run."""
        n = self.a.distinct
        med = lambda rs, f: statistics.median(f(r) for r in rs)
        rate, single_rate, peer_rate = med(batch, lambda r: r[0]), med(single, lambda r: r[0]), med(peer, lambda r: r[0])
        runs = lambda rs: "/".join(f"{r[0]:.0f}" for r in rs)
        self.add("batch", f"{n:,} distinct keys, batch mode (defaults: 100 documents a request)", rate, peer_rate,
                 getattr(self, "limit", None), "documents/s",
                 note=f"runs {runs(batch)}; {rate / single_rate:.1f}x single-document mode ({single_rate:.0f}/s, runs {runs(single)}), "
                      f"{rate / peer_rate:.1f}x PgQ; requests {'/'.join(str(r[1]) for r in batch)} (single {'/'.join(str(r[1]) for r in single)})")
        self.add("batch", f"{n:,} distinct keys: the worker's CPU per document, batch mode", med(batch, lambda r: r[3][0]),
                 med(single, lambda r: r[3][0]), unit="us", higher_is_better=False,
                 note="peer column: single-document mode in the same run; runs " + "/".join(f"{r[3][0]:.1f}" for r in batch))

    def batch_alone(self):
        """--only batch: the batch-mode drain, single-document mode and PgQ, nothing else."""
        n, reps = self.a.distinct, (1 if self.quick else 2)
        self.setup_ours()
        self.start_pgqd()
        log(f"batch: {n:,} distinct keys drained in batch mode, single-document mode and by PgQ, x{reps}")
        runs = {"single": [], "batch": [], "gzip": [], "peer": []}
        for _ in range(reps):
            runs["single"].append(self.drain_ours("defaults", n, {}, lambda: self.commit_distinct("adp", n)))
            runs["batch"].append(self.drain_ours("batch", n, {}, lambda: self.commit_distinct("adp", n), batch=True))
            runs["gzip"].append(self.drain_ours("batch-gzip", n, {}, lambda: self.commit_distinct("adp", n), batch=True, compression="gzip"))
            runs["peer"].append(self.drain_peer("distinct", n, lambda: self.commit_distinct("peer", n)))
        self.batch_rows(runs["single"], runs["batch"], runs["peer"])
        self.gzip_rows(runs["batch"], runs["gzip"])
        self.gzip_levels()

    # ---------- the PgQ peer ----------
    def start_pgqd(self):
        ini = os.path.join(self.work, "pgqd.ini")
        with open(ini, "w") as f:
            f.write(f"""[pgqd]
base_connstr = host=127.0.0.1 port={self.fast.port} user=postgres
initial_database = peer
database_list = peer
logfile = {self.work}/pgqd.log
pidfile = {self.work}/pgqd.pid
""")
        self.fast.sql("peer", "SELECT pgq.create_queue('items')")
        self.fast.sql("peer", "CREATE TRIGGER cap AFTER INSERT OR DELETE OR UPDATE OF counter, id ON items FOR EACH ROW EXECUTE FUNCTION pgq.jsontriga('items')")
        self.procs.append(subprocess.Popen(["pgqd", ini], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

    def start_consumer(self, port):
        p = subprocess.Popen([sys.executable, os.path.join(BENCH, "pgq_consumer.py"), "--dsn", self.fast.dsn("peer"), "--url-port", str(port)])
        self.procs.append(p)
        wait_for(lambda: self.fast.sql("peer", "SELECT count(*) FROM pgq.get_consumer_info('items')")[0][0] > 0, 20, what="consumer")
        return p

    def stop_proc(self, p):
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
        self.procs.remove(p)

    def peer_pending(self):
        r = self.fast.sql("peer", "SELECT coalesce(sum(pending_events), 0), coalesce(max(lag), '0') FROM pgq.get_consumer_info('items')")
        return r[0][0]

    def drain_peer(self, label, n, commit):
        off = self.log_offset()
        consumer = self.start_consumer(self.nginx_port)
        try:
            commit()
            start = time.time()
            cpu0, pg0 = proc_cpu(consumer.pid), postgres_cpu()
            # Done when nginx has seen n requests (pgq ticks lag the commit, so count arrivals).
            wait_for(lambda: len(self.arrivals_since(off)) >= n, 400, step=0.5, what=f"peer drain {label}")
            cpu = (proc_cpu(consumer.pid) - cpu0) / n * 1e6, (postgres_cpu() - pg0) / n * 1e6
        finally:
            self.stop_proc(consumer)
        t = self.arrivals_since(off)
        return n / (max(t) - min(t)), len(t), None, cpu

    # ---------- latency ----------
    def paced_writer(self, db, seconds, rate, first_counter, pg=None):
        """UPDATE one distinct key per change at `rate`/s, counter = a unique number; returns {counter: commit time}."""
        c = (pg or self.fast).connect(db)
        cur = c.cursor()
        commits = {}
        n = int(seconds * rate)
        start = time.time()
        for i in range(n):
            due = start + i / rate
            d = due - time.time()
            if d > 0:
                time.sleep(d)
            counter = first_counter + i
            key = 1 + (counter % self.a.keys)
            cur.execute("UPDATE items SET counter = %s WHERE id = %s", (counter, key))
            commits[counter] = time.time()
        c.close()
        return commits

    def dump_arrivals(self):
        import urllib.request
        data = urllib.request.urlopen(f"http://127.0.0.1:{self.rec_port}/_dump", timeout=10).read().decode()
        return {int(c): float(t) for t, c in (l.split() for l in data.splitlines()) if int(c) >= 0}

    def latencies(self, commits, wait=3.0):
        deadline = time.time() + wait + 10
        arrived = {}
        while time.time() < deadline:
            time.sleep(0.5)
            arrived.update(self.dump_arrivals())
            if all(k in arrived for k in commits):
                break
        lat = sorted((arrived[k] - t) * 1000 for k, t in commits.items() if k in arrived)
        missing = sum(1 for k in commits if k not in arrived)
        return lat, missing

    @staticmethod
    def pct(xs, p):
        if not xs:
            return float("nan")
        return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]

    def latency_run(self, who, db, seconds, idle_n, idle_samples, counter_base):
        self.dump_arrivals()
        commits = self.paced_writer(db, seconds, 1000, counter_base)
        lat, missing = self.latencies(commits)
        steady = {p: self.pct(lat, p) for p in (50, 95, 99)}
        steady["max"] = lat[-1] if lat else float("nan")
        steady["missing"] = missing
        idle = []
        for s in range(idle_samples):
            time.sleep(idle_n)
            c = self.paced_writer(db, 0.001, 1000, counter_base + 10_000_000 + s)
            lat1, _ = self.latencies(c, wait=idle_n + 5)
            if lat1:
                idle.append(lat1[0])
        return steady, idle

    # ---------- pgbench writers ----------
    def trigger_variants(self, variants):
        """bench/trigger-variants' pgbench rounds (4 clients, single-row and 1,000-row UPDATEs,
        durable and fsync off, each variant next to its own no-capture run): {(mode, script,
        variant): [(tps, no-capture tps), ...]} in round order."""
        secs = 5 if self.quick else 12
        reps = 1 if self.quick else 2
        # A copy: bash reads a script as it runs, so an edit to the checkout would break this run.
        os.makedirs(os.path.join(self.work, "bench"), exist_ok=True)
        script = os.path.join(self.work, "bench", "trigger-variants")
        shutil.copy(os.path.join(BENCH, "trigger-variants"), script)
        os.makedirs(os.path.join(self.work, "dev", "lib"), exist_ok=True)
        shutil.copy(os.path.join(ROOT, "dev", "lib", "common.sh"), os.path.join(self.work, "dev", "lib", "common.sh"))
        out = subprocess.run([script, "--seconds", str(secs), "--reps", str(reps),
                              "--variants", variants, "--multi-variants", variants, "--raw"],
                             env=dict(os.environ, ADP_BIN=self.a.bin), capture_output=True, text=True, timeout=3600)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            raise RuntimeError("bench/trigger-variants failed")
        res = {}
        for line in out.stdout.splitlines():
            mode, script, v, r, base = line.split()
            res.setdefault((mode, script, v), []).append((float(r), float(base)))
        return res

    def writers(self):
        log("writer throughput: pgbench, no trigger / ours (as setup installs it) / pgq.jsontriga")
        res = self.trigger_variants("setup pgq")
        for script, label in (("single", "single-row UPDATE"), ("multi", "1,000-row UPDATE")):
            for mode, mlabel in (("durable", "durable"), ("nofsync", "fsync off")):
                ours = res.get((mode, script, "setup"), [])
                peer = res.get((mode, script, "pgq"), [])
                base = [b for _, b in ours + peer]
                o = statistics.median(r for r, _ in ours) if ours else float("nan")
                p = statistics.median(r for r, _ in peer) if peer else float("nan")
                bb = statistics.median(base) if base else float("nan")
                # Rounds in order (trigger-variants reverses the variants every other round):
                # ours against PgQ's in the same round, a few seconds apart, is steadier than
                # either against its own no-trigger run.
                self.add("writers", f"pgbench {label}, 4 clients, {mlabel} (no trigger = limit)", o, p, bb, "tps",
                         note="ratios per round: ours " + "/".join(f"{r/b:.2f}" for r, b in ours) +
                              ", pgq " + "/".join(f"{r/b:.2f}" for r, b in peer) +
                              "; ours/pgq " + "/".join(f"{a/b:.2f}" for (a, _), (b, _) in zip(ours, peer)))

    # ---------- WAL capture ----------
    def wal(self):
        """capture = "wal" against capture = "trigger" (and PgQ for the writers), side by side."""
        self.wal_writers()
        self.wal_drain_latency()

    def wal_writers(self):
        log("WAL capture, writers: pgbench, no capture / WAL mode (the service streaming) / our trigger / pgq.jsontriga")
        res = self.trigger_variants("wal setup pgq")
        for script, label in (("single", "single-row UPDATE"), ("multi", "1,000-row UPDATE")):
            for mode, mlabel in (("durable", "durable"), ("nofsync", "fsync off")):
                wal, trig, pgq = (res.get((mode, script, v), []) for v in ("wal", "setup", "pgq"))
                med = lambda xs: statistics.median(r for r, _ in xs) if xs else float("nan")
                base = [b for _, b in wal + trig + pgq]
                per_round = lambda xs: "/".join(f"{r / b:.2f}" for r, b in xs)
                between = lambda xs, ys: "/".join(f"{a / b:.2f}" for (a, _), (b, _) in zip(xs, ys))
                self.add("wal", f"writers: pgbench {label}, 4 clients, {mlabel}, WAL mode (peer: trigger mode; no capture = limit)",
                         med(wal), med(trig), statistics.median(base) if base else float("nan"), "tps",
                         note=f"ratios to no capture per round: wal {per_round(wal)}, trigger {per_round(trig)}, pgq {per_round(pgq)}; "
                              f"wal/trigger {between(wal, trig)}, wal/pgq {between(wal, pgq)}; pgq {med(pgq):.0f} tps")

    def wal_drain(self, db, capture, n):
        """The service running and idle, n distinct keys updated in one transaction: n / (commit
        to the n-th arrival at nginx), the same clock for both capture modes (in WAL mode the keys
        reach T_changes only once the stream has decoded them). Also the worker's and PostgreSQL's
        CPU per change over that time."""
        cfg = publisher_config(os.path.join(self.work, f"wal-{capture}.toml"), self.fast, db, self.nginx_port, capture=capture)
        pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
        try:
            worker = pub.workers(1)[0]
            if capture == "wal":
                wait_for(lambda: self.fast.sql(db, "SELECT count(*) FROM pg_replication_slots WHERE active AND database = current_database()")[0][0] == 1,
                         30, what="the WAL stream")
            time.sleep(1)
            off = self.log_offset()
            cpu0, pg0 = proc_cpu(worker), postgres_cpu()
            start = time.time()
            self.commit_distinct(db, n)
            committed = time.time()
            wait_for(lambda: len(self.arrivals_since(off)) >= n, 300, step=0.5, what=f"drain, capture = {capture}")
            cpu = (proc_cpu(worker) - cpu0) / n * 1e6, (postgres_cpu() - pg0) / n * 1e6
        finally:
            pub.stop()
        t = self.arrivals_since(off)
        return n / (max(t) - committed), n / (max(t) - min(t)), cpu, committed - start

    def wal_drain_latency(self):
        n, reps = self.a.distinct, (1 if self.quick else 2)
        dbs = {"trigger": "wal_trigger", "wal": "wal_wal"}
        for pg in (self.fast, self.durable):
            for capture, db in dbs.items():
                pg.sql("postgres", f"CREATE DATABASE {db}")
                pg.sql(db, ITEMS_DDL.format(t="items", rows=self.a.keys))
                pg.sql(db, "VACUUM ANALYZE items")
                cfg = publisher_config(os.path.join(self.work, f"wal-{capture}.toml"), pg, db, self.nginx_port, capture=capture)
                subprocess.run([self.publisher, "--config", cfg, "setup"], check=True, stdout=subprocess.DEVNULL)
        log(f"WAL capture: {n:,} distinct keys committed while the service runs, WAL mode and trigger mode alternated, x{reps}")
        runs = {"trigger": [], "wal": []}
        for rep in range(reps):
            for capture in (("wal", "trigger") if rep % 2 else ("trigger", "wal")):
                runs[capture].append(self.wal_drain(dbs[capture], capture, n))
        med = lambda c, i: statistics.median(r[i] for r in runs[c])
        fmt = lambda c, i: "/".join(f"{r[i]:.0f}" for r in runs[c])
        self.add("wal", f"drain: {n:,} distinct keys, commit to the last arrival, defaults, WAL mode (peer: trigger mode)",
                 med("wal", 0), med("trigger", 0), getattr(self, "limit", None), "changes/s",
                 note=f"runs {fmt('wal', 0)}, trigger {fmt('trigger', 0)}; first to last arrival {fmt('wal', 1)}, trigger {fmt('trigger', 1)}; "
                      f"the UPDATE took {statistics.median(r[3] for r in runs['wal']):.1f} s, trigger {statistics.median(r[3] for r in runs['trigger']):.1f} s")
        self.add("wal", f"drain: {n:,} distinct keys: the worker's CPU per change, WAL mode (peer: trigger mode)",
                 statistics.median(r[2][0] for r in runs["wal"]), statistics.median(r[2][0] for r in runs["trigger"]), unit="us",
                 higher_is_better=False, note="the stream's decoding and INSERTs included")
        self.add("wal", f"drain: {n:,} distinct keys: PostgreSQL's CPU per change (all its processes), WAL mode (peer: trigger mode)",
                 statistics.median(r[2][1] for r in runs["wal"]), statistics.median(r[2][1] for r in runs["trigger"]), unit="us",
                 higher_is_better=False, note="the writer's UPDATE, the walsender and the stream's INSERTs included")
        secs = 10 if self.quick else 30
        log(f"WAL capture: {secs}s at 1,000 changes/s, commit to arrival, trigger mode then WAL mode, fsync off then durable")
        for pg, label in ((self.fast, "fsync off"), (self.durable, "durable")):
            lat = {}
            for i, (capture, db) in enumerate(dbs.items()):
                cfg = publisher_config(os.path.join(self.work, f"wal-lat-{capture}.toml"), pg, db, self.rec_port, capture=capture)
                pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
                try:
                    pub.workers(1)
                    if capture == "wal":
                        wait_for(lambda: pg.sql(db, "SELECT count(*) FROM pg_replication_slots WHERE active AND database = current_database()")[0][0] == 1,
                                 30, what="the WAL stream")
                    time.sleep(1)
                    self.dump_arrivals()
                    got, missing = self.latencies(self.paced_writer(db, secs, 1000, 400_000_000 + i * 10_000_000, pg))
                    lat[capture] = {p: self.pct(got, p) for p in (50, 99)}
                    lat[capture]["max"], lat[capture]["missing"] = (got[-1] if got else float("nan")), missing
                finally:
                    pub.stop()
            for p in (50, 99, "max"):
                self.add("wal", f"latency: commit to arrival at 1,000/s, {label}, {'p' + str(p) if p != 'max' else 'max'}, WAL mode (peer: trigger mode)",
                         lat["wal"][p], lat["trigger"][p], unit="ms", higher_is_better=False,
                         note=f"missing wal {lat['wal']['missing']}, trigger {lat['trigger']['missing']}" if p == "max" else "")
            # The slot would hold WAL back for the rest of the run.
            cfg = publisher_config(os.path.join(self.work, "wal-teardown.toml"), pg, dbs["wal"], self.nginx_port, capture="wal")
            subprocess.run([self.publisher, "--config", cfg, "teardown"], check=True, stdout=subprocess.DEVNULL)

    # ---------- idle cost ----------
    def idle_tables(self, n=10):
        log(f"idle cost: {n} watched tables, no changes")
        tables = [f"idle{i}" for i in range(n)]
        for t in tables:
            self.fast.sql("idle", ITEMS_DDL.format(t=t, rows=10))
            self.fast.sql("idle", f"VACUUM ANALYZE {t}")
        self.fast.sql("idle", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        cfg = publisher_config(os.path.join(self.work, "idle.toml"), self.fast, "idle", self.nginx_port, tables=tables)
        pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
        try:
            ws = pub.workers(n)
            time.sleep(3 if self.quick else 10)
            secs = 10 if self.quick else 30
            q = ("SELECT coalesce(sum(s.calls), 0) FROM pg_stat_statements s JOIN pg_database d ON d.oid = s.dbid "
                 "WHERE d.datname = 'idle'")
            x = "SELECT sum(xact_commit + xact_rollback) FROM pg_stat_database WHERE datname = 'idle'"
            c0, x0 = self.fast.sql("idle", q)[0][0], self.fast.sql("idle", x)[0][0]
            cpu0 = sum(proc_cpu(p) for p in ws + [pub.p.pid])
            time.sleep(secs)
            c1, x1 = self.fast.sql("idle", q)[0][0], self.fast.sql("idle", x)[0][0]
            cpu1 = sum(proc_cpu(p) for p in ws + [pub.p.pid])
            top = self.fast.sql("idle", "SELECT calls, left(regexp_replace(query, '\\s+', ' ', 'g'), 60) FROM pg_stat_statements s "
                                "JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'idle' ORDER BY calls DESC LIMIT 4")
        finally:
            pub.stop()
        # our own two reads per sample are excluded (2 statements, 2 transactions, at each end)
        stmts = (float(c1 - c0) - 2) / secs
        xacts = (float(x1 - x0) - 2) / secs
        self.add("idle", f"statements/s, {n} idle tables (pg_stat_statements)", stmts, unit="/s", higher_is_better=False,
                 note="top: " + "; ".join(f"{c}x {q}" for c, q in top))
        self.add("idle", f"transactions/s, {n} idle tables (pg_stat_database)", xacts, unit="/s", higher_is_better=False)
        self.add("idle", f"CPU of supervisor + {n} workers, % of one core", (cpu1 - cpu0) / secs * 100, unit="%", higher_is_better=False)

    # ---------- first change after a long idle ----------
    def idle_wakeup(self):
        """Default settings, n watched tables: after `idle` s without changes, one change per table
        (50 ms apart), commit to arrival; `rounds` times. Every sample is a first change after idle."""
        n, idle, rounds = (5, 10, 2) if self.quick else (20, 60, 3)
        log(f"wake-up: first change after {idle}s idle, {n} tables x {rounds} rounds, default settings")
        tables = [f"wake{i}" for i in range(n)]
        self.fast.sql("postgres", "CREATE DATABASE wake")
        for t in tables:
            self.fast.sql("wake", ITEMS_DDL.format(t=t, rows=10))
        cfg = publisher_config(os.path.join(self.work, "wake.toml"), self.fast, "wake", self.rec_port, tables=tables)
        pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
        lat, missing = [], 0
        try:
            pub.workers(n)
            c = self.fast.connect("wake")
            cur = c.cursor()
            for r in range(rounds):
                self.dump_arrivals()
                time.sleep(idle)
                commits = {}
                for i, t in enumerate(tables):
                    counter = 300_000_000 + r * 1000 + i
                    cur.execute(f"UPDATE {t} SET counter = %s WHERE id = 1", (counter,))
                    commits[counter] = time.time()
                    time.sleep(0.05)
                got, miss = self.latencies(commits, wait=15)
                lat += got
                missing += miss
            c.close()
        finally:
            pub.stop()
        lat.sort()
        spread = f"p90 {self.pct(lat, 90):.1f}, p95 {self.pct(lat, 95):.1f}, over 10 ms: {sum(x > 10 for x in lat)}, over 50 ms: {sum(x > 50 for x in lat)}"
        for p in (50, 99):
            self.add("latency", f"first change after {idle}s idle, p{p} ({len(lat)} samples, {n} tables, defaults)", self.pct(lat, p),
                     unit="ms", higher_is_better=False, note=f"missing {missing}; {spread}" if p == 99 else "")
        self.add("latency", f"first change after {idle}s idle, max", lat[-1] if lat else float("nan"), unit="ms", higher_is_better=False)

    def memory_alone(self):
        self.fast.sql("adp", ITEMS_DDL.format(t="items", rows=self.a.keys))
        self.fast.sql("adp", "VACUUM ANALYZE items")
        self.setup_ours()
        self.memory()

    def memory(self):
        a = self.a
        """Memory: idle, then while and after draining a large backlog, at batch 5000 and at the defaults (and the drains' times)."""
        for label, service, batch in (("batch 5000, 16 in flight", {"batch_size": 5000, "max_concurrent_publishes": 16}, False),
                                      ("batch 5000, 16 in flight, batch mode", {"batch_size": 5000, "max_concurrent_publishes": 16}, True),
                                      ("defaults (batch 100, 5 in flight)", {}, False)):
            log(f"memory: supervisor and worker idle, then during and after a large drain ({label})")
            cfg = publisher_config(os.path.join(self.work, "mem.toml"), self.fast, "adp", self.nginx_port, service=service, batch=batch)
            pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
            try:
                worker = pub.workers(1)[0]
                time.sleep(2)
                idle_sup, idle_w = proc_mem(pub.p.pid), proc_mem(worker)
                idle_private = proc_private(worker)
            finally:
                pub.stop()
            big = a.big
            # `big` changes, committed while the service is stopped: whole-table UPDATE rounds of the
            # watched table, one transaction each; then the service starts and drains them.
            rounds = max(1, -(-big // a.keys))
            for _ in range(rounds):
                self.fast.sql("adp", f"UPDATE items SET counter = counter + 1 WHERE id <= {min(big, a.keys)}")
            committed = self.backlog("adp", "items_changes")
            started = time.time()
            pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
            try:
                worker = pub.workers(1)[0]
                samples, anon = [], []
                def drained():
                    samples.append(proc_mem(worker)[0])
                    anon.append(proc_private(worker)[0])
                    return self.backlog("adp", "items_changes") == 0
                wait_for(drained, 1800, step=0.5, what="large drain")
                drain_s = time.time() - started
                after_sup, after_w = proc_mem(pub.p.pid), proc_mem(worker)
            finally:
                pub.stop()
            self.add("memory", f"supervisor RSS after the drain, {label}", after_sup[0], unit="MiB", higher_is_better=False,
                     note=f"idle {idle_sup[0]:.1f}, peak {after_sup[1]:.1f}")
            third = max(1, len(samples) // 3)
            self.add("memory", f"worker RSS after a {committed:,}-change drain, {label}", after_w[0], unit="MiB",
                     higher_is_better=False,
                     note=f"idle {idle_w[0]:.1f}, peak {after_w[1]:.1f}; mean in the drain's thirds "
                          + "/".join(f"{statistics.mean(samples[i:i + third]):.1f}" for i in range(0, third * 3, third))
                          + f"; anonymous: idle {idle_private[0]:.1f}, thirds "
                          + "/".join(f"{statistics.mean(anon[i:i + third]):.1f}" for i in range(0, third * 3, third))
                          + f", peak {max(anon):.1f}; PSS idle {idle_private[1]:.1f}")
            self.add("drain", f"backlog of {committed:,} changes ({rounds} updates of {min(big, a.keys):,} keys), {label}",
                     committed / drain_s if drain_s > 0 else 0, unit="changes/s", note=f"{drain_s:.1f} s")


    # ---------- the run ----------
    def run(self):
        a = self.a
        self.load0 = os.getloadavg()[0]
        if a.only:
            self.start()
            for section in a.only.split(","):
                {"wake": self.idle_wakeup, "idle": self.idle_tables, "memory": self.memory_alone, "batch": self.batch_alone,
                 "wal": self.wal}[section]()
            self.print_table()
            return
        self.start()
        self.limits()
        self.setup_ours()
        n, reps = a.distinct, (1 if self.quick else 2)

        # Our service and the peer, alternated per repetition so both see the same machine.
        self.start_pgqd()
        drains = {k: [] for k in ("def", "part4", "tuned", "over", "peer", "peer_over", "batch")}
        mem = {}
        log(f"drains: {n:,} distinct keys (defaults; batch 5000 / 16 in flight), {a.changes} changes over {a.over_keys} keys; same for the PgQ peer")
        for rep in range(reps):
            r = self.drain_ours("defaults", n, {}, lambda: self.commit_distinct("adp", n))
            drains["def"].append(r)
            r = self.drain_ours("partitions4", n, {}, lambda: self.commit_distinct("adp", n), partitions=4)
            drains["part4"].append(r)
            r = self.drain_peer("distinct", n, lambda: self.commit_distinct("peer", n))
            drains["peer"].append(r)
            r = self.drain_ours("batch", n, {}, lambda: self.commit_distinct("adp", n), batch=True)
            drains["batch"].append(r)
            r = self.drain_ours("tuned", n, {"batch_size": 5000, "max_concurrent_publishes": 16},
                                lambda: self.commit_distinct("adp", n))
            drains["tuned"].append(r)
            r = self.drain_ours("over", a.changes, {}, lambda: self.commit_over_keys("adp", a.changes, a.over_keys))
            drains["over"].append(r)
            r = self.drain_peer("over", a.changes, lambda: self.commit_over_keys("peer", a.changes, a.over_keys))
            drains["peer_over"].append(r)
        peer = statistics.median(r[0] for r in drains["peer"])
        peer_over = statistics.median(r[0] for r in drains["peer_over"])
        fmt = lambda rs: "/".join(f"{r[0]:.0f}" for r in rs)
        self.add("drain", f"{n:,} distinct keys, defaults (batch 100, 5 in flight)", statistics.median(r[0] for r in drains["def"]),
                 peer, self.limit, "changes/s", note=f"runs {fmt(drains['def'])}; peer {fmt(drains['peer'])}")
        part1 = statistics.median(r[0] for r in drains["def"])
        self.add("drain", f"{n:,} distinct keys, defaults, partitions = 4 (4 workers)", statistics.median(r[0] for r in drains["part4"]),
                 part1, self.limit, "changes/s", note=f"runs {fmt(drains['part4'])}; peer column: the same drain with partitions = 1")
        self.add("drain", f"{n:,} distinct keys, batch 5000, 16 in flight", statistics.median(r[0] for r in drains["tuned"]),
                 peer, self.limit, "changes/s", note=f"runs {fmt(drains['tuned'])}")
        cpu = lambda rs, i: statistics.median(r[3][i] for r in rs)
        self.add("cpu", f"{n:,} distinct keys: the worker's CPU per change, defaults", cpu(drains["def"], 0), cpu(drains["peer"], 0),
                 self.curl_floor[5], unit="us", higher_is_better=False,
                 note="peer: its consumer; runs " + "/".join(f"{r[3][0]:.0f}" for r in drains["def"]) + ", peer " + "/".join(f"{r[3][0]:.0f}" for r in drains["peer"]))
        self.add("cpu", f"{n:,} distinct keys: the worker's CPU per change, batch 5000, 16 in flight", cpu(drains["tuned"], 0),
                 cpu(drains["peer"], 0), self.curl_floor[16], unit="us", higher_is_better=False,
                 note="runs " + "/".join(f"{r[3][0]:.0f}" for r in drains["tuned"]))
        self.add("cpu", f"{n:,} distinct keys: PostgreSQL's CPU per change (all its processes), defaults", cpu(drains["def"], 1),
                 cpu(drains["peer"], 1), unit="us", higher_is_better=False,
                 note="peer: PgQ's drain (pgqd's ticks and the consumer's reads); tuned " + "/".join(f"{r[3][1]:.0f}" for r in drains["tuned"]))
        self.batch_rows(drains["def"], drains["batch"], drains["peer"])
        self.add("drain", f"{a.changes:,} changes over {a.over_keys} keys, defaults", statistics.median(r[0] for r in drains["over"]),
                 peer_over, self.limit, "changes/s",
                 note=f"requests {'/'.join(str(r[1]) for r in drains['over'])} (ideal {a.over_keys}), peer {a.changes}")

        if a.drains_only:
            self.print_table()
            return

        self.memory()

        # Latency: ours (defaults) and the peer, each against the recording ingestor.
        secs = 10 if self.quick else 30
        idle_n = 2 if self.quick else 10
        samples = 2 if self.quick else 3
        log(f"latency: {secs}s at 1,000 changes/s, commit to arrival; then first change after {idle_n}s idle (x{samples})")
        cfg = publisher_config(os.path.join(self.work, "lat.toml"), self.fast, "adp", self.rec_port)
        pub = Publisher(self, cfg, os.path.join(self.work, "publisher.log"))
        try:
            pub.workers(1)
            time.sleep(1)
            ours_l, ours_idle = self.latency_run("ours", "adp", secs, idle_n, samples, 100_000_000)
        finally:
            pub.stop()
        consumer = self.start_consumer(self.rec_port)
        try:
            time.sleep(1)
            peer_l, peer_idle = self.latency_run("peer", "peer", secs, idle_n, samples, 200_000_000)
        finally:
            self.stop_proc(consumer)
        for p in (50, 95, 99, "max"):
            self.add("latency", f"commit to arrival at 1,000/s, p{p}" if p != "max" else "commit to arrival at 1,000/s, max",
                     ours_l[p], peer_l[p], unit="ms", higher_is_better=False,
                     note=(f"missing ours {ours_l['missing']}, peer {peer_l['missing']}" if p == "max" else ""))
        self.add("latency", f"first change after {idle_n}s idle (worst of {samples})", max(ours_idle or [float("nan")]),
                 max(peer_idle or [float("nan")]), unit="ms", higher_is_better=False,
                 note="ours " + "/".join(f"{x:.0f}" for x in ours_idle) + ", peer " + "/".join(f"{x:.0f}" for x in peer_idle))

        self.idle_wakeup()
        self.idle_tables()
        self.writers()
        self.wal()
        self.print_table()

    def print_table(self):
        def num(x):
            if x is None:
                return ""
            if isinstance(x, float) and x != x:
                return "n/a"
            return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}" if abs(x) >= 10 else f"{x:.2f}"

        def ratio(a, b):
            if a is None or b is None or not b or a != a or b != b:
                return ""
            return f"{a / b:.2f}"

        cpu = open("/proc/cpuinfo").read()
        model = re.search(r"model name\s*:\s*(.*)", cpu)
        header = (f"atomic-data-publisher bench ({'quick' if self.quick else 'full'}), {time.strftime('%Y-%m-%d %H:%M %Z')}, "
                  f"{os.cpu_count()} CPUs ({model.group(1) if model else '?'}), "
                  f"PostgreSQL {self.fast.sql('postgres', 'SHOW server_version')[0][0].split()[0]}, release build, "
                  f"load average at start {self.load0:.1f}, at end {os.getloadavg()[0]:.1f}")
        rows = [f"| {section} | {fig} ({unit}) | {num(ours)} | {num(peer)} | {num(limit)} | {ratio(ours, peer)} | {ratio(ours, limit)} | {note} |"
                for section, fig, ours, peer, limit, unit, note, _ in self.rows]
        print()
        print("\n".join(table_lines(header, rows, self.markdown)))
        sys.stdout.flush()


TABLE_HEAD = ["| section | figure | ours | peer | limit | ours/peer | ours/limit | notes |",
              "|---|---|---:|---:|---:|---:|---:|---|"]


def table_lines(header, rows, markdown):
    """The table as printed. With --markdown, exactly the block docs/performance.md keeps between
    its markers, markers included, so a run's output can replace it as is."""
    if not markdown:
        return [header, "peer = PgQ (pgq.jsontriga + pgqd + a Python consumer, one keep-alive connection); "
                "limit = the raw rate it cannot beat", ""] + TABLE_HEAD + rows
    return (["<!-- bench/run --markdown: begin -->", "", "```", header, "```", ""] + TABLE_HEAD + rows
            + ["", "<!-- bench/run --markdown: end -->"])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--bin", required=True)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--drains-only", action="store_true")
    ap.add_argument("--markdown", action="store_true", help="print the table as the block docs/performance.md keeps")
    ap.add_argument("--only", default="", help="comma-separated sections to run alone: wake, idle, memory, batch, wal")
    a = ap.parse_args()
    a.keys = 100_000                            # rows in the watched table
    a.distinct = 50_000                         # distinct-key drain
    a.changes, a.over_keys = 20_000, 500        # coalescing drain
    a.big = 100_000 if a.quick else 1_000_000   # the large drain for memory (and its time)
    b = Bench(a)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        b.run()
    finally:
        b.cleanup()


if __name__ == "__main__":
    main()
