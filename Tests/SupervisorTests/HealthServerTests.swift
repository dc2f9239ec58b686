// The /health server (poll(2), a thread of its own) over real sockets on 127.0.0.1: every endpoint,
// HEAD, a wrong method, garbage, an oversized head, a slow client and a flood of silent ones that
// must not hold up anyone else, a port in use, and stop().

#if canImport(Glibc)
import Glibc
#endif
import Foundation
import XCTest
@testable import Supervisor
@testable import Shared

final class HealthServerTests: XCTestCase {
    private var servers: [HealthServer] = []

    override func tearDown() {
        for server in servers { server.stop() }
        servers = []
        super.tearDown()
    }

    private func snapshot() -> ServiceSnapshot {
        var stats = WorkerStats()
        stats.database = .up
        var s = ServiceSnapshot()
        s.tables = [.init(name: "items", schema: "public", state: "running", pid: 42, restarts: 0, lastExit: nil, lastError: nil, stats: stats)]
        return s
    }

    /// A running server on 127.0.0.1 (a free port) and its store.
    private func start(requestTimeoutSeconds: Double = 5) throws -> (port: Int, store: SnapshotStore) {
        let store = SnapshotStore(snapshot())
        let server = HealthServer(requestTimeoutSeconds: requestTimeoutSeconds)
        let port = try server.start(host: "127.0.0.1", port: 0, store: store)
        servers.append(server)
        XCTAssertGreaterThan(port, 0)
        return (port, store)
    }

