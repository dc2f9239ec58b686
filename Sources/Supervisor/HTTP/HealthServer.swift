// GET /health, /livez, /readyz, /metrics and /metrics/prometheus on
// health_check_address:health_check_port, served by a small HTTP/1.1 server on a thread of its
// own (poll(2), non-blocking sockets; it replaced SwiftNIO, which cost the supervisor about
// 2 MiB of resident code and an event loop: docs/performance.md). The supervisor loop publishes a
// snapshot; the HTTP thread only reads it, so a slow scrape never delays supervision. The store
// also remembers when the snapshot was published: /livez is the age of that moment (the loop
// publishes every iteration).
//
// One request per connection (`Connection: close`). A client gets `headTimeoutSeconds` (0.5 s)
// from its connect to send a whole request head, and `requestTimeoutSeconds` (5 s) to the end of
// the response; a request head over `maximumRequestBytes` is answered 431, a malformed one 400,
// then the connection is closed. At most `maximumConnections` are open at once; when all are taken
// a new connection is still accepted, and the oldest one that has not sent a whole request yet is
// closed for it. So idle sockets cannot starve the probes: Kubernetes' liveness probe times out at
// 3 s, and a supervisor whose /livez it cannot reach is restarted in a loop.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import SharedCore
import Synchronization

final class SnapshotStore: Sendable {
    private struct Published {
        var snapshot: ServiceSnapshot
        var at: ContinuousClock.Instant
    }

    private let value: Mutex<Published>

    init(_ snapshot: ServiceSnapshot) {
        value = Mutex(Published(snapshot: snapshot, at: .now))
    }

    func publish(_ snapshot: ServiceSnapshot) {
        let now = ContinuousClock.now
        value.withLock { $0 = Published(snapshot: snapshot, at: now) }
    }

    func read() -> ServiceSnapshot {
        value.withLock { $0.snapshot }
    }

    /// Seconds since the supervisor loop last published a snapshot (monotonic clock).
    func secondsSincePublished() -> Double {
        let at = value.withLock { $0.at }
        let d = at.duration(to: .now).components
        return Double(d.seconds) + Double(d.attoseconds) / 1e18
    }
}

/// Why the server could not start, in words (a system call's errno as text).
struct HealthServerError: Error, CustomStringConvertible {
    let reason: String
    var description: String { reason }
}

final class HealthServer: @unchecked Sendable {
    static let maximumConnections = 32
    static let maximumRequestBytes = 8192
    /// From a client's connect to the end of its response (a test shortens it).
    let requestTimeoutSeconds: Double
    /// From a client's connect to the end of its request head: a probe sends it at once.
    let headTimeoutSeconds: Double

    // Set in start() before the thread exists, read by the thread, closed in stop() after it ended.
    private var listenFD: Int32 = -1
    private var wakeFDs: [Int32] = [-1, -1]
    private var thread: pthread_t?
    private var store: SnapshotStore?

    init(requestTimeoutSeconds: Double = 5, headTimeoutSeconds: Double = 0.5) {
        self.requestTimeoutSeconds = requestTimeoutSeconds
        self.headTimeoutSeconds = min(headTimeoutSeconds, requestTimeoutSeconds)
    }

