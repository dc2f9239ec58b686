import Foundation
import XCTest

@testable import Shared
@testable import SharedCore

/// docs/configuration.md's table of keys is generated (`atomic-data-publisher config-reference`):
/// the committed copy must be exactly what the code prints, and the code's rows must come from
/// the one table of keys and the built-in defaults.
final class ConfigReferenceTests: XCTestCase {
    private static let document = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("docs/configuration.md")

    func testTheCommittedTable_isExactlyWhatConfigReferencePrints() throws {
        let text = try String(contentsOf: Self.document, encoding: .utf8)
        let committed = try XCTUnwrap(ConfigReference.block(in: text), "docs/configuration.md has no config-reference markers")
        XCTAssertEqual(committed, ConfigReference.markdown(),
                       "docs/configuration.md is stale: replace its block with the output of `atomic-data-publisher config-reference`")
    }

    func testEveryKey_hasOneRow_withItsEnvironmentVariable() {
        let rows = ConfigReference.markdown().split(separator: "\n").filter { $0.hasPrefix("| `") }
        XCTAssertEqual(rows.count, ConfigField.all.count + 1, "one row per key, plus service.watched_tables")
        for field in ConfigField.all {
            let row = rows.filter { $0.hasPrefix("| `\(field.path)` |") }
            XCTAssertEqual(row.count, 1, field.path)
            XCTAssertTrue(row.first?.contains("`…_\(field.section.uppercased())_\(field.key.uppercased())`") ?? false, "\(row)")
        }
    }

    func testTypesAndDefaults_comeFromTheFieldAndPublisherConfig() {
        let table = ConfigReference.markdown()
        XCTAssertTrue(table.contains("| `database.port` | integer or string | `5432` |"), table)
        XCTAssertTrue(table.contains("| `ingestor.retry_delay_seconds` | number | `5` |"), table)
        XCTAssertTrue(table.contains("| `service.lease_fence_seconds` | number | `-1` |"), table)
        XCTAssertTrue(table.contains("| `ingestor.allow_insecure_http` | boolean | `false` |"), table)
        XCTAssertTrue(table.contains("| `logging.format` | string | `\"auto\"` |"), table)
    }

    func testTheBlock_isNil_withoutBothMarkers() {
        XCTAssertNil(ConfigReference.block(in: "no markers here"))
        XCTAssertNil(ConfigReference.block(in: ConfigReference.beginMarker + "\n| x |\n"))
    }
}
