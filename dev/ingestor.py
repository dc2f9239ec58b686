#!/usr/bin/env python3
"""A small local ingestor for the demo and the integration tests.

It records every request it receives and answers 200, or whatever it is told to through its
control endpoints, so tests can make it fail, stall or refuse a key:

  POST   /_control   {"status": 500}            answer every publish with 500
                     {"status": 200}            back to normal
                     {"stall": true}            accept, read, never answer (until told otherwise)
                     {"fail_keys": {"42": 400}} answer 400 for payloads whose primary_key is 42 (a batch
                                                that holds one: the whole request, unless batch_results)
                     {"batch_results": true}    answer a batch (a JSON array of payloads) 200 with per-item
                                                results, {"results": [{"id", "status"}, ...]}: each
                                                document's fail_keys status, else 200 (also --batch-results)
                     {"retry_after": 2}         add Retry-After to 429/503 answers
                     {"delay": 1.5}             wait this long before answering (then answer normally)
                     {"drop": true}             read and record the request (status 0), then close the
                                                connection without answering (until told otherwise)
                     {"keep": ["primary_key"]}  record only these body fields and no headers (large
                                                runs, e.g. a 200,000-row backfill); null: everything
                     {"enforce_epoch": true}    the fencing rule (also --enforce-epoch): remember the
                                                highest X-Publisher-Epoch per X-Publisher-Lease and
                                                answer 409 to a request with a lower one
  GET    /_requests  every publish received, in order: {"path", "headers", "body", "status", "wire_bytes",
                     "body_bytes"} (plus "verified" when --webhook-secret is given, and "results" for a batch
                     answered per item); a batch is one request whose body is the list. A body sent
                     with Content-Encoding: gzip is decompressed first, as an HTTP server or framework
                     does before the application reads it (and verified, parsed and printed as such);
                     "wire_bytes" is the body's size as received, "body_bytes" decoded. Another encoding
                     is answered 415
  DELETE /_requests  forget them
  GET    /_health    200
  GET    /_bytes?n=N a 200 whose body is N bytes (for response-size limits)
Every answer carries X-Client-Port: the peer's port, so a test can tell whether a connection was reused.

Usage: ingestor.py [--port N] [--port-file F] [--print]
                   [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]   serve HTTPS (and require a client
                                                                        certificate signed by that CA)
                   [--webhook-secret whsec_... ...]   verify every publish's Standard Webhooks signature with
                                                      the `standardwebhooks` package (pip install
                                                      standardwebhooks): record "verified", answer 401 if not
"""
import argparse
import gzip
import json
import zlib
import os
import ssl
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

lock = threading.Lock()
requests = []
control = {"status": 200, "stall": False, "fail_keys": {}, "retry_after": None, "delay": 0, "keep": None, "enforce_epoch": False, "drop": False,
           "batch_results": False}
