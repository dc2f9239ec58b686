// What every subcommand shares: loading the configuration, connecting, failing with one sentence.

import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Shared

enum CommandSupport {
    static func fail(_ message: String, status: Int32) -> Never {
        writeAll(fd: 2, Array("atomic-data-publisher: \(message)\n".utf8))
        Glibc.exit(status)
    }

    /// Load and validate, or exit 78 with the loader's message (file, key, problem).
    static func loadConfig(_ global: GlobalOptions) -> (PublisherConfig, [String]) {
        do {
            let loaded = try ConfigLoader.load(explicitPath: global.config, environment: ProcessInfo.processInfo.environment)
            try loaded.validate()
            return (loaded.config, loaded.warnings)
        } catch {
            fail("\(error)", status: ExitStatus.config)
        }
    }

    static func connect(_ config: PublisherConfig, purpose: String) -> PostgresConnection {
        do {
            return try PostgresConnection.connect(ConnectionParameters(config.database, applicationName: "atomic-data-publisher/\(purpose)"))
        } catch {
            fail(error.kind == .tls ? error.description : "\(error.description); check [database] host, port, username, password and database_name",
                 status: error.isConfigurationFailure ? ExitStatus.config : ExitStatus.transient)
        }
    }

    /// Prepare (never run) the table's atomic data query: a syntax error, a missing column or
    /// function is a configuration error naming the key and the table.
    static func prepareAtomicDataQuery(_ table: WatchedTable, on db: PostgresConnection) throws {
        do {
            try db.prepare(name: "check_\(table.name)", sql: AtomicDataQuery(table.atomicDataQuery).wrapped)
        } catch {
            throw SchemaProblem("the atomic_data_query of watched table \"\(table.name)\" does not prepare: \(error)")
        }
    }

    static func tables(_ config: PublisherConfig, named name: String?) -> [WatchedTable] {
        guard let name else { return config.service.watchedTables }
        guard let table = config.table(named: name) else {
            fail("table '\(name)' is not in service.watched_tables (watched: \(config.service.watchedTables.map(\.name).joined(separator: ", ")))", status: ExitStatus.config)
        }
        return [table]
    }

    /// The worker binary: next to this one, or in the Debian libexec folder.
    static func workerPath() -> String {
        helperPath("atomic-data-table-worker", override: "ADP_WORKER_PATH")
    }

    /// The supervisor binary that `run` execs (next to this one, or in the libexec folder).
    static func supervisorPath() -> String {
        helperPath("atomic-data-publisher-supervisor", override: "ADP_SUPERVISOR_PATH")
    }

    private static func helperPath(_ name: String, override: String) -> String {
        if let path = ProcessInfo.processInfo.environment[override] { return path }
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let dir = me.deletingLastPathComponent
        for candidate in [dir + "/" + name,
                          dir.deletingLastPathComponent + "/libexec/atomic-data-publisher/" + name,
                          "/usr/libexec/atomic-data-publisher/" + name] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return dir + "/" + name
    }

    static func say(_ line: String) {
        writeAll(fd: 1, Array((line + "\n").utf8))
    }
}
