import Foundation
import Shared
import XCTest

/// Batched delivery (docs/delivery.md, Batched delivery): the same promise request by request,
/// against real PostgreSQL, a real worker and dev/ingestor.py.
extension DeliveryReliabilityTests {
    static let batchEndpoint = "/api/v1/items/batch"

    var batchedItems: WatchedTable {
        var table = items
        table.batchPublishEndpoint = Self.batchEndpoint
        return table
    }

    /// Every request is a batch to the batch endpoint; no key twice in one; per key, its documents.
    func assertBatches(_ requests: [RecordedRequest], atMost documents: Int, file: StaticString = #filePath, line: UInt = #line) {
        for request in requests {
            XCTAssertEqual(request.path, Self.batchEndpoint, "\(request)", file: file, line: line)
            guard let array = request.body.array else { return XCTFail("not an array: \(request)", file: file, line: line) }
            XCTAssertLessThanOrEqual(array.count, documents, file: file, line: line)
            let keys = array.compactMap { $0["primary_key"]?.string }
            XCTAssertEqual(keys.count, array.count, "every document names its key", file: file, line: line)
            XCTAssertEqual(Set(keys).count, keys.count, "a key twice in one request: \(keys)", file: file, line: line)
            // One Idempotency-Key per request: the first document's id, the count, a digest.
            let prefix = (array.first?["id"]?.string ?? "?") + "+\(array.count)."
            let key = request.header("Idempotency-Key") ?? ""
            XCTAssertTrue(key.hasPrefix(prefix) && key.count == prefix.count + 16, "Idempotency-Key \(key), expected \(prefix)<16 hex>", file: file, line: line)
        }
    }

