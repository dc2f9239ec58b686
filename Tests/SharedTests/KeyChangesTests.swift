import XCTest
@testable import Shared

final class KeyChangesTests: XCTestCase {
    /// The grouping as first written (dictionary of arrays, every group sorted): `coalesce` must agree.
    private func reference(_ rows: [ChangeRow]) -> [KeyChanges] {
        var order: [String] = []
        var groups: [String: [ChangeRow]] = [:]
        for row in rows {
            if groups[row.primaryKey] == nil { order.append(row.primaryKey) }
            groups[row.primaryKey, default: []].append(row)
        }
        return order.map { KeyChanges(primaryKey: $0, rows: groups[$0]!.sorted { $0.id < $1.id }) }
    }

    private func row(_ id: Int64, _ key: String, attempts: Int = 0, permanent: Int = 0) -> ChangeRow {
        ChangeRow(id: id, primaryKey: key, operation: .update, attempts: attempts, permanentFailures: permanent)
    }

    func testKeysKeepTheirFirstAppearanceOrder_andRowsAreInIdOrder() {
        // Due rows in id order, then the covered rows (also in id order) appended after them.
        let rows = [row(3, "b"), row(5, "a"), row(8, "c"), row(4, "a"), row(9, "b"), row(1, "a")]
        let groups = KeyChanges.coalesce(rows)
        XCTAssertEqual(groups.map(\.primaryKey), ["b", "a", "c"])
        XCTAssertEqual(groups.map(\.ids), [[3, 9], [1, 4, 5], [8]])
        XCTAssertEqual(groups, reference(rows))
    }

    func testEmpty() { XCTAssertEqual(KeyChanges.coalesce([]), []) }

    func testRandomBatches_matchTheReference() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<300 {
            let count = Int.random(in: 0...60, using: &generator)
            var ids = Array(Int64(1)...Int64(count + 20)).shuffled(using: &generator).prefix(count)
            if Bool.random(using: &generator) { ids.sort() }
            let rows = ids.map { row($0, "k\(Int.random(in: 0..<8, using: &generator))") }
            XCTAssertEqual(KeyChanges.coalesce(rows), reference(rows), "for \(rows.map { ($0.id, $0.primaryKey) })")
        }
    }

    func testAttemptsAndPermanentFailures_areTheMaximumOverTheRows() {
        let group = KeyChanges(primaryKey: "a", rows: [row(1, "a", attempts: 2, permanent: 1), row(2, "a", attempts: 5), row(3, "a", permanent: 3)])
        XCTAssertEqual(group.attempts, 5)
        XCTAssertEqual(group.permanentFailures, 3)
        XCTAssertEqual(KeyChanges(primaryKey: "a", rows: []).attempts, 0)
    }
}
