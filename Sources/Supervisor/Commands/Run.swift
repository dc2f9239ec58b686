import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Shared

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Supervise one worker per watched table (the default).")
    @OptionGroup var global: GlobalOptions

    func run() throws {
        let (config, warnings) = CommandSupport.loadConfig(global)
        LogSetup.bootstrap(level: config.logging.level, format: config.logging.format, metadata: ["instance": "\(config.resolvedInstanceId)"])
        let logger = Logger(label: "atomic-data-publisher")
        for warning in warnings { logger.warning("\(warning)") }
        preflight(config, logger: logger)
        // The supervisor itself is another binary without libpq and libcurl (8 MiB less RSS for
        // the life of the service, docs/performance.md): exec it in this process's place, so the
        // PID (systemd's main PID), argv, environment and open descriptors stay the same.
        let supervisor = CommandSupport.supervisorPath()
        setenv("ADP_WORKER_PATH", CommandSupport.workerPath(), 1)
        setenv(SupervisorExec.marker, SupervisorExec.markerValue(configPath: global.config), 1)
        let argv = CommandLine.arguments.map { strdup($0) } + [nil]
        execv(supervisor, argv)
        let reason = String(cString: strerror(errno))
        CommandSupport.fail("cannot start the supervisor \(supervisor): \(reason.lowercased()); reinstall the package or set ADP_SUPERVISOR_PATH",
                            status: ExitStatus.transient)
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
                try TrackingSchema(table: table).verifyDependencies(on: db)
                try CommandSupport.prepareAtomicDataQuery(table, on: db)
            } catch {
                CommandSupport.fail("\(error)", status: ExitStatus.config)
            }
        }
    }
}
