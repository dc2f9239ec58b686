#!/usr/bin/env python3
"""A tiny ingestor for the latency figures: answers 204 to every POST and records when each body
arrived and the watched column's value in it ("counter": N). GET /_dump returns "arrival counter"
lines and forgets them. Keep-alive, Nagle off (else keep-alive requests stall 40 ms)."""
import argparse, re, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COUNTER = re.compile(rb'"counter"\s*:\s*(\d+)')
lock = threading.Lock()
seen = []

class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        now = time.time()
        m = COUNTER.search(body)
        with lock:
            seen.append((now, int(m.group(1)) if m else -1))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def do_GET(self):
        global seen
        with lock:
            out, seen = seen, []
        data = "".join(f"{t:.6f} {c}\n" for t, c in out).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass

class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--port-file", required=True)
    a = ap.parse_args()
    srv = Server(("127.0.0.1", 0), Handler)
    with open(a.port_file + ".tmp", "w") as f:
        f.write(str(srv.server_address[1]))
    import os
    os.rename(a.port_file + ".tmp", a.port_file)
    srv.serve_forever()
