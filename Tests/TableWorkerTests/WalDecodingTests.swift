import Shared
import XCTest
@testable import TableWorker

/// pgoutput's protocol version 1 as bytes, and the keys the WAL mode derives from it: the same
/// rows the capture and dependency triggers write (docs/database.md, "What is captured").
final class WalDecodingTests: XCTestCase {
    // MARK: bytes

    private func be(_ value: UInt64, _ size: Int) -> [UInt8] { (0..<size).reversed().map { UInt8(truncatingIfNeeded: value >> UInt64($0 * 8)) } }
    private func cstring(_ s: String) -> [UInt8] { Array(s.utf8) + [0] }
    private func tuple(_ values: [PgOutput.Value]) -> [UInt8] {
        var bytes = be(UInt64(values.count), 2)
        for v in values {
            switch v {
            case .null: bytes.append(UInt8(ascii: "n"))
            case .unchanged: bytes.append(UInt8(ascii: "u"))
            case .text(let t): bytes += [UInt8(ascii: "t")] + be(UInt64(t.utf8.count), 4) + Array(t.utf8)
            }
        }
        return bytes
    }
    private func relation(_ oid: UInt32, _ schema: String, _ name: String, _ columns: [(String, Bool)], identity: Character = "d") -> [UInt8] {
        var bytes: [UInt8] = [UInt8(ascii: "R")] + be(UInt64(oid), 4) + cstring(schema) + cstring(name) + [UInt8(ascii: Unicode.Scalar(String(identity))!)]
        bytes += be(UInt64(columns.count), 2)
        for (column, key) in columns { bytes += [key ? 1 : 0] + cstring(column) + be(23, 4) + be(UInt64(UInt32.max), 4) }
        return bytes
    }

    func testStreamMessages_xlogDataAndKeepalive() throws {
        let w: [UInt8] = [UInt8(ascii: "w")] + be(0x16_0000_0010, 8) + be(0x16_0000_0020, 8) + be(7, 8) + [UInt8(ascii: "B"), 9]
        XCTAssertEqual(try PgOutput.streamMessage(w), .xlogData(start: 0x16_0000_0010, walEnd: 0x16_0000_0020, payload: [UInt8(ascii: "B"), 9]))
        let k: [UInt8] = [UInt8(ascii: "k")] + be(0x2_0000_0300, 8) + be(0, 8) + [1]
        XCTAssertEqual(try PgOutput.streamMessage(k), .keepalive(walEnd: 0x2_0000_0300, replyRequested: true))
        XCTAssertThrowsError(try PgOutput.streamMessage([UInt8(ascii: "k"), 1, 2]), "a truncated message is an error, not a crash")
    }

    func testStatusUpdate_reportsTheLSNAsWrittenFlushedAndApplied() {
        let bytes = PgOutput.statusUpdate(lsn: 0x1_0000_00AB, unixNow: 946_684_801, replyRequested: false)
        XCTAssertEqual(bytes.count, 34)
        XCTAssertEqual(bytes[0], UInt8(ascii: "r"))
        for offset in [1, 9, 17] { XCTAssertEqual(Array(bytes[offset..<offset + 8]), be(0x1_0000_00AB, 8)) }
        XCTAssertEqual(Array(bytes[25..<33]), be(1_000_000, 8), "microseconds since 2000-01-01")
        XCTAssertEqual(PgOutput.lsnText(0x16_B374_D848), "16/B374D848")
        XCTAssertEqual(PgOutput.parseLSN("16/B374D848"), 0x16_B374_D848)
    }

