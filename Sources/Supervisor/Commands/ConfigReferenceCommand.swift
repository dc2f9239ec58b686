import ArgumentParser
import Shared

/// Prints the table of every configuration key that docs/configuration.md holds, generated from
/// the code's one table of keys, so the copy in the documentation can be checked and refreshed.
struct ConfigReferenceCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "config-reference",
        abstract: "Print every configuration key with its type, default, environment variable and meaning (Markdown).")

    func run() throws {
        writeAll(fd: 1, Array(ConfigReference.markdown().utf8))
    }
}
