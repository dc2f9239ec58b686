// atomic-data-publisher [--config PATH] [run | check-config | setup | teardown | print-sql | status | replay]
// (DESIGN.md section 2). Every error a user can cause ends in one sentence naming what to fix,
// and a configuration problem exits 78 before anything in the database is touched.

import ArgumentParser
import Foundation
import Logging
import Shared

struct GlobalOptions: ParsableArguments {
    @Option(name: .long, help: "Read this TOML file instead of config/default.toml and config/local.toml.")
    var config: String?
}

@main
struct AtomicDataPublisher: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "atomic-data-publisher",
        abstract: "Publish atomic data for changed PostgreSQL rows to an ingestor.",
        version: PublisherVersion.current,
        subcommands: [Run.self, CheckConfig.self, Setup.self, Teardown.self, PrintSQL.self, Status.self, Replay.self],
        defaultSubcommand: Run.self)

    @OptionGroup var global: GlobalOptions
}

/// A failure already explained to the user: print it and exit with `status`.
struct UserFacingError: Error {
    var message: String
    var status: Int32
}

enum CommandSupport {
    static func fail(_ message: String, status: Int32) -> Never {
        writeAll(fd: 2, Array("atomic-data-publisher: \(message)\n".utf8))
        Foundation.exit(status)
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

    static func tables(_ config: PublisherConfig, named name: String?) -> [WatchedTable] {
        guard let name else { return config.service.watchedTables }
        guard let table = config.table(named: name) else {
            fail("table '\(name)' is not in service.watched_tables (watched: \(config.service.watchedTables.map(\.name).joined(separator: ", ")))", status: ExitStatus.config)
        }
        return [table]
    }

    /// The worker binary: next to this one, or in the Debian libexec folder.
    static func workerPath() -> String {
        if let override = ProcessInfo.processInfo.environment["ADP_WORKER_PATH"] { return override }
        let me = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0]
        let dir = (me as NSString).deletingLastPathComponent
        for candidate in [dir + "/atomic-data-table-worker",
                          (dir as NSString).deletingLastPathComponent + "/libexec/atomic-data-publisher/atomic-data-table-worker",
                          "/usr/libexec/atomic-data-publisher/atomic-data-table-worker"] where FileManager.default.isExecutableFile(atPath: candidate) {
            return candidate
        }
        return dir + "/atomic-data-table-worker"
    }

    static func say(_ line: String) {
        writeAll(fd: 1, Array((line + "\n").utf8))
    }
}

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Supervise one worker per watched table (the default).")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        HTTPClient.globalInit()
        let (config, warnings) = CommandSupport.loadConfig(global)
        LogSetup.bootstrap(level: config.logging.level, format: config.logging.format)
        let logger = Logger(label: "atomic-data-publisher")
        for warning in warnings { logger.warning("\(warning)") }
        preflight(config, logger: logger)
        let global = self.global
        let supervisor = Supervisor(config: config, workerPath: CommandSupport.workerPath(), logger: logger) {
            let loaded = try ConfigLoader.load(explicitPath: global.config, environment: ProcessInfo.processInfo.environment)
            try loaded.validate()
            return loaded.config
        }
        let status = supervisor.run()
        if status != 0 { throw ExitCode(status) }
    }

    /// Refuse to start (exit 78, database untouched) when a watched table or column is missing.
    /// An unreachable database is not a reason to refuse: workers wait for it with backoff.
    private func preflight(_ config: PublisherConfig, logger: Logger) {
        let db: PostgresConnection
        do {
            db = try PostgresConnection.connect(ConnectionParameters(config.database, applicationName: "atomic-data-publisher/preflight"))
        } catch {
            if error.isConfigurationFailure {
                CommandSupport.fail(error.kind == .tls ? error.description : "\(error.description); check [database] username, password and database_name",
                                    status: ExitStatus.config)
            }
            logger.warning("database not reachable yet; workers will keep trying", metadata: ["error": "\(error)"])
            return
        }
        for table in config.service.watchedTables {
            do {
                try TrackingSchema(table: table).verify(on: db)
            } catch {
                CommandSupport.fail("\(error)", status: ExitStatus.config)
            }
        }
    }
}

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate the configuration, connect, and check every watched table and query (like nginx -t).")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Only validate the files and environment; do not connect (for ExecStartPre: a database that is down at boot is the service's to wait for).")
    var offline = false

    func run() throws {
        let (config, warnings) = CommandSupport.loadConfig(global)
        for warning in warnings { CommandSupport.say("warning: \(warning)") }
        if offline {
            CommandSupport.say("configuration valid: \(config.service.watchedTables.count) watched tables (\(config.service.watchedTables.map(\.name).joined(separator: ", "))); database not checked (--offline)")
            return
        }
        let db = CommandSupport.connect(config, purpose: "check-config")
        var failed = 0
        for table in config.service.watchedTables {
            do {
                try TrackingSchema(table: table).verify(on: db)
                try db.prepare(name: "check_\(table.name)", sql: AtomicDataQuery(table.atomicDataQuery).wrapped)
                CommandSupport.say("ok      \(table.name): \(table.qualifiedName) key \(table.primaryKey), watching \(table.changeColumns.joined(separator: ", ")), publishing to \(table.publishEndpoint)")
            } catch {
                failed += 1
                CommandSupport.say("FAILED  \(table.name): \(error)")
            }
        }
        if failed > 0 {
            CommandSupport.fail("\(failed) of \(config.service.watchedTables.count) watched tables failed the check", status: ExitStatus.config)
        }
        CommandSupport.say("configuration ok: \(config.service.watchedTables.count) watched tables, database \(ConnectionParameters(config.database, applicationName: "").safeDescription), ingestor \(Redactor.redact(config.ingestor.baseURL))")
    }
}

