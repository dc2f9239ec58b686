import Shared
import XCTest
@testable import TableWorker

/// The runner against a fake transport, a fake store and a fake clock: it performs the plan's
/// actions, acknowledges in small groups, keeps what it owes across a lost connection, and stops
/// cleanly mid-round.
final class DeliveryRunnerTests: XCTestCase {
    final class FakeTransport: IngestTransport {
        /// The answer to a request, by its body text (one body per key in these tests).
        var answer: (String) -> Result<HTTPResponse, HTTPTransportError> = { _ in .success(HTTPResponse(status: 200, body: [], headers: [:], seconds: 0.001)) }
        /// Abort (like a shutdown) after this many answers.
        var abortAfter: Int?
        private(set) var sent: [String] = []
        var maxSeenConcurrency = 0

        func perform(count: Int, request: (Int) -> HTTPRequest, maxConcurrent: Int, shouldAbort: () -> Bool, keepLaunching: () -> Bool,
                     onComplete: (Int, Result<HTTPResponse, HTTPTransportError>) -> Bool) -> [Result<HTTPResponse, HTTPTransportError>] {
            maxSeenConcurrency = max(maxSeenConcurrency, min(maxConcurrent, count))
            var results: [Result<HTTPResponse, HTTPTransportError>] = []
            var launching = true
            for i in 0..<count {
                if !launching || shouldAbort() || !keepLaunching() || (abortAfter.map { sent.count >= $0 } ?? false) {
                    _ = shouldAbort()
                    results.append(.failure(HTTPTransportError(code: HTTPClient.notSentCode, message: "not sent", isTimeout: false)))
                    continue
                }
                let body = String(decoding: request(i).body, as: UTF8.self)
                sent.append(body)
                let r = answer(body)
                results.append(r)
                launching = onComplete(i, r)
            }
            return results
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
        func wait(_ seconds: Double) -> Bool { waits.append(seconds); now += seconds; return false }
        var leaseLostAtTick: Int?
        func tick(inFlight: Int) -> TickVerdict {
            ticks += 1
            if let n = leaseLostAtTick, ticks >= n { return .leaseLost }
            return (stopAtTick.map { ticks >= $0 } ?? false) ? .stop : .go
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
        var (runner, transport, store, host, plan, requests) = setUp(5)
        host.stopAtTick = 3  // SIGTERM arrives while the third request would start
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "stopRequested")
        XCTAssertEqual(transport.sent, ["key0", "key1"])
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1, 2])
        XCTAssertTrue(store.rescheduled.isEmpty)
    }

    func testStopMidRound_withADrainTime_startsNothingNew_andLeavesNothingInFlight() {
        var (runner, transport, store, host, plan, requests) = setUp(5)
        runner.stopDrainSeconds = 5
        host.stopAtTick = 3
        XCTAssertEqual(String(describing: runner.run(&plan, requests: requests)), "stopRequested")
        XCTAssertEqual(transport.sent, ["key0", "key1"], "nothing new starts once the stop is asked")
        XCTAssertEqual(store.acknowledged.flatMap { $0 }, [1, 2])
        XCTAssertFalse(runner.abandonedInFlight, "a graceful stop leaves nothing in flight: the lease may be handed over")
    }

    func testALostLease_stopsSendingAtOnce_andKeepsTheAcknowledgementsOwed() throws {
        var (runner, transport, store, host, plan, requests) = setUp(5)
        host.leaseLostAtTick = 3
        guard case .storeFailed(let error) = runner.run(&plan, requests: requests) else { return XCTFail("expected storeFailed") }
        XCTAssertTrue(error.isConnectionLost)
        XCTAssertEqual(transport.sent, ["key0", "key1"], "nothing is sent once the lease is in doubt")
        var owed: [Int64] = []
        for write in runner.pending { if case .acknowledge(let ids) = write { owed += ids } }
        XCTAssertEqual(store.acknowledged.flatMap { $0 } + owed, [1, 2], "answered 2xx: acknowledged now or after the reconnect")
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
}
