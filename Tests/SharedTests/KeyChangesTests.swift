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

final class JitterRandomTests: XCTestCase {
    /// SplitMix64's published sequence for seed 0 (so the generator is the real one), and units
    /// that spread over [0, 1) for jitter.
    func testSplitMix64_knownSequence_andUnitsSpreadOverTheInterval() {
        var g = JitterRandom(seed: 0)
        XCTAssertEqual([g.next(), g.next(), g.next()], [0xE220_A839_7B1D_CDAF, 0x6E78_9E6A_A1B9_65F4, 0x06C4_5D18_8009_454F])
        var r = JitterRandom(seed: 42)
        let units = (0..<10_000).map { _ in Double.random(in: 0..<1, using: &r) }
        XCTAssertTrue(units.allSatisfy { $0 >= 0 && $0 < 1 })
        for decile in 0..<10 {
            let n = units.filter { Int($0 * 10) == decile }.count
            XCTAssertTrue((800...1200).contains(n), "decile \(decile): \(n) of 10,000")
        }
        var a = JitterRandom(), b = JitterRandom()
        XCTAssertNotEqual(a.next(), b.next(), "seeded from the system, not a constant")
    }
}
