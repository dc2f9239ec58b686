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

struct Setup: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Create or update the tracking tables, functions and triggers (idempotent).")
    @OptionGroup var global: GlobalOptions
    @Option(name: .long, help: "Only this watched table.") var table: String?

    func run() throws {
        let (config, _) = CommandSupport.loadConfig(global)
        let db = CommandSupport.connect(config, purpose: "setup")
        for t in CommandSupport.tables(config, named: table) {
            do {
                let schema = TrackingSchema(table: t)
                // Only here, not in a worker's setup: the worker reports the lost slot until an
                // operator has seen this sentence.
                let dropped = try schema.dropLostSlot(on: db)
                let changed = try schema.install(on: db, warn: { CommandSupport.say("warning: \($0)") })
                CommandSupport.say("\(t.qualifiedName): \(changed ? "trigger installed" : "already up to date")")
                if let dropped { CommandSupport.say("warning: \(t.qualifiedName): \(dropped)") }
            } catch {
                CommandSupport.fail("setup of \(t.qualifiedName) failed: \(error)", status: ExitStatus.config)
            }
        }
    }
}
