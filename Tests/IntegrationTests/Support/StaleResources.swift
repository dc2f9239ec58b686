import Foundation
import Shared

/// What a test run that crashed (or was killed) left behind: its processes die with it (see
/// ManagedProcess), but its databases and work directories stay. Both are named after the test
/// runner's pid, `adp_it_<pid>_<random>` and `adp-it-<pid>-<random>`, so the next run can remove
/// those of runners that no longer exist, and never touches those of a run still going.
enum StaleResources {
    static let pid = ProcessInfo.processInfo.processIdentifier
    static var databasePrefix: String { "adp_it_\(pid)_" }
    static var directoryPrefix: String { "adp-it-\(pid)-" }

    private static let sweptOnce = LockedBox(false)

    /// Once per test run: drop `adp_it_<pid>_*` databases and remove `adp-it-<pid>-*` directories
    /// of dead pids. Databases only on a local server, where the pid means this machine's process.
    static func sweepOnce(server: DatabaseConfig) {
        let alreadySwept = sweptOnce.value
        sweptOnce.value = true
        if alreadySwept { return }

        let temp = FileManager.default.temporaryDirectory
        for name in (try? FileManager.default.contentsOfDirectory(atPath: temp.path)) ?? [] {
            if let owner = ownerPID(name, prefix: "adp-it-", separator: "-"), !isAlive(owner) {
                try? FileManager.default.removeItem(at: temp.appendingPathComponent(name))
            }
        }

        guard ["127.0.0.1", "localhost", "::1"].contains(server.host) || server.host.hasPrefix("/") else { return }
        guard let admin = try? PostgresConnection.connect(ConnectionParameters(server, applicationName: "adp-integration-tests")) else { return }
        defer { admin.close() }
        let names = (try? admin.execute("SELECT datname FROM pg_database WHERE datname LIKE 'adp\\_it\\_%'"))?.rows.compactMap { $0[0] } ?? []
        for name in names {
            if let owner = ownerPID(name, prefix: "adp_it_", separator: "_"), !isAlive(owner) {
                _ = try? admin.execute("DROP DATABASE IF EXISTS \(quoteIdentifier(name)) WITH (FORCE)")
            }
        }
    }

    private static func ownerPID(_ name: String, prefix: String, separator: Character) -> Int32? {
        guard name.hasPrefix(prefix) else { return nil }
        let parts = name.dropFirst(prefix.count).split(separator: separator)
        guard parts.count == 2 else { return nil }
        return Int32(parts[0])
    }

    private static func isAlive(_ pid: Int32) -> Bool {
        kill(pid, 0) == 0 || errno == EPERM
    }
}
