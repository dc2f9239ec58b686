import Foundation
import Shared
import XCTest
@testable import TableWorker

final class PayloadTests: XCTestCase {
    /// The payload as it was built before it was written as bytes (String concatenation with
    /// `jsonString` and `Timestamp.iso8601`): the byte encoder must produce exactly this.
    private func reference(table: WatchedTable, epoch: String, changes: KeyChanges, atomicData: String, unixNow: Double, retryCount: Int,
                           leaseEpoch: Int64) -> (String, [UInt8]) {
        let latest = changes.latest
        let id = "\(table.qualifiedName):\(epoch):\(latest.id)"
        var s = "{\"id\":\(jsonString(id))"
        s += ",\"table_name\":\(jsonString(table.name))"
        s += ",\"schema\":\(jsonString(table.schema))"
        s += ",\"primary_key\":\(jsonString(changes.primaryKey))"
        s += ",\"operation\":\(jsonString(latest.operation.rawValue))"
        s += ",\"change_column_value\":\(latest.changeColumnValue.map(jsonString) ?? "null")"
        s += ",\"changed_at\":\(jsonString(latest.changedAt))"
        s += ",\"atomic_data\":"
        s += atomicData
        s += ",\"metadata\":{\"service_name\":\"atomic-data-publisher\",\"version\":\(jsonString(PublisherVersion.current))"
        s += ",\"timestamp\":\"\(Timestamp.iso8601(unixSeconds: unixNow))\",\"retry_count\":\(retryCount),\"publisher_epoch\":\(leaseEpoch)}}"
        return (id, Array(s.utf8))
    }

    private func table(_ name: String = "items", schema: String = "public") -> WatchedTable {
        WatchedTable(name: name, schema: schema, changeColumns: ["counter"], atomicDataQuery: "SELECT 1", publishEndpoint: "/items")
    }

    func testBody_isByteForByteTheReference() {
        let cases: [(WatchedTable, KeyChanges, String, Double, Int)] = [
            (table(), KeyChanges(primaryKey: "42", rows: [ChangeRow(id: 7, primaryKey: "42", operation: .update, changeColumnValue: "3", changedAt: "2026-11-29 14:00:00.123456+00")]),
             #"[{"id":42,"counter":3}]"#, 1_795_000_000.25, 0),
            (table("we\"ird\\name", schema: "sch\u{e9}ma"),
             KeyChanges(primaryKey: "k\n\t\"\\\u{1}é🎉", rows: [
                ChangeRow(id: 1, primaryKey: "k", operation: .insert, changeColumnValue: nil, changedAt: "a"),
                ChangeRow(id: 9_000_000_000, primaryKey: "k", operation: .delete, changeColumnValue: "line1\nline2\u{1f}", changedAt: "2026-01-01 00:00:00+00"),
             ]), "[]", 0, 17),
            (table(), KeyChanges(primaryKey: "", rows: [ChangeRow(id: 0, primaryKey: "", operation: .backfill)]),
             String(repeating: #"{"x":"y"},"#, count: 300) + "1", 4_102_444_800.999, Int.max),
        ]
        for (table, changes, data, now, retries) in cases {
            let leaseEpoch = retries == Int.max ? Int64.max : 1_765_000_000_000 + Int64(retries)
            let payload = Payload.build(table: table, epoch: "16384", changes: changes, atomicData: data, unixNow: now, retryCount: retries, leaseEpoch: leaseEpoch)
            let (id, body) = reference(table: table, epoch: "16384", changes: changes, atomicData: data, unixNow: now, retryCount: retries, leaseEpoch: leaseEpoch)
            XCTAssertEqual(payload.id, id)
            XCTAssertEqual(payload.body, body, String(decoding: payload.body, as: UTF8.self))
        }
    }

    func testBody_parsesAsJSONWithTheContractFields() throws {
        let changes = KeyChanges(primaryKey: "a\"b", rows: [ChangeRow(id: 5, primaryKey: "a\"b", operation: .update, changeColumnValue: "x\u{0}y", changedAt: "t", attempts: 2)])
        let payload = Payload.build(table: table(), epoch: "99", changes: changes, atomicData: #"[{"n":1}]"#, unixNow: 784_111_777.123, retryCount: 2)
        let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(payload.body)) as? [String: Any])
        XCTAssertEqual(object["id"] as? String, "public.items:99:5")
        XCTAssertEqual(object["table_name"] as? String, "items")
        XCTAssertEqual(object["schema"] as? String, "public")
        XCTAssertEqual(object["primary_key"] as? String, "a\"b")
        XCTAssertEqual(object["operation"] as? String, "update")
        XCTAssertEqual(object["change_column_value"] as? String, "x\u{0}y")
        XCTAssertEqual(object["changed_at"] as? String, "t")
        XCTAssertEqual((object["atomic_data"] as? [[String: Any]])?.first?["n"] as? Int, 1)
        let metadata = try XCTUnwrap(object["metadata"] as? [String: Any])
        XCTAssertEqual(metadata["service_name"] as? String, "atomic-data-publisher")
        XCTAssertEqual(metadata["version"] as? String, PublisherVersion.current)
        XCTAssertEqual(metadata["timestamp"] as? String, "1994-11-06T08:49:37.123Z")
        XCTAssertEqual(metadata["retry_count"] as? Int, 2)
        XCTAssertEqual(object.count, 9)
    }

    func testCause_isAbsentForOwnChanges_anObjectForOneCause_andAListForSeveral() throws {
        func cause(_ rows: [ChangeRow]) throws -> Any? {
            let payload = Payload.build(table: table(), epoch: "1", changes: KeyChanges(primaryKey: "k", rows: rows), atomicData: "[]", unixNow: 0, retryCount: 0)
            let object = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(payload.body)) as? [String: Any])
            return object["cause"]
        }
        XCTAssertNil(try cause([ChangeRow(id: 1, primaryKey: "k", operation: .update)]))
        let one = try XCTUnwrap(try cause([ChangeRow(id: 1, primaryKey: "k", operation: .update, cause: "sales.rewards insert")]) as? [String: String])
        XCTAssertEqual(one, ["table": "rewards", "schema": "sales", "operation": "insert"])
        let several = try XCTUnwrap(try cause([
            ChangeRow(id: 1, primaryKey: "k", operation: .insert),
            ChangeRow(id: 2, primaryKey: "k", operation: .update, cause: "public.rewards delete"),
            ChangeRow(id: 3, primaryKey: "k", operation: .update, cause: "public.owners update"),
            ChangeRow(id: 4, primaryKey: "k", operation: .update, cause: "public.rewards delete"),
        ]) as? [[String: String]])
        XCTAssertEqual(several, [["table": "items", "schema": "public", "operation": "insert"],
                                 ["table": "rewards", "schema": "public", "operation": "delete"],
                                 ["table": "owners", "schema": "public", "operation": "update"]])
    }

