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

struct CheckConfig: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "check-config", abstract: "Validate the configuration, connect, and check every watched table and query (like nginx -t).")
    @OptionGroup var global: GlobalOptions
    @Flag(name: .long, help: "Only validate the files and environment; do not connect (what `run` checks first: a database that is down at boot is the service's to wait for).")
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
                try TrackingSchema(table: table).verifyDependencies(on: db)
                try CommandSupport.prepareAtomicDataQuery(table, on: db)
                if table.capture == .wal, let room = try TrackingSchema(table: table).walSenderRoom(on: db) {
                    CommandSupport.say("warning: \(room)")
                }
                CommandSupport.say("ok      \(table.name): \(table.qualifiedName) key \(table.primaryKey), watching \(table.changeColumns.joined(separator: ", "))\(table.dependencies.isEmpty ? "" : " and " + table.dependencies.map { "\($0.qualifiedName).\($0.keyColumns.joined(separator: ","))" }.joined(separator: ", ")), publishing to \(table.publishEndpoint)\(table.capture == .wal ? ", captured from the WAL (slot \(TrackingSchema(table: table).slotName(database: config.database.databaseName)))" : "")")
            } catch {
                failed += 1
                CommandSupport.say("FAILED  \(table.name): \(error)")
            }
        }
        // A problem of room, not of configuration: a warning, and the exit status stays 0.
        do {
            if let warning = try ServerSessions.read(on: db, instance: config.resolvedInstanceId).warning(SessionBudget(config)) {
                CommandSupport.say("warning: \(warning)")
            }
        } catch {
            CommandSupport.say("warning: cannot compare the session budget with the server's free sessions: \(error)")
        }
        if failed > 0 {
            CommandSupport.fail("\(failed) of \(config.service.watchedTables.count) watched tables failed the check", status: ExitStatus.config)
        }
        CommandSupport.say("configuration ok: \(config.service.watchedTables.count) watched tables, database \(ConnectionParameters(config.database, applicationName: "").safeDescription), ingestor \(Redactor.redact(config.ingestor.baseURL))")
    }
}
