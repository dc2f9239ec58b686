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
        do {
            let moved = try TrackingSchema(table: t).replay(db, id: all ? nil : id)
            CommandSupport.say("\(t.qualifiedName): \(moved) dead letter(s) queued again")
            if !all && moved == 0 { throw ExitCode(1) }
        } catch let error as PostgresError {
            CommandSupport.fail("replay for \(t.qualifiedName) failed: \(error)", status: 1)
        }
    }
}
