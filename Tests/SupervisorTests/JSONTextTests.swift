// JSONText (the /health and /metrics writer that replaced JSONSerialization, so that the binary
// needs only FoundationEssentials) against JSONSerialization itself: the bodies stay byte for byte
// what they were.

import Foundation
import XCTest
@testable import Shared
@testable import Supervisor

final class JSONTextTests: XCTestCase {
    private func foundation(_ object: Any) -> String {
        let data = try! JSONSerialization.data(withJSONObject: object, options: [.sortedKeys, .withoutEscapingSlashes])
        return String(decoding: data, as: UTF8.self)
    }

    /// JSONNull -> NSNull for the reference writer.
    private func bridged(_ value: Any) -> Any {
        switch value {
        case is JSONNull: NSNull()
        case let object as [String: Any]: object.mapValues(bridged)
        case let array as [Any]: array.map(bridged)
        default: value
        }
    }

    func testScalarsAndNesting_matchJSONSerialization() {
        let values: [Any] = [
            1.5, 3.0, 0.1, 1e20, 1e-7, 123456789.123, 0.0, -2.5, 1.0 / 3.0, 42, Int64(-7), true, false, JSONNull(),
            "a/b\"c\\d\n\t\u{8}\u{c}\u{1}\u{1f}\u{7f}é😀 \u{2028}", Double.leastNonzeroMagnitude, 1e15, 1e16, 0.30000000000000004, 100.0, 2e-5, "",
            ["b": 1, "a": ["z": [1, 2], "y": [String: Any]()], "c": [Any](), "B": JSONNull()] as [String: Any],
            ["x", "y"], [String](),
        ]
        for value in values {
            XCTAssertEqual(JSONText.render([value]), foundation([bridged(value)]), "\(value)")
        }
    }

    func testKeyOrder_isJSONSerializationsForIdentifiers() {
        let keys = ["b", "B", "a", "A", "t10", "t9", "t09", "T9", "a_b", "aB", "ab", "Ab", "a1", "a01", "a001", "x2y10", "x2y9",
                    "_a", "Z", "z", "hotspots", "hotspots_2", "hotspots_10", "Rewards", "rewards_v2", "oldest_change_age_seconds"]
        var object: [String: Any] = [:]
        for key in keys { object[key] = 1 }
        XCTAssertEqual(JSONText.render(object), foundation(object))
    }

    func testHealthAndMetricsBodies_matchJSONSerialization() {
        var s = ServiceSnapshot()
        var busy = WorkerStats()
        busy.changesPublished = 12_345
        busy.changesProcessed = 12_400
        busy.publishFailures = 3
        busy.publishSuccesses = 300
        busy.backlog = 77
        busy.oldestChangeAgeSeconds = 1.25
        busy.database = .up
        busy.lastPublishAt = "2026-11-29T10:00:00.123Z"
        busy.tableProblem = "grant \"SELECT\"\non t"
        busy.publish.count = 300
        busy.publish.sumSeconds = 1.5
        busy.publish.maxSeconds = 0.25
        busy.publish.lastSeconds = 0.004
        s.tables = [.init(name: "a", schema: "public", state: "running", pid: 12, restarts: 1, stats: busy),
                    .init(name: "b/c", schema: "public", state: "backing_off", pid: nil, restarts: 3, lastExit: "exit 1",
                          lastError: "boom", stats: WorkerStats())]
        s.tables[0].silentSeconds = 42.37
        s.instance = "host-1"
        let health = JSONValue.parse(Array(s.healthJSON.utf8))
        XCTAssertNotNil(health)
        XCTAssertEqual(health?["components"]?["tables"]?["a"]?["pid"]?.int, 12)
        XCTAssertEqual(health?["components"]?["tables"]?["b/c"]?["pid"], .null)
        // The bodies through both writers: rebuild each with JSONSerialization from its parse.
        for body in [s.healthJSON, s.metricsJSON] {
            let object = try! JSONSerialization.jsonObject(with: Data(body.utf8))
            XCTAssertEqual(body, foundation(object), body)
        }
    }

    func testJSONValue_describesValuesAsTheStatusCommandPrintedThem() {
        let value = JSONValue.parse(Array(#"{"s":"up","n":3,"d":1.5,"b":true,"z":null,"a":[1,"x"]}"#.utf8))!
        XCTAssertEqual(value["s"]?.description, "up")
        XCTAssertEqual(value["n"]?.description, "3")
        XCTAssertEqual(value["d"]?.description, "1.5")
        XCTAssertEqual(value["n"]?.int, 3)
        XCTAssertNil(value["d"]?.int)
        XCTAssertNil(value["z"]?.string)
        XCTAssertEqual(value["a"], .array([.number(1), .string("x")]))
    }
}
