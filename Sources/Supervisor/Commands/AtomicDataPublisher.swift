// atomic-data-publisher [--config PATH] [run | check-config | setup | teardown | print-sql | status | replay | backfill | config-reference]
// (DESIGN.md section 2). Every error a user can cause ends in one sentence naming what to fix,
// and a configuration problem exits 78 before anything in the database is touched. One file per
// subcommand, beside this one.

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
        subcommands: [Run.self, CheckConfig.self, Setup.self, Teardown.self, PrintSQL.self, Status.self, Replay.self, Backfill.self,
                      ConfigReferenceCommand.self],
        defaultSubcommand: Run.self)

    @OptionGroup var global: GlobalOptions
}