    func testBatchMode_1000ChangedKeys_arriveInAFewDozenArraysOfStandardPayloads_eachKeyOnce() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 1000), tables: [batchedItems]) { config in
            config.service.maxDocumentsPerRequest = 50
        }
        try p.database.execute("UPDATE items SET v = 1")
        try waitUntilEveryFinalStateArrived(p.database, p.ingestor)
        let requests = try p.ingestor.requests()
        assertBatches(requests, atMost: 50)
        XCTAssertGreaterThanOrEqual(requests.count, 20)
        XCTAssertLessThanOrEqual(requests.count, 40, "1,000 documents at 50 a request, in batches of 100 rows: a few dozen requests")
        let documents = requests.flatMap(\.documents)
        XCTAssertEqual(documents.compactMap { $0["primary_key"]?.string }.sorted(), (1...1000).map(String.init).sorted(), "every key once")
        for document in documents {
            // Each element is exactly the payload a single request would carry.
            XCTAssertEqual(Set(document.keys), Self.payloadKeys)
            XCTAssertEqual(document["table_name"], "items")
            XCTAssertEqual(document["operation"], "update")
            let key = Int(document["primary_key"]?.string ?? "") ?? 0
            XCTAssertEqual(document["atomic_data"], .array([.object(["id": .number(Double(key)), "v": 1])]), "\(document)")
        }
        XCTAssertTrue(requests.allSatisfy { $0.status == 200 && $0.header("X-Publisher-Epoch") != nil && $0.header("X-Publisher-Instance") != nil })
        print("batch mode: 1,000 keys in \(requests.count) requests")
    }

    func testBatchMode_aWriterOn50Keys_noKeyTwiceInARequest_noKeyBackwards_everySignatureVerifies() throws {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 50), tables: [batchedItems], webhookSecrets: [secret]) { config in
            config.ingestor.signingSecret = secret
            config.service.maxDocumentsPerRequest = 20
        }
        // About five seconds of single-key transactions, 2 ms apart.
        let writer = BackgroundWriter(database: p.database.config, name: "batch-writer", rounds: 2_000, perRound: 1, keys: 50, pauseMicroseconds: 2_000)
        let started = Date()
        try waitUntil(timeout: 60, "the writer finishes") { writer.isDone }
        XCTAssertNil(writer.error)
        XCTAssertGreaterThan(Date().timeIntervalSince(started), 3, "the writer ran for several seconds")
        try waitUntilEveryFinalStateArrived(p.database, p.ingestor)
        let requests = try p.ingestor.requests()
        assertBatches(requests, atMost: 20)
        for request in requests {
            XCTAssertEqual(request.verified, true, "the standardwebhooks library verifies the whole body's signature: \(request.headers)")
            XCTAssertEqual(request.header("webhook-id"), (request.body[0]?["id"]?.string ?? "?") + "+\(request.documents.count)")
        }
        let (payloads, _) = try assertNoKeyWentBackwards(p.ingestor)
        XCTAssertEqual(try databaseValues(p.database).values.reduce(0, +), 2_000)
        XCTAssertGreaterThan(requests.count, 10, "the stream was sent as it came, not in one batch at the end")
        print("batch mode under a writer: \(payloads) documents in \(requests.count) requests")
    }

    /// `ingestor.compression = "gzip"` in batch mode: every request is one gzip body with
    /// `Content-Encoding: gzip`; dev/ingestor.py decompresses it and the `standardwebhooks` library
    /// verifies the signature on the decompressed array, so it is byte for byte the array that was
    /// signed (and whose digest ends the Idempotency-Key); each key arrives once, as a standard payload.
    func testBatchMode_gzip_everyRequestCompressed_decodesToTheSignedArray_eachKeyOnce() throws {
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 300), tables: [batchedItems], webhookSecrets: [secret]) { config in
            config.ingestor.signingSecret = secret
            config.ingestor.compression = "gzip"
            config.service.maxDocumentsPerRequest = 50
        }
        try p.database.execute("UPDATE items SET v = 1")
        try waitUntilEveryFinalStateArrived(p.database, p.ingestor)
        let requests = try p.ingestor.requests()
        assertBatches(requests, atMost: 50)
        var decodedBytes = 0, wireBytes = 0
        for request in requests {
            XCTAssertEqual(request.header("Content-Encoding"), "gzip", "\(request.headers)")
            XCTAssertEqual(request.verified, true, "the signature is of the decompressed body: \(request.headers)")
            XCTAssertEqual(request.status, 200)
            let wire = try XCTUnwrap(request.wireBytes)
            XCTAssertEqual(Int(request.header("Content-Length") ?? ""), wire)
            wireBytes += wire
            decodedBytes += try XCTUnwrap(request.bodyBytes)
        }
        let documents = requests.flatMap(\.documents)
        XCTAssertEqual(documents.compactMap { $0["primary_key"]?.string }.sorted(), (1...300).map(String.init).sorted(), "every key once")
        for document in documents {
            XCTAssertEqual(document.keys, Self.payloadKeys)
            let key = Int(document["primary_key"]?.string ?? "") ?? 0
            XCTAssertEqual(document["atomic_data"], .array([.object(["id": .number(Double(key)), "v": 1])]), "\(document)")
        }
        XCTAssertLessThan(wireBytes * 4, decodedBytes, "arrays of one table's documents compress well")
        print("batch mode with gzip: 300 documents in \(requests.count) requests, \(wireBytes) bytes on the wire for \(decodedBytes) of JSON")
    }

    func testBatchMode_perItemResults_onlyTheRefusedDocumentIsRetried_andDeadLettered() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 100), tables: [batchedItems]) { config in
            config.service.deadLetterAfterAttempts = 3
            config.ingestor.retryDelaySeconds = 0.1
            config.ingestor.maxRetryDelaySeconds = 0.2
        }
        p.worker.expectedErrorLogs = ["change moved to dead letters"]
        try p.ingestor.setControl(["batch_results": true, "fail_keys": ["13": 400]])
        try p.database.execute("UPDATE items SET v = 1")
        try waitUntil("key 13 is a dead letter") {
            try p.database.count("SELECT count(*) FROM items_changes_failed WHERE primary_key = '13'") == 1
        }
        try waitUntilTrackingTableIsEmpty(p.database, batchedItems)
        let requests = try p.ingestor.requests()
        assertBatches(requests, atMost: 100)
        XCTAssertTrue(requests.allSatisfy { $0.status == 200 && $0.results != nil }, "answered per item")
        var sent: [String: Int] = [:]
        for document in requests.flatMap(\.documents) { sent[document["primary_key"]?.string ?? "", default: 0] += 1 }
        XCTAssertEqual(sent["13"], 3, "the refused document is retried until dead_letter_after_attempts")
        XCTAssertEqual(sent.filter { $0.key != "13" && $0.value != 1 }, [:], "the others are acknowledged by their first request")
        XCTAssertEqual(sent.count, 100)
        let acknowledged = Set(try sequences(p.ingestor).keys)
        XCTAssertEqual(acknowledged, Set((1...100).filter { $0 != 13 }.map(String.init)))
        let failed = try p.database.execute("SELECT last_error, attempts FROM items_changes_failed").rows
        XCTAssertEqual(failed.count, 1)
        XCTAssertTrue(failed.first?[0]?.contains("HTTP 400") ?? false, "\(failed)")
        XCTAssertEqual(failed.first?[1], "3")
    }

    func testBatchMode_503ForTenSecondsThen200_everythingArrives_andTheBreakerOpensAndCloses() throws {
        let p = try startPipeline(schemaSQL: itemsSQL(keys: 200), tables: [batchedItems]) { config in
            config.ingestor.circuitBreakerFailureThreshold = 3
            config.ingestor.circuitBreakerResetSeconds = 2
            config.ingestor.maxRetries = 1
            config.service.maxDocumentsPerRequest = 10
        }
        try p.ingestor.setControl(["status": 503])
        let outageStart = Date()
        var round = 0
        while Date().timeIntervalSince(outageStart) < 10 {
            round += 1
            try p.database.execute("UPDATE items SET v = v + 1 WHERE id % 10 = $1", [String(round % 10)])
            Thread.sleep(forTimeInterval: 0.25)
        }
        let during503 = try p.ingestor.requests().count
        XCTAssertGreaterThan(try p.database.rowCount("items_changes"), 0, "the changes wait in the tracking table")
        try p.ingestor.setControl(["status": 200])
        try waitUntilEveryFinalStateArrived(p.database, p.ingestor)
        _ = try assertNoKeyWentBackwards(p.ingestor)
        assertBatches(try p.ingestor.requests(), atMost: 10)
        // As in single mode, counted in requests: the threshold, what was in flight, then one
        // probe per 2 s reset period.
        let bound = 3 + p.config.service.maxConcurrentPublishes + 6
        print("batch mode outage: \(during503) requests during 10 s of 503 (bound \(bound))")
        XCTAssertLessThanOrEqual(during503, bound, "while the breaker is open only probes may be sent")
        XCTAssertGreaterThanOrEqual(during503, 3, "the breaker opens only after the threshold")
        let log = p.worker.process.stderrText()
        XCTAssertTrue(log.contains("circuit breaker closed -> open"), p.worker.diagnostics())
        XCTAssertTrue(log.contains("circuit breaker half_open -> closed"), p.worker.diagnostics())
    }

    func testBatchMode_crashTest_killNineWorkersAndTheSupervisor_losesNothingAndNeverGoesBackwards() throws {
        try crashTest(mode: "batch") { config in
            config.service.watchedTables = [self.batchedItems]
            config.service.maxDocumentsPerRequest = 50
        }
    }
}
