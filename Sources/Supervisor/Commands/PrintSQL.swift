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

struct PrintSQL: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "print-sql", abstract: "Print the SQL that setup runs, for a DBA to apply by hand.")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "Only this watched table.") var table: String?

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        for t in CommandSupport.tables(config, named: table) {
            CommandSupport.say(TrackingSchema(table: t).printableSQL(database: config.database.databaseName))
        }
    }
}
