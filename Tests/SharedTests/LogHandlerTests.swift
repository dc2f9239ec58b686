import Logging
import XCTest
@testable import Shared

final class LogHandlerTests: XCTestCase {
    private func decoded(_ fields: [[UInt8]]) -> [(String, String)] {
        fields.map { field in
            let text = String(decoding: field, as: UTF8.self)
            let eq = text.firstIndex(of: "=")!
            return (String(text[..<eq]), String(text[text.index(after: eq)...]))
        }
    }

    func testJournalFields_carryPriorityIdentifierCodeLocationAndUpperCasedMetadata() {
        let fields = decoded(JournalLogHandler.fields(
            level: .warning, message: "database unavailable, retrying",
            metadata: ["table": "public.hotspots", "worker_pid": "42", "error": "connection refused\nis the server running?"],
            identifier: "atomic-data-table-worker", label: "atomic-data-table-worker",
            file: "TableWorker/TableWorker.swift", line: 117, function: "connectAndPrepare()"))
        XCTAssertEqual(fields.map(\.0), ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "ERROR", "TABLE", "WORKER_PID"])
        let dict = Dictionary(uniqueKeysWithValues: fields)
        XCTAssertEqual(dict["PRIORITY"], "4")
        XCTAssertEqual(dict["SYSLOG_IDENTIFIER"], "atomic-data-table-worker")
        XCTAssertEqual(dict["CODE_LINE"], "117")
        XCTAssertEqual(dict["TABLE"], "public.hotspots")
        XCTAssertEqual(dict["ERROR"], "connection refused\nis the server running?")
    }

    func testPriorities_followSyslog() {
        XCTAssertEqual([Logger.Level.trace, .debug, .info, .notice, .warning, .error, .critical].map(JournalLogHandler.priority), [7, 7, 6, 5, 4, 3, 2])
    }

    func testFieldNames_areSanitised() {
        XCTAssertEqual(JournalLogHandler.fieldName("http_status"), "HTTP_STATUS")
        XCTAssertEqual(JournalLogHandler.fieldName("retry-in.seconds"), "RETRY_IN_SECONDS")
        XCTAssertEqual(JournalLogHandler.fieldName("_private"), "PRIVATE")
        XCTAssertEqual(JournalLogHandler.fieldName("2fa"), "FA")
        XCTAssertEqual(JournalLogHandler.fieldName("größe"), "GR__E")
        XCTAssertEqual(JournalLogHandler.fieldName("message"), "METADATA_MESSAGE")
        XCTAssertNil(JournalLogHandler.fieldName("__"))
        XCTAssertEqual(JournalLogHandler.fieldName(String(repeating: "a", count: 100))?.count, 64)
    }

    func testJournalValues_areRedacted() {
        let fields = decoded(JournalLogHandler.fields(
            level: .error, message: "connect failed: password=hunter2 host=db",
            metadata: ["url": "postgres://u:hunter2@db/x", "header": "Bearer abc.def"],
            identifier: "atomic-data-publisher", label: "atomic-data-publisher", file: "f", line: 1, function: "g"))
        for (_, value) in fields {
            XCTAssertFalse(value.contains("hunter2"), value)
            XCTAssertFalse(value.contains("abc.def"), value)
        }
    }

    func testTextLine_isOneLineWithSortedQuotedMetadata() {
        let line = TextLogHandler.line(timestamp: "T", level: .warning, label: "w", message: "two\nlines",
                                       metadata: ["table": "public.hotspots", "error": "connection refused"])
        XCTAssertEqual(line, "T warning w: two\\nlines error=\"connection refused\" table=public.hotspots\n")
    }

    func testAutoFormat_isJsonWithoutAMatchingJournalStream() {
        XCTAssertEqual(LogSetup.resolve(.auto, environment: [:]), .json)
        XCTAssertEqual(LogSetup.resolve(.auto, environment: ["JOURNAL_STREAM": "1:2"]), .json)
        XCTAssertEqual(LogSetup.resolve(.text, environment: [:]), .text)
        XCTAssertEqual(LogSetup.resolve(.journal, environment: [:], journalAvailable: true), .journal)
        XCTAssertEqual(LogSetup.resolve(.journal, environment: [:], journalAvailable: false), .json)
        var info = stat()
        XCTAssertEqual(fstat(2, &info), 0)
        XCTAssertEqual(LogSetup.resolve(.auto, environment: ["JOURNAL_STREAM": "\(info.st_dev):\(info.st_ino)"]), .journal)
    }
}