    func testMessages_beginCommitRelationAndRowChanges() throws {
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "B")] + be(0x500, 8) + be(42, 8) + be(777, 4)), .begin(finalLSN: 0x500, commitMicroseconds: 42, xid: 777))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "C"), 0] + be(0x500, 8) + be(0x530, 8) + be(42, 8)), .commit(commitLSN: 0x500, endLSN: 0x530, commitMicroseconds: 42))
        let r = try PgOutput.message(relation(16384, "public", "items", [("id", true), ("v", false)]))
        XCTAssertEqual(r, .relation(.init(oid: 16384, schema: "public", name: "items", replicaIdentity: "d",
                                          columns: [.init(name: "id", typeOID: 23, isKey: true), .init(name: "v", typeOID: 23, isKey: false)])))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "I")] + be(16384, 4) + [UInt8(ascii: "N")] + tuple([.text("1"), .null])),
                       .insert(relation: 16384, new: [.text("1"), .null]))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "U")] + be(16384, 4) + [UInt8(ascii: "K")] + tuple([.text("1"), .null]) + [UInt8(ascii: "N")] + tuple([.text("2"), .unchanged])),
                       .update(relation: 16384, old: [.text("1"), .null], oldIsKeyOnly: true, new: [.text("2"), .unchanged]))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "U")] + be(16384, 4) + [UInt8(ascii: "N")] + tuple([.text("2"), .text("é")])),
                       .update(relation: 16384, old: nil, oldIsKeyOnly: false, new: [.text("2"), .text("é")]))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "D")] + be(16384, 4) + [UInt8(ascii: "O")] + tuple([.text("3"), .text("9")])),
                       .delete(relation: 16384, old: [.text("3"), .text("9")], oldIsKeyOnly: false))
        XCTAssertEqual(try PgOutput.message([UInt8(ascii: "Y"), 1, 2]), .other("Y"))
        XCTAssertThrowsError(try PgOutput.message([UInt8(ascii: "I")] + be(16384, 4) + [UInt8(ascii: "N")] + be(1, 2) + [UInt8(ascii: "t")] + be(10, 4) + [1]))
    }

    // MARK: keys

    private var hotspots: WatchedTable {
        var t = WatchedTable(name: "hotspots", changeColumns: ["updated_at"], atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY IS NOT NULL", publishEndpoint: "/h")
        t.dependencies = [Dependency(table: "rewards", keyColumns: ["hotspot_id"], changeColumns: ["amount"])]
        return t
    }

    private func extractor(_ table: WatchedTable, rewardsIdentity: Character = "f") throws -> WalKeyExtractor {
        var e = WalKeyExtractor(table: table)
        try e.relationReceived(.init(oid: 1, schema: "public", name: "hotspots", replicaIdentity: "d",
                                     columns: [.init(name: "id", typeOID: 20, isKey: true), .init(name: "name", typeOID: 25, isKey: false), .init(name: "updated_at", typeOID: 1184, isKey: false)]))
        try e.relationReceived(.init(oid: 2, schema: "public", name: "rewards", replicaIdentity: rewardsIdentity,
                                     columns: [.init(name: "id", typeOID: 20, isKey: true), .init(name: "hotspot_id", typeOID: 20, isKey: false), .init(name: "amount", typeOID: 20, isKey: false), .init(name: "note", typeOID: 25, isKey: false)]))
        try e.relationReceived(.init(oid: 3, schema: "public", name: "other", replicaIdentity: "d", columns: [.init(name: "id", typeOID: 20, isKey: true)]))
        return e
    }

    func testWatchedTable_insertUpdateDeleteAsTheTriggerRecordsThem() throws {
        let e = try extractor(hotspots)
        XCTAssertEqual(e.keys(for: .insert(relation: 1, new: [.text("7"), .text("a"), .text("t1")])), [CapturedKey(primaryKey: "7", operation: "I", changeValue: "t1")])
        XCTAssertEqual(e.keys(for: .update(relation: 1, old: nil, oldIsKeyOnly: false, new: [.text("7"), .text("b"), .text("t2")])),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: "t2")], "no old row in the WAL: the update counts")
        XCTAssertEqual(e.keys(for: .delete(relation: 1, old: [.text("7"), .null, .null], oldIsKeyOnly: true)),
                       [CapturedKey(primaryKey: "7", operation: "D", changeValue: nil)], "the key comes from the K tuple")
        XCTAssertEqual(e.keys(for: .insert(relation: 3, new: [.text("1")])), [], "a table we do not watch")
    }

    func testWatchedTable_keyChange_isADeleteOfTheOldKeyThenAnUpdateOfTheNew() throws {
        let e = try extractor(hotspots)
        XCTAssertEqual(e.keys(for: .update(relation: 1, old: [.text("7"), .null, .null], oldIsKeyOnly: true, new: [.text("8"), .text("a"), .text("t3")])),
                       [CapturedKey(primaryKey: "7", operation: "D", changeValue: nil), CapturedKey(primaryKey: "8", operation: "U", changeValue: "t3")])
    }

    func testWatchedTable_withTheWholeOldRow_anUpdateOfOtherColumnsIsSkipped_likeUpdateOf() throws {
        let e = try extractor(hotspots)
        XCTAssertEqual(e.keys(for: .update(relation: 1, old: [.text("7"), .text("a"), .text("t1")], oldIsKeyOnly: false, new: [.text("7"), .text("b"), .text("t1")])), [])
        XCTAssertEqual(e.keys(for: .update(relation: 1, old: [.text("7"), .text("a"), .null], oldIsKeyOnly: false, new: [.text("7"), .text("a"), .text("t1")])),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: "t1")], "from NULL counts")
    }

    func testWatchedTable_operationsLimitWhatIsRecorded() throws {
        var t = hotspots
        t.operations = [.update]
        let e = try extractor(t)
        XCTAssertEqual(e.keys(for: .insert(relation: 1, new: [.text("7"), .text("a"), .text("t1")])), [])
        XCTAssertEqual(e.keys(for: .delete(relation: 1, old: [.text("7"), .null, .null], oldIsKeyOnly: true)), [])
    }

    func testSeveralChangeColumns_areAJSONObjectOfTheirTexts() throws {
        var t = hotspots
        t.changeColumns = ["updated_at", "name"]
        let e = try extractor(t)
        XCTAssertEqual(e.keys(for: .insert(relation: 1, new: [.text("7"), .text("say \"hi\""), .null])),
                       [CapturedKey(primaryKey: "7", operation: "I", changeValue: #"{"updated_at":null,"name":"say \"hi\""}"#)])
    }

    func testDependency_eachEventEnqueuesTheReferencedKeys_withTheirCause() throws {
        let e = try extractor(hotspots)
        XCTAssertEqual(e.keys(for: .insert(relation: 2, new: [.text("1"), .text("7"), .text("5"), .null])),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: nil, cause: "public.rewards insert")])
        XCTAssertEqual(e.keys(for: .insert(relation: 2, new: [.text("1"), .null, .text("5"), .null])), [], "a NULL reference enqueues nothing")
        XCTAssertEqual(e.keys(for: .delete(relation: 2, old: [.text("1"), .text("7"), .text("5"), .null], oldIsKeyOnly: false)),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: nil, cause: "public.rewards delete")])
        XCTAssertEqual(e.keys(for: .update(relation: 2, old: [.text("1"), .text("7"), .text("5"), .null], oldIsKeyOnly: false, new: [.text("1"), .text("8"), .text("5"), .null])),
                       ["7", "8"].map { CapturedKey(primaryKey: $0, operation: "U", changeValue: nil, cause: "public.rewards update") }, "moved: both parents")
        XCTAssertEqual(e.keys(for: .update(relation: 2, old: [.text("1"), .text("7"), .text("5"), .null], oldIsKeyOnly: false, new: [.text("1"), .text("7"), .text("5"), .text("x")])),
                       [], "only a listed change column counts")
        XCTAssertEqual(e.keys(for: .update(relation: 2, old: [.text("1"), .text("7"), .text("5"), .null], oldIsKeyOnly: false, new: [.text("1"), .text("7"), .text("6"), .unchanged])),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: nil, cause: "public.rewards update")])
        XCTAssertEqual(e.keys(for: .update(relation: 2, old: nil, oldIsKeyOnly: false, new: [.text("1"), .text("7"), .text("5"), .null])),
                       [CapturedKey(primaryKey: "7", operation: "U", changeValue: nil, cause: "public.rewards update")], "no old row: it counts")
    }

    func testARenamedColumn_isAnError_notARowSkipped() throws {
        var e = WalKeyExtractor(table: hotspots)
        XCTAssertThrowsError(try e.relationReceived(.init(oid: 1, schema: "public", name: "hotspots", replicaIdentity: "d",
                                                          columns: [.init(name: "id", typeOID: 20, isKey: true), .init(name: "changed", typeOID: 1184, isKey: false)])))
    }

    func testNullableTextArray() {
        XCTAssertEqual(TrackingSchema.nullableTextArray(["a", nil, "b\"c"]), #"{"a",NULL,"b\"c"}"#)
        XCTAssertEqual(TrackingSchema.nullableTextArray([]), "{}")
    }
}