epochs = {}  # X-Publisher-Lease -> the highest X-Publisher-Epoch accepted
args = None
verifiers = []  # standardwebhooks.Webhook, one per --webhook-secret


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
        self.send_header("X-Client-Port", str(self.client_address[1]))
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
        elif self.path.startswith("/_bytes"):
            n = int(parse_qs(urlparse(self.path).query).get("n", ["0"])[0])
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self.send_header("X-Client-Port", str(self.client_address[1]))
            self.end_headers()
            chunk = b"x" * 65536
            while n > 0:
                self.wfile.write(chunk[:n])
                n -= min(n, len(chunk))
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
        wire_bytes = len(raw)
        encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
        if encoding == "gzip":
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError, zlib.error):
                self._reply(400, {"error": "the body is not valid gzip"})
                return
        elif encoding != "identity":
            self._reply(415, {"error": f"unsupported Content-Encoding {encoding}"})
            return
        try:
            body = json.loads(raw)
        except ValueError:
            body = {"_unparsable": raw.decode("utf-8", "replace")}
        verified = None
        if verifiers:
            verified = any(_verifies(v, raw, self.headers) for v in verifiers)
        with lock:
            status = control["status"]
            stall = control["stall"]
            drop = control["drop"]
            key = body.get("primary_key") if isinstance(body, dict) else None
            if key is not None and str(key) in control["fail_keys"]:
                status = int(control["fail_keys"][str(key)])
            results = None
            if isinstance(body, list):
                # A batch: its documents' fail_keys statuses, per item or for the whole request.
                codes = [int(control["fail_keys"].get(str(d.get("primary_key")), 200)) if isinstance(d, dict) else 400 for d in body]
                if control["batch_results"] and status < 300:
                    results = [{"id": d.get("id") if isinstance(d, dict) else None, "status": c} for d, c in zip(body, codes)]
                else:
                    status = next((c for c in codes if c >= 300), status)
            retry_after = control["retry_after"]
            delay = control["delay"]
            if verified is False:
                status = 401
            stale = False
            if control["enforce_epoch"]:
                # The fencing rule an ingestor applies: a grant older than one already seen for the
                # same lease is refused (requests of a release without epochs carry none: accepted).
                lease, epoch = self.headers.get("X-Publisher-Lease"), self.headers.get("X-Publisher-Epoch")
                if lease is not None and epoch is not None:
                    if int(epoch) < epochs.get(lease, 0):
                        status, stale = 409, True
                    else:
                        epochs[lease] = int(epoch)
            keep = control["keep"]
            if keep is not None and isinstance(body, (dict, list)):
                kept = [{k: d.get(k) for k in keep} if isinstance(d, dict) else d for d in body] if isinstance(body, list) else {k: body.get(k) for k in keep}
                record = {"path": self.path, "headers": {}, "body": kept,
                          "status": 0 if stall or drop else status, "at": time.time()}
            else:
                record = {"path": self.path, "headers": dict(self.headers.items()), "body": body,
                          "status": 0 if stall or drop else status, "at": time.time()}
            record["wire_bytes"] = wire_bytes
            record["body_bytes"] = len(raw)
            if verified is not None:
                record["verified"] = verified
            if stale:
                record["stale_epoch"] = True
            if results is not None:
                record["results"] = results
            requests.append(record)
        if stale:
            self._reply(409, {"error": "stale epoch for this lease"})
            return
        if drop:
            self.close_connection = True  # closed mid-exchange: the request was read, no answer
            return
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
            if isinstance(body, list):
                print(f"--- {self.path} ({status}, a batch of {len(body)})", flush=True)
                for document, result in zip(body, results or [None] * len(body)):
                    print(("" if result is None else f"({result['status']}) ") + json.dumps(document, indent=2), flush=True)
            else:
                print(f"--- {self.path} ({status})\n{json.dumps(body, indent=2)}", flush=True)
        extra = {}
        if retry_after is not None and status in (429, 503):
            extra["Retry-After"] = str(retry_after)
        self._reply(status, {"results": results} if results is not None else None, extra=extra)


def _verifies(verifier, raw, headers):
    from standardwebhooks.webhooks import WebhookVerificationError
    try:
        verifier.verify(raw, {k: v for k, v in headers.items()}, json_parse=False)
        return True
    except (WebhookVerificationError, ValueError):
        return False


class Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128
    allow_reuse_address = True
    tls = None  # ssl.SSLContext when serving HTTPS

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.tls is not None:
            # The handshake runs in the handler's thread (first read), not in the accept loop.
            sock = self.tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, addr

    def handle_error(self, request, client_address):
        # A client that fails the TLS handshake (wrong CA, no certificate) is expected in tests.
        if isinstance(sys.exc_info()[1], (ssl.SSLError, ConnectionError)):
            return
        super().handle_error(request, client_address)


def main():
    global args
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (loopback, or a test network's own address)")
    p.add_argument("--port-file")
    p.add_argument("--print", action="store_true")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--tls-client-ca")
    p.add_argument("--webhook-secret", action="append", default=[])
    p.add_argument("--batch-results", action="store_true", help="answer a batch 200 with per-item results (see batch_results above)")
    p.add_argument("--enforce-epoch", action="store_true", help="refuse (409) a request whose X-Publisher-Epoch is below the highest seen for its X-Publisher-Lease")
    args = p.parse_args()
    control["enforce_epoch"] = args.enforce_epoch
    control["batch_results"] = args.batch_results
    if args.webhook_secret:
        try:
            from standardwebhooks.webhooks import Webhook
        except ImportError:
            sys.exit("ingestor.py: --webhook-secret needs the standardwebhooks package: python3 -m pip install standardwebhooks")
        verifiers.extend(Webhook(secret) for secret in args.webhook_secret)
    server = Server((args.host, args.port), Handler)
    if args.tls_cert:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        if args.tls_client_ca:
            context.load_verify_locations(args.tls_client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        server.tls = context
    port = server.server_address[1]
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as f:
            f.write(str(port))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"ingestor listening on {'https' if server.tls else 'http'}://127.0.0.1:{port}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
