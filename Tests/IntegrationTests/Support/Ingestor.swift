import Foundation
import Shared

/// One publish the ingestor received, as dev/ingestor.py recorded it.
struct RecordedRequest: CustomStringConvertible {
    let path: String
    /// Header names lower-cased.
    let headers: [String: String]
    let body: JSON
    /// What the ingestor answered (0: stalled, no answer).
    let status: Int
    /// Whether the Standard Webhooks signature verified (only when started with webhook secrets).
    var verified: Bool? = nil
    /// A batch answered per item: each document's status, by its id.
    var results: [String: Int]? = nil
    /// The body's size as received (compressed, with Content-Encoding: gzip; `body` is decoded).
    var wireBytes: Int? = nil
    /// The body's size once decoded (what `verified` and `body` are of).
    var bodyBytes: Int? = nil

    func header(_ name: String) -> String? { headers[name.lowercased()] }

    /// The documents it carried: a batch's array, or the one payload.
    var documents: [JSON] { body.array ?? [body] }

    /// The documents the ingestor acknowledged: all of a 2xx, less those its per-item results refused.
    var acknowledgedDocuments: [JSON] {
        guard (200..<300).contains(status) else { return [] }
        guard let results else { return documents }
        return documents.filter { (200..<300).contains(results[$0["id"]?.string ?? ""] ?? status) }
    }

    var description: String { "\(status) POST \(path) \(body)" }
}

/// dev/ingestor.py, started for one test on a free port of 127.0.0.1: it records every publish and
/// answers what its control endpoint says (200 by default).
final class Ingestor {
    let process: ManagedProcess
    let port: Int
    let tls: TLS?
    /// The address it listens on: 127.0.0.1, or a test network's own address.
    let host: String

    /// HTTPS: the server's certificate and key (issued for "localhost"), optionally the CA its
    /// clients' certificates must be signed by (mutual TLS), and what the test's own control calls
    /// present (`client`).
    struct TLS {
        var certificate: String
        var key: String
        var clientCA: String? = nil
        var client: HTTPTLSOptions
    }

    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    /// https://localhost:PORT with TLS (the certificate's name), else http://127.0.0.1:PORT.
    var baseURL: String { tls == nil ? "http://\(host):\(port)" : "https://localhost:\(port)" }

    private init(process: ManagedProcess, port: Int, tls: TLS?, host: String) {
        self.process = process
        self.port = port
        self.tls = tls
        self.host = host
    }

    /// Start it and wait until it accepts requests (`GET /_health`).
    /// `port`: listen on this port (0: any free one), e.g. to come back on the same address after a stop.
    /// `tls`: serve HTTPS; `webhookSecrets`: verify each publish's signature (`verified`).
    static func start(directory: URL, name: String = "ingestor", port requestedPort: Int = 0,
                      tls: TLS? = nil, webhookSecrets: [String] = [], host: String = "127.0.0.1") throws -> Ingestor {
        let portFile = directory.appendingPathComponent("\(name).port")
        var arguments = ["-u", TestEnvironment.ingestorScript.path, "--port-file", portFile.path, "--port", String(requestedPort), "--host", host]
        if let tls {
            arguments += ["--tls-cert", tls.certificate, "--tls-key", tls.key]
            if let clientCA = tls.clientCA { arguments += ["--tls-client-ca", clientCA] }
        }
        for secret in webhookSecrets { arguments += ["--webhook-secret", secret] }
        let process = try ManagedProcess(
            name: name, executable: try TestEnvironment.python(),
            arguments: arguments,
            workingDirectory: directory, logDirectory: directory)
        var port: Int?
        let started = Wait.until(timeout: 15, "\(name) (dev/ingestor.py) wrote its port to \(portFile.path)",
                                 lastSeen: { process.stderrTail() }) {
            if let ended = process.termination { throw WaitAborted("it \(ended)") }
            port = (try? String(contentsOf: portFile, encoding: .utf8)).flatMap { Int($0.trimmingCharacters(in: .whitespacesAndNewlines)) }
            return port != nil
        }
        guard started, let port else {
            process.stop(timeout: 2)
            throw Failure(description: "the ingestor did not start")
        }
        let ingestor = Ingestor(process: process, port: port, tls: tls, host: host)
        let healthy = Wait.until(timeout: 15, "\(name) answers GET /_health", lastSeen: { process.stderrTail() }) {
            if let ended = process.termination { throw WaitAborted("it \(ended)") }
            return (try? ingestor.call("GET", "/_health").status) == 200
        }
        guard healthy else {
            process.stop(timeout: 2)
            throw Failure(description: "the ingestor does not answer")
        }
        return ingestor
    }

