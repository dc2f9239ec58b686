import Foundation
import Shared

/// A PostgreSQL server of the test's own (not the shared ADP_TEST_PG* one): its data directory
/// under the test's work directory, `ssl = on` with the given certificate, listening on 127.0.0.1
/// only, started as the `postgres` OS user when the tests run as root (PostgreSQL refuses root),
/// as dev/lib/common.sh does. pg_hba: `local` trust (setup), then for TCP: `cert` for the role
/// `certRole` (a client certificate whose CN is that role), `scram-sha-256` over TLS for the rest,
/// and no plain TCP at all.
final class TLSPostgresServer {
    let directory: URL
    let port: Int
    private let bin: URL
    /// The tools' output (root's, outside the server's directory).
    private let logs: URL
    private var running = false

    static let passwordRole = "tls_user"
    static let password = "tls-test-password"
    static let certRole = "tls_client"

    struct Failed: Error, CustomStringConvertible { let description: String }

    init(directory: URL, certificates: TestCertificates) throws {
        self.directory = directory
        logs = directory.deletingLastPathComponent().appendingPathComponent("tls-pg-tools")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        bin = try Self.binDirectory()
        port = try SupervisorProcess.freePort()
        let owner = Self.runsAsRoot ? "postgres" : nil
        let data = directory.appendingPathComponent("data")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)

        // The server reads its key as its own OS user, 0600.
        let tlsDirectory = directory.appendingPathComponent("tls")
        try FileManager.default.createDirectory(at: tlsDirectory, withIntermediateDirectories: true)
        for (source, name) in [(certificates.serverCertificate, "server.crt"), (certificates.serverKey, "server.key"),
                               (certificates.caCertificate, "ca.crt")] {
            try FileManager.default.copyItem(atPath: source, toPath: tlsDirectory.appendingPathComponent(name).path)
        }
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: tlsDirectory.appendingPathComponent("server.key").path)
        if let owner {
            try runTool("/bin/chown", ["-R", "\(owner):", directory.path], logDirectory: logs)
        }

        try run("initdb", ["-D", data.path, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        let hba = """
            local all all trust
            hostssl all \(Self.certRole) 127.0.0.1/32 cert
            hostssl all all 127.0.0.1/32 scram-sha-256
            """
        try (hba + "\n").write(to: data.appendingPathComponent("pg_hba.conf"), atomically: true, encoding: .utf8)
        let settings = """
            listen_addresses = '127.0.0.1'
            port = \(port)
            unix_socket_directories = '\(directory.path)'
            ssl = on
            ssl_cert_file = '\(tlsDirectory.appendingPathComponent("server.crt").path)'
            ssl_key_file = '\(tlsDirectory.appendingPathComponent("server.key").path)'
            ssl_ca_file = '\(tlsDirectory.appendingPathComponent("ca.crt").path)'
            fsync = off
            max_connections = 20
            """
        let conf = data.appendingPathComponent("postgresql.conf")
        let existing = try String(contentsOf: conf, encoding: .utf8)
        try (existing + "\n" + settings + "\n").write(to: conf, atomically: true, encoding: .utf8)
        if let owner { try runTool("/bin/chown", ["-R", "\(owner):", directory.path], logDirectory: logs) }
        try run("pg_ctl", ["-D", data.path, "-l", directory.appendingPathComponent("postgres.log").path, "-w", "-t", "60", "start"])
        running = true
        try run("psql", ["-h", directory.path, "-p", String(port), "-U", "postgres", "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c",
                         "CREATE ROLE \(Self.passwordRole) LOGIN PASSWORD '\(Self.password)'; CREATE ROLE \(Self.certRole) LOGIN;"])
    }

    deinit { stop() }

    func stop() {
        guard running else { return }
        running = false
        try? run("pg_ctl", ["-D", directory.appendingPathComponent("data").path, "-m", "immediate", "-w", "stop"])
    }

    /// Settings to reach it over TCP as `passwordRole`; the TLS keys are the caller's to set.
    func config(host: String = "localhost") -> DatabaseConfig {
        var config = DatabaseConfig()
        config.host = host
        config.port = port
        config.username = Self.passwordRole
        config.password = Self.password
        config.databaseName = "postgres"
        config.connectTimeoutSeconds = 5
        return config
    }

    func logTail() -> String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("postgres.log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(15).joined(separator: "\n")
    }

    private static var runsAsRoot: Bool { getuid() == 0 }

    private func run(_ tool: String, _ arguments: [String]) throws {
        try runServerTool(tool, in: bin, arguments, logDirectory: logs)
    }

    private static func binDirectory() throws -> URL {
        if let dir = ProcessInfo.processInfo.environment["ADP_TEST_PGBIN"], !dir.isEmpty { return URL(fileURLWithPath: dir) }
        let root = "/usr/lib/postgresql"
        let versions = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).compactMap(Int.init).sorted()
        guard let newest = versions.last else {
            throw Failed(description: "no PostgreSQL server under \(root): install postgresql (dev/test does), or set ADP_TEST_PGBIN")
        }
        return URL(fileURLWithPath: "\(root)/\(newest)/bin")
    }
}
