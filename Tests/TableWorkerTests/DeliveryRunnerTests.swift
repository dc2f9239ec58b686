import Shared
import XCTest
@testable import TableWorker

/// The runner against a fake transport, a fake store and a fake clock: it performs the plan's
/// actions, acknowledges in small groups, keeps what it owes across a lost connection, and stops
/// cleanly mid-round.
final class DeliveryRunnerTests: XCTestCase {
    /// Calls its closures in the order HTTPClient.perform does: `launch()` fills up to
    /// `maxConcurrent` (one `keepLaunching`, then `mayLaunch` right before each request), and for
    /// each answer: `onComplete`, then `shouldAbort`, then `launch()` again. So several requests
    /// are out before the first `shouldAbort`, as with libcurl.
    /// Deliberately left out: real time and the network. Answers come back one at a time in launch
    /// order (libcurl may finish several per poll, in any order), and the answer is computed when
    /// it comes back (so `answer` can move the fake clock).
    final class FakeTransport: IngestTransport {
        /// The answer to a request, by its body text (one body per key in these tests; in batch
        /// mode, the array of the request's documents).
        var answer: (String) -> Result<HTTPResponse, HTTPTransportError> = { _ in .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0.001)) }
        private(set) var sent: [String] = []
        var maxSeenConcurrency = 0

        func perform(count: Int, request: (Int) -> HTTPRequest, maxConcurrent: Int, shouldAbort: () -> Bool, keepLaunching: () -> Bool,
                     mayLaunch: () -> Bool, onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool) -> [Result<HTTPResponse, HTTPTransportError>] {
            var results: [Result<HTTPResponse, HTTPTransportError>?] = Array(repeating: nil, count: count)
            var next = 0
            var active: [(index: Int, body: String)] = []
            let limit = max(1, maxConcurrent)
            func stopLaunching() {
                for index in next..<count { results[index] = .failure(HTTPTransportError(code: HTTPClient.notSentCode, message: "not sent", isTimeout: false)) }
                next = count
            }
            func launch() {
                if next < count && !keepLaunching() { stopLaunching() }
                while active.count < limit && next < count {
                    guard mayLaunch() else {
                        stopLaunching()
                        break
                    }
                    let body = String(decoding: request(next).body, as: UTF8.self)
                    sent.append(body)
                    active.append((next, body))
                    next += 1
                    maxSeenConcurrency = max(maxSeenConcurrency, active.count)
                }
            }
            launch()
            while !active.isEmpty {
                let done = active.removeFirst()
                let r = answer(done.body)
                results[done.index] = r
                if !onComplete(done.index, r) { stopLaunching() }
                if shouldAbort() {
                    for abandoned in active {
                        results[abandoned.index] = .failure(HTTPTransportError(code: HTTPClient.abortedCode, message: "aborted by shutdown", isTimeout: false))
                    }
                    active.removeAll()
                    next = count
                    break
                }
                launch()
            }
            return results.map { $0 ?? .failure(HTTPTransportError(code: HTTPClient.abortedCode, message: "request not performed", isTimeout: false)) }
        }
    }

    final class FakeStore: ChangeStore {
        var acknowledged: [[Int64]] = []
        var rescheduled: [(ids: [Int64], error: String, attempts: Int, permanent: Int)] = []
        var deadLettered: [[Int64]] = []
        /// Fail this many writes with a lost connection.
        var failNextWrites = 0

        private func maybeFail() throws(PostgresError) {
            if failNextWrites > 0 {
                failNextWrites -= 1
                throw PostgresError(kind: .connection, sqlState: nil, message: "connection to PostgreSQL lost")
            }
        }
        func acknowledge(ids: [Int64]) throws(PostgresError) { try maybeFail(); acknowledged.append(ids) }
        func reschedule(ids: [Int64], error: String, afterSeconds: Double, attemptsMade: Int, permanentFailures: Int) throws(PostgresError) {
            try maybeFail()
            rescheduled.append((ids, error, attemptsMade, permanentFailures))
        }
        func deadLetter(ids: [Int64], error: String, attemptsMade: Int) throws(PostgresError) { try maybeFail(); deadLettered.append(ids) }
    }

    final class FakeHost: DeliveryHost {
        var now = 0.0
        var unixNow: Double { 1_000_000 + now }
        var waits: [Double] = []
        var stopAtTick: Int?
        var ticks = 0
        func randomUnit() -> Double { 0.5 }
        func observe(_ breaker: CircuitBreaker) {}
        /// What a wait finds (the lease lost while a retry waits, say).
        var waitVerdict = TickVerdict.go
        func wait(_ seconds: Double) -> TickVerdict { waits.append(seconds); now += seconds; return waitVerdict }
        var leaseLostAtTick: Int?
        func tick(inFlight: Int) -> TickVerdict {
            ticks += 1
            if let n = leaseLostAtTick, ticks >= n { return .leaseLost }
            return (stopAtTick.map { ticks >= $0 } ?? false) ? .stop : .go
        }
        /// The gate: refuse from this launch on (1-based), as when the grant cannot be confirmed.
        var leaseLostAtLaunch: Int?
        var launchesAsked = 0
        func mayLaunch() -> TickVerdict {
            launchesAsked += 1
            if let n = leaseLostAtLaunch, launchesAsked >= n { return .leaseLost }
            return .go
        }
    }

    private let policy = DeliveryPolicy(maxRetries: 2, backoff: Backoff(initial: 1, maximum: 30), deadLetterAfter: 3)

    private func setUp(_ n: Int, ackGroup: Int = 32, ackInterval: Double = 0) -> (DeliveryRunner, FakeTransport, FakeStore, FakeHost, DeliveryPlan, [HTTPRequest]) {
        let transport = FakeTransport(), store = FakeStore(), host = FakeHost()
        let runner = DeliveryRunner(transport: transport, store: store, host: host, maxConcurrent: 4, ackGroupSize: ackGroup, ackInterval: ackInterval)
        let items = (0..<n).map { DeliveryItem(ids: [Int64($0 + 1)]) }
        let requests = (0..<n).map { HTTPRequest(url: "http://127.0.0.1/x", body: Array("key\($0)".utf8)) }
        let plan = DeliveryPlan(items: items, policy: policy, breaker: CircuitBreaker(failureThreshold: 5, resetSeconds: 60))
        return (runner, transport, store, host, plan, requests)
    }

    func testEveryKeyDelivered_isAcknowledged_inSmallGroups() {
        var (runner, _, store, _, plan, requests) = setUp(10, ackGroup: 4)
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "finished")
        XCTAssertEqual(store.acknowledged, [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10]])
        XCTAssertEqual(runner.counters.successes, 10)
    }

    /// A fast stream writes its acknowledgements at most once per `ackInterval` mid-wave (each
    /// write is a round trip during which nothing is sent), and everything left when the wave ends.
    func testAcknowledgementsMidWave_areAtMostOneWritePerInterval() {
        var (runner, transport, store, host, plan, requests) = setUp(10, ackGroup: 2, ackInterval: 0.05)
        transport.answer = { _ in
            host.now += 0.02  // an answer every 20 ms
            return .success(HTTPResponse(status: 204, body: [], headers: [:], seconds: 0.02))
        }
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "finished")
        // Writes at 40 ms (the first group), 100 ms and 160 ms (60 ms apart: a group waits until
        // 50 ms have passed), and the rest at the end of the wave.
        XCTAssertEqual(store.acknowledged, [[1, 2], [3, 4, 5], [6, 7, 8], [9, 10]])
    }

    func testA4xxKey_isRescheduled_andTheOthersAreAcknowledged() {
        var (runner, transport, store, _, plan, requests) = setUp(3)
        transport.answer = { $0 == "key1" ? .success(HTTPResponse(status: 400, body: [], headers: [:], seconds: 0)) : .success(HTTPResponse(status: 204, body: [], headers: [:], seconds: 0)) }
        _ = runner.run(&plan, requests: requests)
        XCTAssertEqual(store.acknowledged.flatMap { $0 }.sorted(), [1, 3])
        XCTAssertEqual(store.rescheduled.map(\.ids), [[2]])
        XCTAssertEqual(store.rescheduled.first?.permanent, 1)
    }

    func testRetryAfter_isWaitedFor_thenTheRetryIsDelivered() {
        var (runner, transport, store, host, plan, requests) = setUp(1)
        var calls = 0
        transport.answer = { _ in
            calls += 1
            return calls == 1 ? .success(HTTPResponse(status: 429, body: [], headers: ["retry-after": "2"], seconds: 0))
                : .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0))
        }
        _ = runner.run(&plan, requests: requests)
        XCTAssertEqual(host.waits, [2])
        XCTAssertEqual(store.acknowledged, [[1]])
        XCTAssertEqual(transport.sent, ["key0", "key0"], "the retry sends the same bytes")
        XCTAssertEqual(runner.counters.retries, 1)
    }

    func testStopMidRound_acknowledgesOnlyThe2xxAnswers() {
        var (runner, transport, store, host, plan, requests) = setUp(8)
        host.stopAtTick = 3  // SIGTERM arrives with the third answer
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "stopRequested")
        // Four out at once, one more after each of the first two answers (as libcurl does).
        XCTAssertEqual(transport.sent, ["key0", "key1", "key2", "key3", "key4", "key5"])
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1, 2, 3], "only what was answered 2xx")
        XCTAssertTrue(store.rescheduled.isEmpty)
        XCTAssertTrue(runner.abandonedInFlight, "key3 to key5 were abandoned in flight")
    }

    func testStopMidRound_withADrainTime_startsNothingNew_andLeavesNothingInFlight() {
        var (runner, transport, store, host, plan, requests) = setUp(8)
        runner.stopDrainSeconds = 5
        host.stopAtTick = 3
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "stopRequested")
        XCTAssertEqual(transport.sent, ["key0", "key1", "key2", "key3", "key4", "key5"], "nothing new starts once the stop is asked")
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1, 2, 3, 4, 5, 6], "what was in flight was answered and acknowledged")
        XCTAssertFalse(runner.abandonedInFlight, "a graceful stop leaves nothing in flight: the lease may be handed over")
    }

    func testALostLease_stopsSendingAtOnce_andKeepsTheAcknowledgementsOwed() throws {
        var (runner, transport, store, host, plan, requests) = setUp(8)
        host.leaseLostAtTick = 3
        guard case .leaseLost = runner.run(&plan, requests: requests) else { return XCTFail("expected leaseLost") }
        XCTAssertEqual(transport.sent, ["key0", "key1", "key2", "key3", "key4", "key5"], "nothing is sent once the lease is in doubt")
        var owed: [Int64] = []
        for write in runner.pending { if case .acknowledge(let ids) = write { owed += ids } }
        XCTAssertEqual(store.acknowledged.flatMap { $0 } + owed, [1, 2, 3], "answered 2xx: acknowledged now or after the reconnect")
        XCTAssertTrue(runner.abandonedInFlight)
    }

    // MARK: - the gate

    func testTheGate_isAskedBeforeEveryRequest_retriesIncluded() {
        var (runner, transport, _, host, plan, requests) = setUp(6)
        var calls = 0
        transport.answer = { _ in
            calls += 1
            return calls == 2 ? .success(HTTPResponse(status: 503, body: [], headers: [:], seconds: 0)) : .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0))
        }
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "finished")
        XCTAssertEqual(transport.sent.count, 7, "six keys and one retry")
        XCTAssertEqual(host.launchesAsked, 7, "one question per request, the retry included")
    }

    func testTheGateRefusing_startsNothingMore_evenWithRoomInFlight() {
        var (runner, transport, store, host, plan, requests) = setUp(8)
        host.leaseLostAtLaunch = 3  // the grant cannot be confirmed before the third request
        guard case .leaseLost = runner.run(&plan, requests: requests) else { return XCTFail("expected leaseLost") }
        XCTAssertEqual(transport.sent, ["key0", "key1"], "the real client fills its concurrency at once: only the gate stops it")
        XCTAssertTrue(store.rescheduled.isEmpty)
    }

    /// Instance A waits out a Retry-After; meanwhile its session is cut and B takes over. The retry
    /// must never go out, and its reschedule must not be written onto rows B now owns.
    func testARetryWaitingOnRetryAfter_isNeverSent_whenTheLeaseIsLostDuringTheWait() {
        var (runner, transport, store, host, plan, requests) = setUp(2)
        transport.answer = { body in
            body == "key1" ? .success(HTTPResponse(status: 503, body: [], headers: ["retry-after": "15"], seconds: 0))
                : .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0))
        }
        host.waitVerdict = .leaseLost
        guard case .leaseLost = runner.run(&plan, requests: requests) else { return XCTFail("expected leaseLost") }
        XCTAssertEqual(transport.sent, ["key0", "key1"], "the retry of key1 is not sent")
        XCTAssertEqual(host.waits, [15])
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1], "the 2xx is still acknowledged: it is true whoever leads")
        XCTAssertTrue(store.rescheduled.isEmpty, "no reschedule written under a lost lease")
        XCTAssertTrue(runner.pending.isEmpty)
    }

    /// After the wait the gate is asked again, and refuses when the grant cannot be confirmed.
    func testARetryAfterTheWait_asksTheGate_andIsNotSentWhenItRefuses() {
        var (runner, transport, store, host, plan, requests) = setUp(1)
        transport.answer = { _ in .success(HTTPResponse(status: 503, body: [], headers: ["retry-after": "15"], seconds: 0)) }
        host.leaseLostAtLaunch = 2
        guard case .leaseLost = runner.run(&plan, requests: requests) else { return XCTFail("expected leaseLost") }
        XCTAssertEqual(transport.sent, ["key0"])
        XCTAssertTrue(store.rescheduled.isEmpty)
    }

    func testA409_meansThisGrantIsStale_stopsSending_andIsNotTheKeysFailure() {
        var (runner, transport, store, _, plan, requests) = setUp(8)
        transport.answer = { body in
            body == "key1" ? .success(HTTPResponse(status: 409, body: [], headers: [:], seconds: 0))
                : .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0))
        }
        guard case .leaseLost(let why) = runner.run(&plan, requests: requests) else { return XCTFail("expected leaseLost") }
        XCTAssertTrue(why.contains("409"), why)
        XCTAssertEqual(transport.sent, ["key0", "key1", "key2", "key3", "key4"], "nothing starts after the 409")
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1], "what was answered 2xx before it")
        XCTAssertTrue(store.rescheduled.isEmpty && store.deadLettered.isEmpty, "a stale grant is not the key's failure")
        XCTAssertEqual(runner.counters.failures, 0)
    }

    func testOwedWritesOfALostLease_keepOnlyTheAcknowledgements() throws {
        var (runner, transport, store, _, plan, requests) = setUp(3)
        transport.answer = { body in
            body == "key1" ? .success(HTTPResponse(status: 400, body: [], headers: [:], seconds: 0))
                : .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0))
        }
        store.failNextWrites = 100  // the connection is gone: everything stays owed
        guard case .storeFailed = runner.run(&plan, requests: requests) else { return XCTFail("expected storeFailed") }
        XCTAssertTrue(runner.pending.contains { if case .reschedule = $0 { true } else { false } })
        XCTAssertEqual(runner.dropOwedExceptAcknowledgements(), 1)
        store.failNextWrites = 0
        try runner.flushPending()  // on the next connection
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1], "key2 was abandoned in flight when the write failed")
        XCTAssertTrue(store.rescheduled.isEmpty, "key1's reschedule belonged to the lost lease")
    }

    func testLostConnectionWhileAcknowledging_keepsTheAcknowledgements_forTheNextConnection() throws {
        var (runner, _, store, _, plan, requests) = setUp(4, ackGroup: 2)
        store.failNextWrites = 1
        guard case .storeFailed(let error) = runner.run(&plan, requests: requests) else { return XCTFail("expected storeFailed") }
        XCTAssertTrue(error.isConnectionLost)
        XCTAssertTrue(store.acknowledged.isEmpty)
        try runner.flushPending()  // after the reconnect
        XCTAssertEqual(store.acknowledged.flatMap { $0 }.sorted(), [1, 2], "answered 2xx before the loss: acknowledged on the new connection")
        XCTAssertTrue(runner.pending.isEmpty)
    }
    // MARK: batch mode

    private func batchSetUp(_ n: Int, documents: Int) -> (DeliveryRunner, FakeTransport, FakeStore, DeliveryPlan) {
        let transport = FakeTransport(), store = FakeStore(), host = FakeHost()
        let runner = DeliveryRunner(transport: transport, store: store, host: host, maxConcurrent: 2, ackGroupSize: 1, ackInterval: 0)
        let items = (0..<n).map { DeliveryItem(ids: [Int64($0 + 1)], primaryKey: "\($0)") }
        let plan = DeliveryPlan(items: items, policy: policy, breaker: CircuitBreaker(failureThreshold: 5, resetSeconds: 60),
                                limits: RequestLimits(documents: documents, bytes: 1 << 20))
        return (runner, transport, store, plan)
    }

    private func document(_ index: Int) -> Payload { Payload(id: "t:\(index)", body: Array("{\"k\":\(index)}".utf8)) }
    private func batchRequest(_ payloads: [Payload]) -> HTTPRequest {
        HTTPRequest(url: "http://127.0.0.1/batch", body: RequestBuilder.batchPayload(payloads).body)
    }

    func testBatch_sendsArraysOfTheDocuments_andPerItemAnswersSettleEachOne() {
        var (runner, transport, store, plan) = batchSetUp(10, documents: 4)
        transport.answer = { body in
            let results = body.contains(#"{"k":5}"#) ? #"{"results":[{"id":"t:4","status":200},{"id":"t:5","status":400}]}"# : #"{"ok":true}"#
            return .success(HTTPResponse(status: 200, body: Array(results.utf8), headers: [:], seconds: 0))
        }
        XCTAssertEqual(String(describing: runner.run(&plan, document: document, request: batchRequest)), "finished")
        XCTAssertEqual(transport.sent, [#"[{"k":0},{"k":1},{"k":2},{"k":3}]"#, #"[{"k":4},{"k":5},{"k":6},{"k":7}]"#, #"[{"k":8},{"k":9}]"#])
        XCTAssertEqual(store.acknowledged.flatMap { $0 }.sorted(), [1, 2, 3, 4, 5, 7, 8, 9, 10], "everything but the document answered 400")
        XCTAssertEqual(store.rescheduled.map(\.ids), [[6]])
        XCTAssertEqual(store.rescheduled.first?.permanent, 1, "a per-item 400 is a permanent failure of that document")
        XCTAssertEqual(runner.counters.failures, 1)
    }

    func testBatch_aFailedRequestIsRetriedWithTheSameBody() {
        var (runner, transport, store, plan) = batchSetUp(3, documents: 10)
        var answers = 0
        transport.answer = { _ in
            answers += 1
            return .success(HTTPResponse(status: answers == 1 ? 503 : 200, body: [], headers: [:], seconds: 0))
        }
        XCTAssertEqual(String(describing: runner.run(&plan, document: document, request: batchRequest)), "finished")
        XCTAssertEqual(transport.sent.count, 2)
        XCTAssertEqual(transport.sent[0], transport.sent[1], "the retry resends the same documents, byte for byte")
        XCTAssertEqual(store.acknowledged.flatMap { $0 }.sorted(), [1, 2, 3])
        XCTAssertEqual(runner.counters.retries, 3, "three documents were sent again")
    }

    func testBatch_aPerItem409_losesTheLease_andAcknowledgesNothingOfThatRequest() {
        var (runner, transport, store, plan) = batchSetUp(2, documents: 10)
        transport.answer = { _ in .success(HTTPResponse(status: 200, body: Array(#"{"results":[{"id":"t:1","status":409}]}"#.utf8), headers: [:], seconds: 0)) }
        guard case .leaseLost = runner.run(&plan, document: document, request: batchRequest) else { return XCTFail("expected leaseLost") }
        XCTAssertTrue(store.acknowledged.isEmpty && store.rescheduled.isEmpty)
    }
}
