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
