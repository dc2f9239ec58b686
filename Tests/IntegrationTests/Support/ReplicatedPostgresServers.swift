import Foundation
import Shared

/// A primary and a streaming standby of the test's own, both on 127.0.0.1 (two ports), trust
/// authentication, run as the `postgres` OS user when the tests run as root (as
/// `NetworkPostgresServer` does). The standby is a `pg_basebackup -R` copy of the primary.
///
/// Replication is synchronous with `remote_apply` (set on the primary only, after the copy, so
/// the promoted standby does not wait for a standby of its own): a commit becomes visible on the
/// primary only once the standby has applied it. A failover test is then about the service, not
/// about what asynchronous replication can lose: whatever the service read and published from
/// the primary is on the standby too.
///
/// `logicalFailoverSlots` (PostgreSQL 17 and later, `bin` names such a server's binaries): the
/// primary has `wal_level = logical` and `synchronized_standby_slots` naming the standby's
/// physical slot; the standby synchronises the primary's `failover = true` logical slots
/// (`sync_replication_slots`, `hot_standby_feedback`, a `dbname` in its `primary_conninfo`), so
/// such a slot survives the standby's promotion.
final class ReplicatedPostgresServers {
    let directory: URL
    let primaryPort: Int
    let standbyPort: Int
    private let bin: URL
    private let logs: URL
    private var running: Set<String> = []

    static let standbySlot = "adp_test_standby"

    init(directory: URL, bin: URL? = nil, logicalFailoverSlots: Bool = false) throws {
        self.directory = directory
        logs = directory.appendingPathComponent("tools")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        self.bin = bin ?? URL(fileURLWithPath: ProcessInfo.processInfo.environment["ADP_TEST_PGBIN"] ?? "/usr/lib/postgresql/15/bin")
        primaryPort = try SupervisorProcess.freePort()
        standbyPort = try SupervisorProcess.freePort()
        try chown()
        let primary = dataDirectory("primary")
        try run("initdb", ["-D", primary.path, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        try "local all all trust\nhost all all 127.0.0.1/32 trust\nhost replication all 127.0.0.1/32 trust\n"
            .write(to: primary.appendingPathComponent("pg_hba.conf"), atomically: true, encoding: .utf8)
        try appendSettings("primary", port: primaryPort, logicalFailoverSlots ? "wal_level = logical\n" : "")
        try start("primary")
        try run("pg_basebackup", ["-h", "127.0.0.1", "-p", String(primaryPort), "-U", "postgres", "-D", dataDirectory("standby").path,
                                  "-R", "-X", "stream", "--no-sync"]
                + (logicalFailoverSlots ? ["-C", "-S", Self.standbySlot, "-d", "dbname=postgres"] : []))
        try appendSettings("standby", port: standbyPort, logicalFailoverSlots ? "hot_standby_feedback = on\nsync_replication_slots = on\n" : "")
        try start("standby")
        let admin = try connect(port: primaryPort)
        if logicalFailoverSlots { try admin.execute("ALTER SYSTEM SET synchronized_standby_slots = '\(Self.standbySlot)'") }
        try admin.execute("ALTER SYSTEM SET synchronous_standby_names = '*'")
        try admin.execute("ALTER SYSTEM SET synchronous_commit = 'remote_apply'")
        try admin.execute("SELECT pg_reload_conf()")
        let deadline = Date().addingTimeInterval(30)
        while try admin.execute("SELECT count(*) FROM pg_stat_replication WHERE state = 'streaming' AND sync_state = 'sync'")[0, 0] != "1" {
            guard Date() < deadline else { throw UnexpectedResult(description: "the standby did not become a synchronous streaming standby within 30 s") }
            Thread.sleep(forTimeInterval: 0.1)
        }
    }

    deinit {
        for name in running { try? run("pg_ctl", ["-D", dataDirectory(name).path, "-m", "immediate", "-w", "stop"]) }
    }

    /// The primary goes away at once (no shutdown checkpoint, sessions cut), as in a crash.
    func stopPrimary() throws {
        try run("pg_ctl", ["-D", dataDirectory("primary").path, "-m", "immediate", "-w", "stop"])
        running.remove("primary")
    }

    /// The standby becomes the primary; returns once it accepts writes (`pg_ctl promote -w`).
    func promoteStandby() throws {
        try run("pg_ctl", ["-D", dataDirectory("standby").path, "-w", "-t", "60", "promote"])
    }

    /// Over TCP on 127.0.0.1, as the `postgres` role.
    func config(ports: [Int]) -> DatabaseConfig {
        var config = DatabaseConfig()
        config.host = ports.map { _ in "127.0.0.1" }.joined(separator: ",")
        config.ports = ports
        config.username = "postgres"
        config.databaseName = "postgres"
        config.sslmode = "disable"
        config.connectTimeoutSeconds = 5
        return config
    }

    func connect(port: Int) throws -> PostgresConnection {
        try PostgresConnection.connect(ConnectionParameters(config(ports: [port]), applicationName: "failover-test"))
    }

    func logTail(_ name: String) -> String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("\(name).log"), encoding: .utf8)) ?? ""
        return "\(name).log:\n" + text.split(separator: "\n").suffix(10).joined(separator: "\n")
    }

    private func dataDirectory(_ name: String) -> URL { directory.appendingPathComponent(name) }

    private func appendSettings(_ name: String, port: Int, _ extra: String = "") throws {
        let conf = dataDirectory(name).appendingPathComponent("postgresql.conf")
        let settings = "listen_addresses = '127.0.0.1'\nport = \(port)\nunix_socket_directories = '\(directory.path)'\nfsync = off\nmax_connections = 40\n" + extra
        try (try String(contentsOf: conf, encoding: .utf8) + "\n" + settings).write(to: conf, atomically: true, encoding: .utf8)
        try chown()
    }

    private func start(_ name: String) throws {
        try run("pg_ctl", ["-D", dataDirectory(name).path, "-l", directory.appendingPathComponent("\(name).log").path, "-w", "-t", "60", "start"])
        running.insert(name)
    }

    private static var runsAsRoot: Bool { getuid() == 0 }

    private func chown() throws {
        if Self.runsAsRoot { try runTool("/bin/chown", ["-R", "postgres:", directory.path], logDirectory: logs) }
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        try runServerTool(tool, in: bin, arguments, logDirectory: logs)
    }
}
