#!/usr/bin/env python3
"""A small local ingestor for the demo and the integration tests.

It records every request it receives and answers 200, or whatever it is told to through its
control endpoints, so tests can make it fail, stall or refuse a key:

  POST   /_control   {"status": 500}            answer every publish with 500
                     {"status": 200}            back to normal
                     {"stall": true}            accept, read, never answer (until told otherwise)
                     {"fail_keys": {"42": 400}} answer 400 for payloads whose primary_key is 42
                     {"retry_after": 2}         add Retry-After to 429/503 answers
                     {"delay": 1.5}             wait this long before answering (then answer normally)
  GET    /_requests  every publish received, in order: {"path", "headers", "body", "status"}
  DELETE /_requests  forget them
  GET    /_health    200

Usage: ingestor.py [--port N] [--port-file F] [--print]
"""
import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

lock = threading.Lock()
requests = []
control = {"status": 200, "stall": False, "fail_keys": {}, "retry_after": None, "delay": 0}
args = None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # else keep-alive requests stall 40 ms each

    def log_message(self, fmt, *a):  # quiet: the demo prints payloads itself
        pass

    def _read_body(self):
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def _reply(self, status, obj=None, extra=None):
        data = json.dumps(obj if obj is not None else {"ok": status < 300}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/_requests":
            with lock:
                self._reply(200, list(requests))
        elif self.path == "/_health":
            self._reply(200)
        else:
            self._reply(404)

    def do_DELETE(self):
        if self.path == "/_requests":
            with lock:
                requests.clear()
            self._reply(200)
        else:
            self._reply(404)

    def do_POST(self):
        raw = self._read_body()
        if self.path == "/_control":
            with lock:
                control.update(json.loads(raw or b"{}"))
            self._reply(200, dict(control))
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        with lock:
            status = control["status"]
            stall = control["stall"]
            key = body.get("primary_key") if isinstance(body, dict) else None
            if key is not None and str(key) in control["fail_keys"]:
                status = int(control["fail_keys"][str(key)])
            retry_after = control["retry_after"]
            delay = control["delay"]
            requests.append({"path": self.path, "headers": dict(self.headers.items()), "body": body,
                             "status": 0 if stall else status, "at": time.time()})
        if stall:
            while True:
                time.sleep(0.05)
                with lock:
                    if not control["stall"]:
                        break
            self.close_connection = True
            return
        if delay:
            time.sleep(delay)
        if args.print and status < 300:
            print(f"--- {self.path} ({status})\n{json.dumps(body, indent=2)}", flush=True)
        extra = {}
        if retry_after is not None and status in (429, 503):
            extra["Retry-After"] = str(retry_after)
        self._reply(status, extra=extra)


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--port-file")
    p.add_argument("--print", action="store_true")
    args = p.parse_args()
    server = Server(("127.0.0.1", args.port), Handler)
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        import os
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"ingestor listening on 127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