struct Setup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create or update the tracking tables, functions and triggers (idempotent).")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "Only this watched table.") var table: String?

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let db = CommandSupport.connect(config, purpose: "setup")
        for t in CommandSupport.tables(config, named: table) {
            do {
                let changed = try TrackingSchema(table: t).install(on: db)
                CommandSupport.say("\(t.qualifiedName): \(changed ? "trigger installed" : "already up to date")")
            } catch {
                CommandSupport.fail("setup of \(t.qualifiedName) failed: \(error)", status: ExitStatus.config)
            }
        }
    }
}

struct Teardown: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Drop the triggers, functions and tracking tables (unpublished changes are lost).")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "Only this watched table.") var table: String?

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let db = CommandSupport.connect(config, purpose: "teardown")
        for t in CommandSupport.tables(config, named: table) {
            do {
                try TrackingSchema(table: t).uninstall(on: db)
                CommandSupport.say("\(t.qualifiedName): objects dropped")
            } catch {
                CommandSupport.fail("teardown of \(t.qualifiedName) failed: \(error)", status: ExitStatus.config)
            }
        }
    }
}

struct PrintSQL: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "print-sql", abstract: "Print the SQL that setup runs, for a DBA to apply by hand.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "Only this watched table.") var table: String?

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        for t in CommandSupport.tables(config, named: table) {
            CommandSupport.say(TrackingSchema(table: t).printableSQL)
        }
    }
}

struct Status: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Ask the running service's /health and print one line per table.")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let host = ["0.0.0.0", "::", ""].contains(config.service.healthCheckAddress) ? "127.0.0.1" : config.service.healthCheckAddress
        let url = "http://\(host.contains(":") ? "[\(host)]" : host):\(config.service.healthCheckPort)/health"
        let client = HTTPClient(timeoutMilliseconds: 5000, maximumBodyBytes: 1 << 24)  // /health lists every table
        let response: HTTPResponse
        switch client.perform(HTTPRequest(url: url, method: "GET")) {
        case .success(let r): response = r
        case .failure(let e): CommandSupport.fail("the service does not answer at \(url): \(e.message); is it running?", status: 3)
        }
        guard let object = try? JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any],
              let components = object["components"] as? [String: Any], let tables = components["tables"] as? [String: [String: Any]] else {
            CommandSupport.fail("unexpected answer from \(url) (HTTP \(response.status))", status: 3)
        }
        CommandSupport.say("service: \(object["status"] ?? "?") (version \(object["version"] ?? "?"), up \(object["uptime_seconds"] ?? 0) s)")
        for name in tables.keys.sorted() {
            let t = tables[name]!
            let pid = (t["pid"] as? Int).map(String.init) ?? "-"
            CommandSupport.say("\(name): \(t["state"] ?? "?") pid \(pid), restarts \(t["restarts"] ?? 0), backlog \(t["backlog"] ?? 0), database \(t["database"] ?? "?"), breaker \(t["circuit_breaker"] ?? "?"), last publish \((t["last_publish"] as? String) ?? "never")")
        }
        if response.status != 200 { throw ExitCode(1) }
    }
}

struct Replay: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Move dead-lettered changes back to the queue.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "The watched table.") var table: String
    @Flag(name: .long, help: "Replay every dead letter of the table.") var all = false
    @Option(name: .long, help: "Replay one dead letter by its tracking id.") var id: Int64?

    func validate() throws {
        if all == (id != nil) { throw ValidationError("give exactly one of --all or --id N") }
    }

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let t = CommandSupport.tables(config, named: table)[0]
        let db = CommandSupport.connect(config, purpose: "replay")
        let schema = TrackingSchema(table: t)
        let filter = all ? "TRUE" : "id = $1"
        do {
            let result = try db.execute("""
                WITH moved AS (DELETE FROM \(schema.failedTable) WHERE \(filter) RETURNING *)
                INSERT INTO \(schema.changesTable) (id, primary_key, operation, change_column_value, changed_at, attempts, last_error, next_attempt_at)
                SELECT id, primary_key, operation, change_column_value, changed_at, 0, last_error, NULL FROM moved
                """, all ? [] : [String(id!)])
            CommandSupport.say("\(t.qualifiedName): \(result.affectedRows) dead letter(s) queued again")
            if !all && result.affectedRows == 0 { throw ExitCode(1) }
        } catch let error as PostgresError {
            CommandSupport.fail("replay for \(t.qualifiedName) failed: \(error)", status: 1)
        }
    }
}
