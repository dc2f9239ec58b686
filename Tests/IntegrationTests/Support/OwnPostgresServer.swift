import Foundation
import Shared

/// A PostgreSQL server of the tests' own on 127.0.0.1 (trust authentication, fsync off, run as
/// the `postgres` OS user when the tests run as root), for settings the shared server may not
/// have: `wal_level = logical` for WAL capture, or a known `wal_level = replica`. One server per
/// setting per test process (`shared(walLevel:)`), stopped when the process exits.
final class OwnPostgresServer: @unchecked Sendable {
    let directory: URL
    let port: Int
    private let bin: URL

    private nonisolated(unsafe) static var servers: [String: OwnPostgresServer] = [:]
    private static let lock = NSLock()

    /// The process's server with this `wal_level`, started on first use.
    static func shared(walLevel: String) throws -> OwnPostgresServer {
        lock.lock()
        defer { lock.unlock() }
        if let server = servers[walLevel] { return server }
        let server = try OwnPostgresServer(settings: ["wal_level": walLevel, "max_replication_slots": "20", "max_wal_senders": "20"])
        if servers.isEmpty { atexit { OwnPostgresServer.stopAll() } }
        servers[walLevel] = server
        return server
    }

    private static func stopAll() {
        for server in servers.values { try? server.run("pg_ctl", ["-D", server.data.path, "-m", "immediate", "-w", "stop"]) }
    }

    private var data: URL { directory.appendingPathComponent("data") }

    private init(settings: [String: String]) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent(StaleResources.directoryPrefix + "pg-" + UUID().uuidString.prefix(8))
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        bin = URL(fileURLWithPath: ProcessInfo.processInfo.environment["ADP_TEST_PGBIN"] ?? "/usr/lib/postgresql/15/bin")
        port = try SupervisorProcess.freePort()
        try chown()
        try run("initdb", ["-D", data.path, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        var conf = "listen_addresses = '127.0.0.1'\nport = \(port)\nunix_socket_directories = '\(directory.path)'\nfsync = off\nsynchronous_commit = off\nfull_page_writes = off\nmax_connections = 200\n"
        for (key, value) in settings.sorted(by: { $0.key < $1.key }) { conf += "\(key) = '\(value)'\n" }
        let file = data.appendingPathComponent("postgresql.conf")
        try (try String(contentsOf: file, encoding: .utf8) + "\n" + conf).write(to: file, atomically: true, encoding: .utf8)
        try chown()
        try run("pg_ctl", ["-D", data.path, "-l", directory.appendingPathComponent("postgres.log").path, "-w", "-t", "60", "start"])
    }

    /// As `TestEnvironment.postgresServer()` gives the shared one: the maintenance database.
    var config: DatabaseConfig {
        var config = DatabaseConfig()
        config.host = "127.0.0.1"
        config.port = port
        config.username = "postgres"
        config.databaseName = "postgres"
        config.sslmode = "disable"
        config.connectTimeoutSeconds = 5
        config.statementTimeoutSeconds = 60
        return config
    }

    private static var runsAsRoot: Bool { getuid() == 0 }

    private func chown() throws {
        if Self.runsAsRoot { try runTool("/bin/chown", ["-R", "postgres:", directory.path], logDirectory: FileManager.default.temporaryDirectory) }
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        let path = bin.appendingPathComponent(tool).path
        if Self.runsAsRoot {
            try runTool("/sbin/runuser", ["-u", "postgres", "--", path] + arguments, logDirectory: directory)
        } else {
            try runTool(path, arguments, logDirectory: directory)
        }
    }
}
