import ArgumentParser
import Foundation
import XCTest

@testable import PublisherCLI

/// `--help` (the ArgumentParser subcommands), the manual page and docs/operations.md list the
/// same commands and the same exit statuses: three copies of one list drift unless a test
/// compares them.
final class CommandDocumentationTests: XCTestCase {
    private static let root = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    private func read(_ path: String) throws -> [String] {
        try String(contentsOf: Self.root.appendingPathComponent(path), encoding: .utf8)
            .split(separator: "\n", omittingEmptySubsequences: false).map(String.init)
    }

    /// The lines of a man page section, from `.SH NAME` to the next `.SH`.
    private func manSection(_ name: String, in lines: [String]) -> [String] {
        guard let start = lines.firstIndex(of: ".SH \(name)") else { return [] }
        let rest = lines[(start + 1)...]
        return Array(rest.prefix { !$0.hasPrefix(".SH ") })
    }

    /// The Markdown table rows of the section headed `## heading`.
    private func markdownRows(under heading: String, in lines: [String]) -> [String] {
        guard let start = lines.firstIndex(of: "## \(heading)") else { return [] }
        let section = lines[(start + 1)...].prefix { !$0.hasPrefix("## ") && !$0.hasPrefix("### ") }
        return section.filter { $0.hasPrefix("| `") }
    }

    private var helpCommands: Set<String> {
        Set(AtomicDataPublisher.configuration.subcommands.map { $0._commandName })
    }

    /// `.TP` then `.B name ...`: the first word of each tagged paragraph, without roff escapes.
    private func manCommands() throws -> Set<String> {
        let lines = manSection("COMMANDS", in: try read("packaging/man/atomic-data-publisher.1"))
        var names: Set<String> = []
        for (index, line) in lines.enumerated() where line == ".TP" && index + 1 < lines.count {
            let tag = lines[index + 1]
            guard tag.hasPrefix(".B ") else { continue }
            let word = tag.dropFirst(3).split(separator: " ").first.map(String.init) ?? ""
            names.insert(word.replacingOccurrences(of: "\\-", with: "-"))
        }
        return names
    }

    /// The first word of the first column's code span, options (`--version`) left out.
    private func docsCommands() throws -> Set<String> {
        let rows = markdownRows(under: "Commands", in: try read("docs/operations.md"))
        return Set(rows.compactMap { row -> String? in
            let cell = row.dropFirst(3)
            guard let word = cell.split(whereSeparator: { $0 == " " || $0 == "`" }).first, !word.hasPrefix("--") else { return nil }
            return String(word)
        })
    }

    func testTheManPage_listsExactlyTheCommandsOfHelp() throws {
        XCTAssertEqual(try manCommands(), helpCommands, "packaging/man/atomic-data-publisher.1, COMMANDS")
    }

    func testOperationsDoc_listsExactlyTheCommandsOfHelp() throws {
        XCTAssertEqual(try docsCommands(), helpCommands, "docs/operations.md, Commands table")
    }

    func testTheManPage_andOperationsDoc_giveTheSameExitStatuses() throws {
        let man = manSection("EXIT STATUS", in: try read("packaging/man/atomic-data-publisher.1"))
        var manCodes: Set<Int> = []
        for (index, line) in man.enumerated() where line == ".TP" && index + 1 < man.count {
            if let code = Int(man[index + 1].replacingOccurrences(of: ".B ", with: "")) { manCodes.insert(code) }
        }
        let doc = try read("docs/operations.md")
        // The exit status column (the last cell) of the commands table, plus the usage line below it.
        var docCodes: Set<Int> = []
        let cells = markdownRows(under: "Commands", in: doc).compactMap { $0.split(separator: "|").last.map(String.init) }
        let usage = doc.filter { $0.hasPrefix("Command-line usage errors exit") }
        XCTAssertEqual(usage.count, 1, "docs/operations.md states the usage error's status")
        for text in cells + usage {
            for piece in text.split(separator: "`").enumerated() where piece.offset % 2 == 1 {
                if let code = Int(piece.element) { docCodes.insert(code) }
            }
        }
        XCTAssertFalse(manCodes.isEmpty)
        XCTAssertEqual(manCodes, docCodes, "man page EXIT STATUS against docs/operations.md's commands table")
    }
}