    /// A connected client socket with a receive timeout (a hung server fails the test, it does not hang it).
    private func connectClient(_ port: Int, receiveTimeout: Double = 5) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure("socket: errno \(errno)") }
        var timeout = timeval(tv_sec: Int(receiveTimeout), tv_usec: Int((receiveTimeout - Double(Int(receiveTimeout))) * 1e6))
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        guard connected == 0 else {
            let code = errno
            close(fd)
            throw Failure("connect to 127.0.0.1:\(port): errno \(code)")
        }
        return fd
    }

    private func send(_ fd: Int32, _ text: String) {
        let bytes = Array(text.utf8)
        _ = bytes.withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
    }

    /// Everything until the server closes; throws when nothing ends within the receive timeout.
    private func readToEnd(_ fd: Int32) throws -> String {
        var out: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n == 0 { break }
            if n < 0 {
                if errno == ECONNRESET { break }
                throw Failure("no end of response (errno \(errno)); received so far: \(String(decoding: out, as: UTF8.self))")
            }
            out += buffer[0..<n]
        }
        return String(decoding: out, as: UTF8.self)
    }

    private struct Response {
        let statusLine: String
        let headers: [String: String]
        let body: String
    }

    private func parse(_ text: String) throws -> Response {
        guard let split = text.range(of: "\r\n\r\n") else { throw Failure("no end of head in: \(text)") }
        let lines = text[..<split.lowerBound].components(separatedBy: "\r\n")
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            let parts = line.split(separator: ":", maxSplits: 1)
            headers[parts[0].lowercased()] = parts.count > 1 ? parts[1].trimmingCharacters(in: .whitespaces) : ""
        }
        return Response(statusLine: lines[0], headers: headers, body: String(text[split.upperBound...]))
    }

    private func request(_ port: Int, _ raw: String) throws -> Response {
        let fd = try connectClient(port)
        defer { close(fd) }
        send(fd, raw)
        return try parse(try readToEnd(fd))
    }

    private func get(_ port: Int, _ path: String, method: String = "GET") throws -> Response {
        try request(port, "\(method) \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n")
    }

    func testEveryEndpoint_answersWithItsStatusContentTypeAndLength() throws {
        let (port, store) = try start()
        let s = store.read()
        let expected: [(String, String, String, String)] = [
            ("/health", s.health == .unhealthy ? "HTTP/1.1 503 Service Unavailable" : "HTTP/1.1 200 OK", "application/json", s.healthJSON),
            ("/healthz", s.health == .unhealthy ? "HTTP/1.1 503 Service Unavailable" : "HTTP/1.1 200 OK", "application/json", s.healthJSON),
            ("/metrics", "HTTP/1.1 200 OK", "application/json", s.metricsJSON),
            ("/metrics?x=1", "HTTP/1.1 200 OK", "application/json", s.metricsJSON),
            ("/metrics/prometheus", "HTTP/1.1 200 OK", "text/plain; version=0.0.4; charset=utf-8", s.prometheusText),
            ("/readyz", "HTTP/1.1 200 OK", "application/json", probeJSON(s.readiness, okStatus: "ready", failStatus: "not_ready")),
        ]
        for (path, status, contentType, body) in expected {
            let r = try get(port, path)
            XCTAssertEqual(r.statusLine, status, path)
            XCTAssertEqual(r.headers["content-type"], contentType, path)
            XCTAssertEqual(r.headers["connection"], "close", path)
            XCTAssertEqual(r.body, body + "\n", path)
            XCTAssertEqual(r.headers["content-length"], String(r.body.utf8.count), path)
        }
        let live = try get(port, "/livez")
        XCTAssertEqual(live.statusLine, "HTTP/1.1 200 OK")
        XCTAssertTrue(live.body.contains("\"status\":\"alive\""), live.body)
        let missing = try get(port, "/nope")
        XCTAssertEqual(missing.statusLine, "HTTP/1.1 404 Not Found")
        XCTAssertEqual(missing.body, "{\"error\":\"not found\",\"paths\":[\"/health\",\"/livez\",\"/readyz\",\"/metrics\",\"/metrics/prometheus\"]}\n")
    }

    func testHead_hasTheHeadersOfGetAndNoBody_andHTTP10IsAnsweredInKind() throws {
        let (port, store) = try start()
        let head = try get(port, "/metrics", method: "HEAD")
        XCTAssertEqual(head.statusLine, "HTTP/1.1 200 OK")
        XCTAssertEqual(head.headers["content-length"], String(store.read().metricsJSON.utf8.count + 1))
        XCTAssertEqual(head.body, "")
        let old = try request(port, "GET /health HTTP/1.0\r\n\r\n")
        XCTAssertTrue(old.statusLine.hasPrefix("HTTP/1.0 "), old.statusLine)
    }

    func testAnotherMethod_is405_evenWithABody() throws {
        let (port, _) = try start()
        let r = try request(port, "POST /health HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc")
        XCTAssertEqual(r.statusLine, "HTTP/1.1 405 Method Not Allowed")
        XCTAssertEqual(r.body, "{\"error\":\"method not allowed\"}\n")
    }

    func testGarbage_is400_andTheConnectionCloses() throws {
        let (port, _) = try start()
        for garbage in ["garbage\r\n\r\n", "GET\r\n\r\n", "GET /health HTTP/9.9\r\n\r\n", "GET /health HTTP/1.1\r\nno colon here\r\n\r\n",
                        "get /health HTTP/1.1\r\n\r\n", "\u{1}\u{2}\u{3}\n\n"] {
            let r = try request(port, garbage)
            XCTAssertEqual(r.statusLine, "HTTP/1.1 400 Bad Request", garbage.debugDescription)
        }
        XCTAssertEqual(try get(port, "/health").statusLine, "HTTP/1.1 200 OK", "the server still answers")
    }

    func testAnOversizedHead_is431_beforeItEnds() throws {
        let (port, _) = try start()
        let fd = try connectClient(port)
        defer { close(fd) }
        // No end of head ever comes: the server answers once the limit is passed, and closes.
        send(fd, "GET /health HTTP/1.1\r\nX-Padding: " + String(repeating: "a", count: HealthServer.maximumRequestBytes + 100))
        let r = try parse(try readToEnd(fd))
        XCTAssertEqual(r.statusLine, "HTTP/1.1 431 Request Header Fields Too Large")
    }

    func testASlowClient_doesNotHoldUpAnother_andIsDroppedAtItsDeadline() throws {
        let (port, _) = try start(requestTimeoutSeconds: 1)
        let slow = try connectClient(port, receiveTimeout: 5)
        defer { close(slow) }
        send(slow, "GET /hea")
        let started = monotonicSeconds()
        XCTAssertEqual(try get(port, "/health").statusLine, "HTTP/1.1 200 OK")
        XCTAssertLessThan(monotonicSeconds() - started, 0.9, "answered while the slow client's request was still open")
        // The slow client never finishes: it is closed at its deadline, without an answer.
        XCTAssertEqual(try readToEnd(slow), "")
        XCTAssertLessThan(monotonicSeconds() - started, 4)
    }

    func testMoreSilentClientsThanConnections_areDroppedAtTheirDeadline_andOthersAreServedAfter() throws {
        let (port, _) = try start(requestTimeoutSeconds: 0.5)
        var silent: [Int32] = []
        defer { for fd in silent { close(fd) } }
        for _ in 0..<(HealthServer.maximumConnections + 8) { silent.append(try connectClient(port)) }
        XCTAssertEqual(try get(port, "/health").statusLine, "HTTP/1.1 200 OK")
    }

    /// Idle sockets used to hold every connection slot for the whole request timeout (5 s), longer
    /// than Kubernetes' probe timeout (3 s): the kubelet then restarted a healthy pod in a loop.
    func testMoreIdleSocketsThanConnections_neverStarveTheProbes_atTheDefaultTimeouts() throws {
        let (port, _) = try start()
        var idle: [Int32] = []
        defer { for fd in idle { close(fd) } }
        for _ in 0..<(HealthServer.maximumConnections + 8) { idle.append(try connectClient(port)) }
        for path in ["/livez", "/readyz", "/health"] {
            let started = monotonicSeconds()
            let response = try get(port, path)
            XCTAssertTrue(response.statusLine.hasPrefix("HTTP/1.1 "), "\(path): \(response.statusLine)")
            XCTAssertLessThan(monotonicSeconds() - started, 2, "\(path) answered well within a 3 s probe timeout")
        }
    }

    func testAPortInUse_isRefusedWithTheSystemsReason() throws {
        let (port, _) = try start()
        let second = HealthServer()
        XCTAssertThrowsError(try second.start(host: "127.0.0.1", port: port, store: SnapshotStore(snapshot()))) { error in
            XCTAssertEqual(HealthServer.reason(error), "address already in use")
        }
        XCTAssertThrowsError(try second.start(host: "no-such-host.invalid", port: 0, store: SnapshotStore(snapshot())))
    }

    func testStop_endsTheThreadAndClosesThePort() throws {
        let store = SnapshotStore(snapshot())
        let server = HealthServer()
        let port = try server.start(host: "127.0.0.1", port: 0, store: store)
        XCTAssertEqual(try get(port, "/livez").statusLine, "HTTP/1.1 200 OK")
        server.stop()
        XCTAssertThrowsError(try connectClient(port), "nobody listens after stop()")
    }

    private struct Failure: Error, CustomStringConvertible {
        let description: String
        init(_ description: String) { self.description = description }
    }
}

/// `run` execs the supervisor; the configuration path it loaded travels in the environment.
final class SupervisorExecTests: XCTestCase {
    func testTheConfigPath_survivesTheMarker() {
        XCTAssertNil(SupervisorExec.configPath(markerValue: SupervisorExec.markerValue(configPath: nil)))
        for path in ["/etc/atomic-data-publisher/config.toml", "run", "a b/c=d.toml"] {
            XCTAssertEqual(SupervisorExec.configPath(markerValue: SupervisorExec.markerValue(configPath: path)), path)
        }
    }
}