    /// GET /_requests as received, with fields `requests()` leaves out (such as `at`, the arrival time).
    func rawRequestsBody() throws -> [UInt8] {
        try call("GET", "/_requests").body
    }

    /// Every publish received so far, in order of arrival.
    func requests() throws -> [RecordedRequest] {
        let response = try call("GET", "/_requests")
        guard response.status == 200 else { throw Failure(description: "GET /_requests answered \(response.status): \(response.bodyText)") }
        guard let list = try JSON(parsing: Data(response.body)).array else {
            throw Failure(description: "GET /_requests did not answer a JSON array: \(response.bodyText)")
        }
        return try list.map { item in
            guard let path = item["path"]?.string, let headers = item["headers"]?.object, let body = item["body"],
                  let status = item["status"]?.int else {
                throw Failure(description: "unexpected record from GET /_requests: \(item)")
            }
            var lowered: [String: String] = [:]
            for (name, value) in headers { lowered[name.lowercased()] = value.string ?? value.description }
            var results: [String: Int]?
            if let list = item["results"]?.array {
                results = Dictionary(list.compactMap { r in r["id"]?.string.flatMap { id in r["status"]?.int.map { (id, $0) } } }, uniquingKeysWith: { $1 })
            }
            return RecordedRequest(path: path, headers: lowered, body: body, status: status, verified: item["verified"]?.bool, results: results,
                                   wireBytes: item["wire_bytes"]?.int, bodyBytes: item["body_bytes"]?.int)
        }
    }

    /// POST /_control: `["status": 500]`, `["status": 200]`, `["stall": true]`,
    /// `["fail_keys": ["42": 400]]`, `["retry_after": 2]` (see dev/ingestor.py).
    func setControl(_ settings: [String: Any]) throws {
        let body = try JSONSerialization.data(withJSONObject: settings)
        let response = try call("POST", "/_control", body: Array(body))
        guard response.status == 200 else { throw Failure(description: "POST /_control answered \(response.status): \(response.bodyText)") }
    }

    /// DELETE /_requests: forget what was received.
    func clearRequests() throws {
        let response = try call("DELETE", "/_requests")
        guard response.status == 200 else { throw Failure(description: "DELETE /_requests answered \(response.status)") }
    }

    /// The requests received, one line each, for failure messages.
    func summary(limit: Int = 20) -> String {
        guard let all = try? requests() else { return "--- ingestor: GET /_requests failed ---" }
        let lines = all.suffix(limit).map { "  \($0)" }.joined(separator: "\n")
        let skipped = all.count > limit ? "  [... \(all.count - limit) earlier]\n" : ""
        return "--- ingestor received \(all.count) request(s) ---\n\(skipped)\(lines)"
    }

    func stop() {
        process.stop(timeout: 5)
    }

    /// A fresh client per call: a reused `HTTPClient` sends a GET that follows a DELETE as a
    /// DELETE (see HTTPClientTests), which would wipe the recorded requests.
    private func call(_ method: String, _ path: String, body: [UInt8] = []) throws -> HTTPResponse {
        let headers = body.isEmpty ? [] : [("Content-Type", "application/json")]
        let request = HTTPRequest(url: baseURL + path, method: method, headers: headers, body: body)
        let http = HTTPClient(timeoutMilliseconds: 10_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1,
                              tls: tls?.client ?? HTTPTLSOptions(), maximumBodyBytes: 1 << 30)  // /_requests lists every publish
        return try http.perform(request).get()
    }
}