    func testIdempotencyKey_isTheIdAndTheFNV1aOfTheBody() {
        XCTAssertEqual(Payload.digestHex([]), "cbf29ce484222325")
        XCTAssertEqual(Payload.digestHex(Array("a".utf8)), "af63dc4c8601ec8c")
        XCTAssertEqual(Payload.digestHex(Array("foobar".utf8)), "85944171f73967e8")
        let payload = Payload(id: "public.items:1:2", body: Array("foobar".utf8))
        XCTAssertEqual(payload.idempotencyKey, "public.items:1:2.85944171f73967e8")
    }
    func testBatchRequest_isTheArrayOfTheDocuments_toTheBatchEndpoint_underOneKeyAndOneSignature() throws {
        var config = PublisherConfig()
        config.ingestor.baseURL = "http://127.0.0.1:9/"
        config.ingestor.signingSecret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        config.service.instanceId = "host-a"
        var table = table()
        table.batchPublishEndpoint = "/items/batch"
        let builder = RequestBuilder(config: config, table: table)
        let documents = [Payload(id: "public.items:1:5", body: Array(#"{"a":1}"#.utf8)), Payload(id: "public.items:1:9", body: Array(#"{"b":2}"#.utf8))]
        let request = builder.request(for: documents, unixNow: 1_800_000_000, lease: (name: "public.items", epoch: 7))
        XCTAssertEqual(request.url, "http://127.0.0.1:9/items/batch")
        XCTAssertEqual(String(decoding: request.body, as: UTF8.self), #"[{"a":1},{"b":2}]"#)
        let headers = Dictionary(request.allHeaders, uniquingKeysWith: { $1 })
        XCTAssertEqual(headers["Idempotency-Key"], "public.items:1:5+2." + Payload.digestHex(request.body))
        XCTAssertEqual(headers["X-Publisher-Epoch"], "7")
        XCTAssertEqual(headers["X-Publisher-Instance"], "host-a")
        XCTAssertEqual(headers["webhook-id"], "public.items:1:5+2")
        let signer = try WebhookSigner(secret: config.ingestor.signingSecret)
        XCTAssertEqual(headers["webhook-signature"], signer.signature(id: "public.items:1:5+2", timestamp: 1_800_000_000, body: request.body))
        // The same documents later (a retry): the same key; another set: another key.
        let again = Dictionary(builder.request(for: documents, unixNow: 1_800_000_009).allHeaders, uniquingKeysWith: { $1 })
        XCTAssertEqual(again["Idempotency-Key"], headers["Idempotency-Key"])
        let other = Dictionary(builder.request(for: [documents[0]], unixNow: 1_800_000_000).allHeaders, uniquingKeysWith: { $1 })
        XCTAssertNotEqual(other["Idempotency-Key"], headers["Idempotency-Key"])
    }
}
