import XCTest
@testable import Shared

final class WorkerMessageTests: XCTestCase {
    func testStatsLine_roundTrips_andIsOneLine() throws {
        var stats = WorkerStats()
        stats.changesPublished = 7
        stats.circuitBreaker = .open
        let line = WorkerMessage.stats(table: "hotspots", stats: stats).encodedLine()
        XCTAssertEqual(line.last, UInt8(ascii: "\n"))
        XCTAssertEqual(line.filter { $0 == UInt8(ascii: "\n") }.count, 1)
        let text = String(decoding: line, as: UTF8.self)
        XCTAssertTrue(text.hasPrefix("{") && text.contains("\"type\":\"stats\"") && text.contains("\"changes_published\":7"))
        XCTAssertEqual(try WorkerMessage.decode(line: line.dropLast()), .stats(table: "hotspots", stats: stats))
    }

    func testReadyAndFatal_roundTrip() throws {
        XCTAssertEqual(try WorkerMessage.decode(line: WorkerMessage.ready(table: "t", pid: 12).encodedLine().dropLast()), .ready(table: "t", pid: 12))
        XCTAssertEqual(try WorkerMessage.decode(line: WorkerMessage.fatal(error: "bad\nthing").encodedLine().dropLast()), .fatal(error: "bad\nthing"))
    }

    func testMalformedTooLongAndUnknownLines_areRejected() {
        XCTAssertThrowsError(try WorkerMessage.decode(line: Array("not json".utf8)))
        XCTAssertThrowsError(try WorkerMessage.decode(line: Array("{\"type\":\"ready\"}".utf8)))
        XCTAssertThrowsError(try WorkerMessage.decode(line: Array("{\"type\":\"gossip\"}".utf8)))
        XCTAssertThrowsError(try WorkerMessage.decode(line: [UInt8](repeating: 32, count: WorkerMessage.maxLineBytes + 1)))
    }

    func testBackoff_doublesAndCaps() {
        let b = Backoff(initial: 0.5, maximum: 5)
        XCTAssertEqual((0..<6).map { b.ceiling(attempt: $0) }, [0.5, 1, 2, 4, 5, 5])
        XCTAssertEqual(b.delay(attempt: 2, unit: 0), 1)
        XCTAssertEqual(b.delay(attempt: 2, unit: 1), 2)
        XCTAssertEqual(b.fullJitter(attempt: 3, unit: 0.5), 2)
    }

    func testRedactor_masksPasswordsTokensAndURLCredentials() {
        XCTAssertEqual(Redactor.redact("password=hunter2 host=x"), "password=<redacted> host=x")
        XCTAssertEqual(Redactor.redact("Authorization: Bearer abc.def"), "Authorization: Bearer <redacted>")
        XCTAssertEqual(Redactor.redact("http://user:s3cret@host/x"), "http://user:<redacted>@host/x")
        XCTAssertEqual(Redactor.redact("nothing secret here"), "nothing secret here")
    }

    func testAtomicDataQuery_bindsThePrimaryKeyAsParameter() {
        let q = AtomicDataQuery("SELECT * FROM t WHERE t.id = $PRIMARY_KEY;\n")
        XCTAssertEqual(q.parameterized, "SELECT * FROM t WHERE t.id = $1")
        XCTAssertTrue(q.wrapped.hasPrefix("SELECT coalesce(json_agg(to_json(adp_row)), '[]'::json)::text FROM ("))
    }

    func testTrackingSchema_quotesIdentifiers() {
        let t = WatchedTable(name: "odd\"name", changeColumns: ["updated_at"], atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY = 1", publishEndpoint: "/x")
        let s = TrackingSchema(table: t)
        XCTAssertEqual(s.changesTable, "\"public\".\"odd\"\"name_changes\"")
        XCTAssertTrue(s.createTriggerSQL.contains("UPDATE OF \"updated_at\", \"id\""))
    }
}