    /// Bind and start serving; returns the bound port (useful when `port` is 0).
    func start(host: String, port: Int, store: SnapshotStore) throws -> Int {
        self.store = store
        listenFD = try Self.listen(host: host, port: port)
        var address = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let bound = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(listenFD, $0, &length) } }
        let boundPort = bound == 0 ? Self.port(of: address) : port
        do {
            let pipe = try Pipes.make()
            wakeFDs = [pipe.read, pipe.write]
        } catch {
            close(listenFD)
            throw HealthServerError(reason: "\(error)")
        }
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setstacksize(&attributes, 256 * 1024)
        var created = pthread_t()
        let context = Unmanaged.passRetained(self).toOpaque()
        let status = pthread_create(&created, &attributes, { context in
            let server = Unmanaged<HealthServer>.fromOpaque(context!).takeRetainedValue()
            server.serve()
            return nil
        }, context)
        guard status == 0 else {
            Unmanaged<HealthServer>.fromOpaque(context).release()
            close(listenFD)
            throw HealthServerError(reason: String(cString: strerror(status)).lowercased())
        }
        thread = created
        return boundPort
    }

    /// Why `start` failed, in words.
    static func reason(_ error: any Error) -> String {
        (error as? HealthServerError)?.reason ?? "\(error)"
    }

    func stop() {
        guard let thread else { return }
        var byte: UInt8 = 1
        _ = write(wakeFDs[1], &byte, 1)
        pthread_join(thread, nil)
        self.thread = nil
        close(listenFD)
        close(wakeFDs[0])
        close(wakeFDs[1])
    }

    // MARK: listening

    private static func listen(host: String, port: Int) throws -> Int32 {
        guard (0...65535).contains(port) else { throw HealthServerError(reason: "port \(port) is out of range") }
        var hints = addrinfo()
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        var list: UnsafeMutablePointer<addrinfo>?
        let resolved = getaddrinfo(host, String(port), &hints, &list)
        guard resolved == 0, let first = list else {
            throw HealthServerError(reason: String(cString: gai_strerror(resolved)).lowercased())
        }
        defer { freeaddrinfo(list) }
        let info = first.pointee
        let fd = socket(info.ai_family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue) | Int32(SOCK_NONBLOCK.rawValue), 0)
        guard fd >= 0 else { throw HealthServerError(reason: errnoText()) }
        var one: Int32 = 1
        _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
        guard bind(fd, info.ai_addr, info.ai_addrlen) == 0, Glibc.listen(fd, 64) == 0 else {
            let reason = errnoText()
            close(fd)
            throw HealthServerError(reason: reason)
        }
        return fd
    }

    private static func port(of address: sockaddr_storage) -> Int {
        let family = Int32(address.ss_family)
        var address = address
        return withUnsafePointer(to: &address) { pointer in
            switch family {
            case AF_INET: return pointer.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            case AF_INET6: return pointer.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin6_port)) }
            default: return 0
            }
        }
    }

    private static func errnoText() -> String {
        String(cString: strerror(errno)).lowercased()
    }

    // MARK: the server thread

    private struct Connection {
        let fd: Int32
        let acceptedAt: Double
        let deadline: Double
        /// The whole request head must have arrived by then.
        let headDeadline: Double
        var request: [UInt8] = []
        /// The response once decided, and how much of it is sent.
        var response: [UInt8]?
        var sent = 0
    }

    private func serve() {
        var connections: [Connection] = []
        var readable = [UInt8](repeating: 0, count: 4096)
        while true {
            let now = monotonicSeconds()
            // Expired connections are dropped: a slow or silent client only ever costs itself.
            connections.removeAll { connection in
                guard connection.deadline <= now || (connection.response == nil && connection.headDeadline <= now) else { return false }
                Self.finish(connection.fd)
                return true
            }
            var fds = [pollfd(fd: wakeFDs[0], events: Int16(POLLIN), revents: 0)]
            if connections.count < Self.maximumConnections || connections.contains(where: { $0.response == nil }) {
                fds.append(pollfd(fd: listenFD, events: Int16(POLLIN), revents: 0))
            }
            let first = fds.count
            for connection in connections {
                fds.append(pollfd(fd: connection.fd, events: Int16(connection.response == nil ? POLLIN : POLLOUT), revents: 0))
            }
            let nearest = connections.map { $0.response == nil ? min($0.deadline, $0.headDeadline) : $0.deadline }.min().map { max(0, $0 - now) } ?? 60
            let ready = poll(&fds, nfds_t(fds.count), Int32(min(nearest, 60) * 1000) + 1)
            if ready < 0 {
                if errno != EINTR { usleep(10_000) }  // (ENOMEM) try again, never stop serving
                continue
            }
            if fds[0].revents != 0 { return }
            for index in (0..<connections.count).reversed() {
                let events = fds[first + index].revents
                guard events != 0 else { continue }
                if !advance(&connections[index], events: events, buffer: &readable) {
                    Self.finish(connections[index].fd)
                    connections.remove(at: index)
                }
            }
            if first == 2 && fds[1].revents != 0 {
                acceptConnections(into: &connections)
            }
        }
    }

    private func acceptConnections(into connections: inout [Connection]) {
        while true {
            if connections.count >= Self.maximumConnections {
                // Full: make room by closing the oldest connection still without a whole request.
                guard let oldest = connections.indices.filter({ connections[$0].response == nil })
                    .min(by: { connections[$0].acceptedAt < connections[$1].acceptedAt }) else { return }
                Self.finish(connections[oldest].fd)
                connections.remove(at: oldest)
            }
            // (accept4 is not in Swift's Glibc module. A worker spawned between accept and
            // FD_CLOEXEC could inherit the socket: every close is preceded by a shutdown, so the
            // client still sees the end of the connection.)
            let fd = accept(listenFD, nil, nil)
            if fd < 0 {
                // EAGAIN: none waiting. Out of descriptors or memory: the backlog keeps them, and
                // a pause keeps poll from spinning on a listen socket that stays readable.
                if [EMFILE, ENFILE, ENOBUFS, ENOMEM].contains(errno) { usleep(100_000) }
                return
            }
            _ = fcntl(fd, F_SETFD, FD_CLOEXEC)
            Pipes.setNonBlocking(fd)
            let now = monotonicSeconds()
            connections.append(Connection(fd: fd, acceptedAt: now, deadline: now + requestTimeoutSeconds, headDeadline: now + headTimeoutSeconds))
        }
    }

    /// Read or write what the socket allows; false when the connection is done (or broken).
    private func advance(_ connection: inout Connection, events: Int16, buffer: inout [UInt8]) -> Bool {
        if connection.response == nil {
            let count = recv(connection.fd, &buffer, buffer.count, 0)
            if count < 0 { return errno == EAGAIN || errno == EINTR }
            if count == 0 { return false }  // the client closed before a whole request
            connection.request += buffer[0..<count]
            guard let response = Self.response(to: connection.request, store: store!) else { return true }
            connection.response = response
        }
        guard let response = connection.response else { return true }
        let count = response[connection.sent...].withUnsafeBytes { send(connection.fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if count < 0 { return errno == EAGAIN || errno == EINTR }
        connection.sent += count
        return connection.sent < response.count
    }

    private static func finish(_ fd: Int32) {
        shutdown(fd, Int32(SHUT_RDWR))
        close(fd)
    }

    // MARK: HTTP

    /// The whole response to the bytes received so far, or nil while the request head is incomplete.
    static func response(to request: [UInt8], store: SnapshotStore) -> [UInt8]? {
        guard let headEnd = headEnd(request) else {
            if request.count > maximumRequestBytes {
                return render(status: "431 Request Header Fields Too Large", contentType: "application/json",
                              body: "{\"error\":\"request header fields too large\"}", includeBody: true)
            }
            return nil
        }
        guard headEnd <= maximumRequestBytes else {
            return render(status: "431 Request Header Fields Too Large", contentType: "application/json",
                          body: "{\"error\":\"request header fields too large\"}", includeBody: true)
        }
        guard let head = RequestHead(request[0..<headEnd]) else {
            return render(status: "400 Bad Request", contentType: "application/json", body: "{\"error\":\"bad request\"}", includeBody: true)
        }
        let (status, contentType, body) = route(head, store: store)
        return render(status: status, contentType: contentType, body: body, includeBody: head.method != "HEAD", version: head.version)
    }

    /// Index just past the blank line that ends the head (CRLF CRLF, or bare LF LF).
    private static func headEnd(_ bytes: [UInt8]) -> Int? {
        var index = 0
        while index < bytes.count {
            if bytes[index] == 10 {
                if index + 1 < bytes.count, bytes[index + 1] == 10 { return index + 2 }
                if index + 2 < bytes.count, bytes[index + 1] == 13, bytes[index + 2] == 10 { return index + 3 }
            }
            index += 1
        }
        return nil
    }

    struct RequestHead {
        let method: String
        let uri: String
        let version: String

        /// The request line and header lines (bytes: a String would read CR LF as one
        /// character), or nil when malformed.
        init?(_ bytes: ArraySlice<UInt8>) {
            let lines = bytes.split(separator: 10, omittingEmptySubsequences: false).map { $0.last == 13 ? $0.dropLast() : $0 }
            let parts = lines.first?.split(separator: 32, omittingEmptySubsequences: false) ?? []
            guard parts.count == 3, !parts[0].isEmpty, !parts[1].isEmpty,
                  parts[0].allSatisfy({ (65...90).contains($0) || $0 == 45 || $0 == 95 }),
                  parts[1].allSatisfy({ $0 > 32 && $0 < 127 }),
                  parts[2].elementsEqual("HTTP/1.1".utf8) || parts[2].elementsEqual("HTTP/1.0".utf8) else { return nil }
            for line in lines.dropFirst() where !line.isEmpty {
                guard let colon = line.firstIndex(of: 58), colon != line.startIndex,
                      line[..<colon].allSatisfy({ $0 > 32 && $0 < 127 }) else { return nil }
            }
            method = String(decoding: parts[0], as: UTF8.self)
            uri = String(decoding: parts[1], as: UTF8.self)
            version = String(decoding: parts[2], as: UTF8.self)
        }
    }

    private static func route(_ head: RequestHead, store: SnapshotStore) -> (status: String, contentType: String, body: String) {
        guard head.method == "GET" || head.method == "HEAD" else {
            return ("405 Method Not Allowed", "application/json", "{\"error\":\"method not allowed\"}")
        }
        let path = head.uri.split(separator: "?", maxSplits: 1, omittingEmptySubsequences: false).first.map(String.init) ?? head.uri
        let snapshot = store.read()
        switch path {
        case "/health", "/healthz":
            return (snapshot.health == .unhealthy ? "503 Service Unavailable" : "200 OK", "application/json", snapshot.healthJSON)
        case "/livez":
            let live = Liveness.decide(snapshotAgeSeconds: store.secondsSincePublished())
            return (live.ok ? "200 OK" : "503 Service Unavailable", "application/json", probeJSON(live, okStatus: "alive", failStatus: "stalled"))
        case "/readyz":
            let ready = snapshot.readiness
            return (ready.ok ? "200 OK" : "503 Service Unavailable", "application/json", probeJSON(ready, okStatus: "ready", failStatus: "not_ready"))
        case "/metrics":
            return ("200 OK", "application/json", snapshot.metricsJSON)
        case "/metrics/prometheus":
            return ("200 OK", "text/plain; version=0.0.4; charset=utf-8", snapshot.prometheusText)
        default:
            return ("404 Not Found", "application/json", "{\"error\":\"not found\",\"paths\":[\"/health\",\"/livez\",\"/readyz\",\"/metrics\",\"/metrics/prometheus\"]}")
        }
    }

    private static func render(status: String, contentType: String, body: String, includeBody: Bool, version: String = "HTTP/1.1") -> [UInt8] {
        let content = body + "\n"
        var out = Array("\(version) \(status)\r\nContent-Type: \(contentType)\r\nContent-Length: \(content.utf8.count)\r\nConnection: close\r\n\r\n".utf8)
        if includeBody { out += Array(content.utf8) }
        return out
    }
}
