import Foundation
import Shared
import XCTest

/// `atomic-data-publisher --config PATH run` as a test's child process, with its /health,
/// /metrics and /metrics/prometheus on 127.0.0.1:`healthPort`.
final class SupervisorProcess {
    let process: ManagedProcess
    let healthPort: Int
    /// Where its /health answers: 127.0.0.1, or a simulated host's address.
    var healthHost = "127.0.0.1"
    private let http = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 1_000, maxConnections: 2, maximumBodyBytes: 1 << 26)

    /// `wrapper`: a command that runs the supervisor (e.g. `unshare --pid --fork ...`).
    /// `binaryDirectory`: run the binaries of another build (the previous release, for a rolling upgrade).
    init(configURL: URL, healthPort: Int, directory: URL, name: String, environment: [String: String] = [:], wrapper: [String] = [],
         binaryDirectory: URL? = nil) throws {
        self.healthPort = healthPort
        let binary = try binaryDirectory.map { $0.appendingPathComponent("atomic-data-publisher") } ?? TestEnvironment.binary(named: "atomic-data-publisher")
        let command = wrapper + [binary.path, "--config", configURL.path, "run"]
        process = try ManagedProcess(
            name: name, executable: URL(fileURLWithPath: command[0]),
            arguments: Array(command.dropFirst()), environment: environment,
            workingDirectory: directory, logDirectory: directory)
    }

    var pid: Int32 { process.pid }

    /// A port nobody listens on right now (bound, then released).
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw UnexpectedResult(description: "socket() failed: errno \(errno)") }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) } }
        guard bound == 0 else { throw UnexpectedResult(description: "bind() failed: errno \(errno)") }
        _ = withUnsafeMutablePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) } }
        return Int(UInt16(bigEndian: address.sin_port))
    }

    func get(_ path: String) throws -> HTTPResponse {
        switch http.perform(HTTPRequest(url: "http://\(healthHost):\(healthPort)\(path)", method: "GET")) {
        case .success(let response): return response
        case .failure(let error): throw error
        }
    }

    /// GET /health: the status code and the body.
    func health() throws -> (status: Int, body: JSON) {
        let response = try get("/health")
        return (response.status, try JSON(parsing: Data(response.body)))
    }

    func metrics() throws -> JSON {
        try JSON(parsing: Data(try get("/metrics").body))
    }

    /// Table name → worker pid, for tables whose worker is running.
    func workerPIDs() throws -> [String: Int32] {
        let tables = try health().body["components"]?["tables"]?.object ?? [:]
        var pids: [String: Int32] = [:]
        for (name, entry) in tables where entry["state"] == "running" {
            if let pid = entry["pid"]?.int { pids[name] = Int32(pid) }
        }
        return pids
    }

    func tableState(_ table: String) throws -> String? {
        try health().body["components"]?["tables"]?[table]?["state"]?.string
    }

    /// Error or critical log lines not listed in `expected` (substrings of the message), and
    /// stderr lines that are not JSON (a crash's backtrace).
    func unexpectedLogLines(expected: [String] = []) -> [String] {
        process.stderrText().split(separator: "\n").map(String.init).filter { line in
            guard let json = try? JSON(parsing: line), let level = json["level"]?.string else { return true }
            guard level == "error" || level == "critical" else { return false }
            let message = json["message"]?.string ?? ""
            return !expected.contains { message.contains($0) }
        }
    }
}

/// True while `pid` exists and is not a zombie.
func processIsAlive(_ pid: Int32) -> Bool {
    guard kill(pid, 0) == 0 else { return false }
    guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
          let close = stat.lastIndex(of: ")") else { return false }
    let state = stat[stat.index(close, offsetBy: 2)]
    return state != "Z" && state != "X"
}

/// The command line of `pid`, arguments joined by spaces.
func processCommandLine(_ pid: Int32) -> String {
    guard let data = FileManager.default.contents(atPath: "/proc/\(pid)/cmdline") else { return "" }
    return String(decoding: data, as: UTF8.self).split(separator: "\0").joined(separator: " ")
}

/// A Unix datagram socket standing in for systemd's NOTIFY_SOCKET: collects what sd_notify sends.
final class NotifySocket {
    let path: String
    private let fd: Int32
    private(set) var messages: [(at: Date, text: String)] = []

    init(path: String) throws {
        self.path = path
        unlink(path)
        fd = socket(AF_UNIX, Int32(SOCK_DGRAM.rawValue), 0)
        guard fd >= 0 else { throw UnexpectedResult(description: "socket(AF_UNIX) failed: errno \(errno)") }
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { throw UnexpectedResult(description: "socket path too long: \(path)") }
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in
            for (i, b) in bytes.enumerated() { buffer[i] = b }
        }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0 else { throw UnexpectedResult(description: "bind(\(path)) failed: errno \(errno)") }
        _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)
    }

    deinit {
        close(fd)
        unlink(path)
    }

    /// Read every datagram waiting; returns all received so far.
    @discardableResult
    func drain() -> [(at: Date, text: String)] {
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            messages.append((Date(), String(decoding: buffer[0..<n], as: UTF8.self)))
        }
        return messages
    }

    /// Every `KEY=value` assignment received, in order.
    var assignments: [(at: Date, key: String, value: String)] {
        drain().flatMap { message in
            message.text.split(separator: "\n").map { line -> (Date, String, String) in
                let parts = line.split(separator: "=", maxSplits: 1)
                return (message.at, String(parts[0]), parts.count > 1 ? String(parts[1]) : "")
            }
        }
    }
}
