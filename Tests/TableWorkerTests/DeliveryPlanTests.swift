import Shared
import XCTest
@testable import TableWorker

/// The delivery rules of DESIGN.md section 5, one line each, on the pure plan (no clock, no I/O).
final class DeliveryPlanTests: XCTestCase {
    private let policy = DeliveryPolicy(maxRetries: 2, backoff: Backoff(initial: 1, maximum: 30), deadLetterAfter: 3)

    private func plan(_ items: [DeliveryItem], threshold: Int = 5, policy: DeliveryPolicy? = nil) -> DeliveryPlan {
        DeliveryPlan(items: items, policy: policy ?? self.policy, breaker: CircuitBreaker(failureThreshold: threshold, resetSeconds: 60))
    }

    private func items(_ n: Int) -> [DeliveryItem] {
        (0..<n).map { (i: Int) -> DeliveryItem in
            let first = Int64(i * 10 + 1)
            return DeliveryItem(ids: [first, first + 1])
        }
    }

    func testStart_sendsEveryKeyOnce() {
        var p = plan(items(3))
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [.send([0, 1, 2])])
        XCTAssertEqual(p.inFlight, 3)
    }

    func test2xx_acknowledgesExactlyTheCoveredIds() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(1, .delivered, now: 1, unit: 0.5), [.acknowledge([11, 12])])
        XCTAssertEqual(p.responded(0, .delivered, now: 1, unit: 0.5), [.acknowledge([1, 2])])
        XCTAssertTrue(p.isFinished)
    }

    func test4xx_reschedulesItsOwnKeyOnly_andNeverBlocksTheOthers() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .rejected("HTTP 400"), now: 1, unit: 0.5),
                       [.reschedule(item: 0, error: "HTTP 400", afterSeconds: 0.75, attemptsMade: 1, permanent: true)])
        XCTAssertEqual(p.responded(1, .delivered, now: 1, unit: 0.5), [.acknowledge([11, 12])])
        XCTAssertTrue(p.isFinished, "a 4xx is not retried in the batch")
    }

    func test4xx_deadLettersAfterThePermanentFailureThreshold() {
        var p = plan([DeliveryItem(ids: [5], attempts: 9, permanentFailures: 2)])
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .rejected("HTTP 422"), now: 1, unit: 0.5), [.deadLetter(item: 0, error: "HTTP 422", attemptsMade: 1)])
    }

    func test4xx_afterAnOutage_isNotDeadLetteredAtOnce_becauseTransientTriesDoNotCount() {
        var p = plan([DeliveryItem(ids: [5], attempts: 40, permanentFailures: 0)])
        _ = p.started(now: 0, unit: 0.5)
        guard case .reschedule(_, _, _, _, permanent: true)? = p.responded(0, .rejected("HTTP 400"), now: 1, unit: 0.5).first else {
            return XCTFail("40 transient tries must not dead-letter the first 4xx")
        }
    }

    func testTransient_isRetriedInTheBatch_withFullJitterBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .failed("HTTP 503", retryAfter: nil), now: 10, unit: 0.5), [])
        XCTAssertEqual(p.nextWake, 10.5)
        XCTAssertEqual(p.due(now: 10.4), [])
        XCTAssertEqual(p.due(now: 10.5), [.send([0])])
    }

    func testTransient_afterMaxRetries_isRescheduledWithEveryTryRecorded() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        for t in [1.0, 10, 20] {
            _ = p.due(now: t)
            let actions = p.responded(0, .failed("timeout", retryAfter: nil), now: t, unit: 0.5)
            if t == 20 {
                XCTAssertEqual(actions, [.reschedule(item: 0, error: "timeout", afterSeconds: 0.75, attemptsMade: 3, permanent: false)])
            }
        }
        XCTAssertTrue(p.isFinished)
    }

    func testRetryAfter_isHonoured() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 429", retryAfter: 7), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 107)
    }

    func testRetryAfterZero_isFlooredAtTheConfiguredBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 429", retryAfter: 0), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 101)
    }

    func testRetryAfter_isCappedAtTheMaximumBackoff() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 503", retryAfter: 3600), now: 100, unit: 0.5)
        XCTAssertEqual(p.nextWake, 130)
    }

    func testNeverTwoInFlightForOneKey() {
        var p = plan(items(2))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.due(now: 1000), [], "in flight: not sent again, however late")
        _ = p.responded(0, .failed("HTTP 500", retryAfter: nil), now: 1, unit: 0)
        XCTAssertEqual(p.due(now: 1), [.send([0])])
        XCTAssertEqual(p.due(now: 2), [])
    }

    func testShutdownMidRound_acknowledgesOnlyWhatWasAnswered2xx() {
        var p = plan(items(3))
        _ = p.started(now: 0, unit: 0.5)
        XCTAssertEqual(p.responded(0, .delivered, now: 1, unit: 0.5), [.acknowledge([1, 2])])
        XCTAssertEqual(p.stopped(unit: 0.5), [], "keys 1 and 2 were not answered: nothing to acknowledge or record")
        XCTAssertTrue(p.isFinished)
    }

    func testShutdownDuringARetryWait_recordsTheTriesMade() {
        var p = plan(items(1))
        _ = p.started(now: 0, unit: 0.5)
        _ = p.responded(0, .failed("HTTP 502", retryAfter: nil), now: 1, unit: 0.5)
        XCTAssertEqual(p.stopped(unit: 0.5), [.reschedule(item: 0, error: "HTTP 502", afterSeconds: 0.75, attemptsMade: 1, permanent: false)])
    }

    func testBreakerOpens_failedKeysAreRescheduled_andUnsentKeysStayUntouched() {
        var p = plan(items(3), threshold: 1)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [.send([0, 1, 2])])
        let actions = p.responded(0, .failed("HTTP 503", retryAfter: nil), now: 1, unit: 0.5)
        XCTAssertEqual(actions, [.reschedule(item: 0, error: "HTTP 503", afterSeconds: 0.75, attemptsMade: 1, permanent: false)])
        XCTAssertEqual(p.notSent(1, now: 1, unit: 0.5), [])
        XCTAssertEqual(p.notSent(2, now: 1, unit: 0.5), [])
        XCTAssertTrue(p.isFinished, "keys 1 and 2 wait in the tracking table, untouched")
        XCTAssertEqual(p.breaker.reported, .open)
    }

    func testHalfOpenBreaker_sendsOneProbe_thenTheRestAfterItSucceeds() {
        var breaker = CircuitBreaker(failureThreshold: 1, resetSeconds: 10)
        breaker.recordTransientFailure(now: 0)
        var p = DeliveryPlan(items: items(3), policy: policy, breaker: breaker)
        XCTAssertEqual(p.started(now: 5, unit: 0.5), [], "open: nothing is sent")
        XCTAssertTrue(p.isFinished)
        p = DeliveryPlan(items: items(3), policy: policy, breaker: breaker)
        XCTAssertEqual(p.started(now: 10, unit: 0.5), [.send([0])])
        XCTAssertEqual(p.due(now: 10), [], "one probe at a time")
        _ = p.responded(0, .delivered, now: 11, unit: 0.5)
        XCTAssertEqual(p.due(now: 11), [.send([1, 2])])
    }

    func testKnownQueryFailure_isSettledWithoutSending_andCountsAsPermanent() {
        var items = items(2)
        items[0].knownFailure = .rejected("atomic data query failed: division by zero")
        var p = plan(items)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [
            .reschedule(item: 0, error: "atomic data query failed: division by zero", afterSeconds: 0.75, attemptsMade: 1, permanent: true),
            .send([1]),
        ])
    }

    func testStatementTimeoutInTheQuery_isTransient() {
        var items = items(1)
        items[0].knownFailure = .failed("canceling statement due to statement timeout", retryAfter: nil)
        var p = plan(items)
        XCTAssertEqual(p.started(now: 0, unit: 0.5), [
            .reschedule(item: 0, error: "canceling statement due to statement timeout", afterSeconds: 0.75, attemptsMade: 1, permanent: false),
        ])
    }

    func testQueryFailureClassification() {
        func c(_ state: String) -> QueryFailure { QueryFailure.classify(PostgresError(kind: .query, sqlState: state, message: "")) }
        XCTAssertEqual(c("57014"), .transient)
        XCTAssertEqual(c("40P01"), .transient)
        XCTAssertEqual(c("42501"), .table)
        XCTAssertEqual(c("42P01"), .table)
        XCTAssertEqual(c("42703"), .table)
        XCTAssertEqual(c("42883"), .table)
        XCTAssertEqual(c("22012"), .key)
        XCTAssertEqual(c("P0001"), .key)
    }
    // MARK: batch mode

    private func batchPlan(_ n: Int, documents: Int = 3, bytes: Int = 1000, threshold: Int = 5) -> DeliveryPlan {
        DeliveryPlan(items: items(n), policy: policy, breaker: CircuitBreaker(failureThreshold: threshold, resetSeconds: 60),
                     limits: RequestLimits(documents: documents, bytes: bytes))
    }

    func testBatchPacking_respectsBothLimits_inOrder_andAnOversizeDocumentGoesAlone() {
        let limits = RequestLimits(documents: 3, bytes: 100)
        let sizes = [10, 10, 10, 10, 200, 40, 40, 40]
        // [10,10,10] is full by count; 10 then 200 (alone, too big for any request); 40+40 = 83 with commas and brackets.
        XCTAssertEqual(limits.pack(Array(sizes.indices), size: { sizes[$0] }), [[0, 1, 2], [3], [4], [5, 6], [7]])
        XCTAssertEqual(RequestLimits(documents: 100, bytes: 1000).pack([], size: { _ in 1 }), [])
    }

    func testBatchStart_sendsEachKeyInOneRequestOnly() {
        var p = batchPlan(7)
        XCTAssertEqual(p.started(now: 0, unit: 0.5, size: { _ in 10 }), [.sendRequests([[0, 1, 2], [3, 4, 5], [6]])])
        XCTAssertEqual(p.due(now: 1000, size: { _ in 10 }), [], "in flight: never in a second request")
    }

    func testBatch2xx_acknowledgesEveryDocumentOfTheRequest_andNothingElse() {
        var p = batchPlan(4)
        _ = p.started(now: 0, unit: 0.5, size: { _ in 10 })
        XCTAssertEqual(p.requestAnswered([0, 1, 2], Array(repeating: .delivered, count: 3), now: 1, unit: 0.5),
                       [.acknowledge([1, 2]), .acknowledge([11, 12]), .acknowledge([21, 22])])
        XCTAssertFalse(p.isFinished, "the second request is still in flight")
    }

    func testBatchTransientFailure_countsOnceTowardTheBreaker_andRetriesTheSameSetTogether_afterRetryAfter() {
        var p = batchPlan(3, threshold: 2)
        _ = p.started(now: 0, unit: 0.5, size: { _ in 10 })
        let failed = DeliveryOutcome.failed("HTTP 503", retryAfter: 7)
        XCTAssertEqual(p.requestAnswered([0, 1, 2], Array(repeating: failed, count: 3), now: 10, unit: 0.5), [])
        XCTAssertEqual(p.breaker.reported, .closed, "one failed request of three documents is one failure, not three")
        XCTAssertEqual(p.nextWake, 17, "Retry-After applies to the whole request")
        XCTAssertEqual(p.due(now: 16.9, size: { _ in 10 }), [])
        XCTAssertEqual(p.due(now: 17, size: { _ in 10 }), [.sendRequests([[0, 1, 2]])], "retried together: the same set, so the same Idempotency-Key")
    }

    func testBatchPerItemAnswers_settleEachDocumentByItsOwnStatus() {
        var p = batchPlan(3)
        _ = p.started(now: 0, unit: 0.5, size: { _ in 10 })
        let actions = p.requestAnswered([0, 1, 2], [.delivered, .rejected("HTTP 400 from ingestor (per-item result)"), .failed("HTTP 503", retryAfter: nil)],
                                        now: 1, unit: 0.5)
        XCTAssertEqual(actions, [.acknowledge([1, 2]), .reschedule(item: 1, error: "HTTP 400 from ingestor (per-item result)", afterSeconds: 0.75, attemptsMade: 1, permanent: true)])
        XCTAssertEqual(p.breaker.consecutiveFailures, 0, "a request that delivered anything is a success for the breaker")
        XCTAssertEqual(p.due(now: 100, size: { _ in 10 }), [.sendRequests([[2]])], "only the transient one is retried")
    }

    func testBatchPerItemRejection_deadLettersByTheUsualRule() {
        var p = DeliveryPlan(items: [DeliveryItem(ids: [1]), DeliveryItem(ids: [2], attempts: 2, permanentFailures: 2)], policy: policy,
                             breaker: CircuitBreaker(failureThreshold: 5, resetSeconds: 60), limits: RequestLimits(documents: 10, bytes: 1000))
        _ = p.started(now: 0, unit: 0.5, size: { _ in 10 })
        XCTAssertEqual(p.requestAnswered([0, 1], [.delivered, .rejected("HTTP 400")], now: 1, unit: 0.5),
                       [.acknowledge([1]), .deadLetter(item: 1, error: "HTTP 400", attemptsMade: 1)])
    }

    func testBatchBreaker_opensOnFailedRequests_andItsHalfOpenProbeIsOneRequest() {
        var p = batchPlan(9, threshold: 2)
        XCTAssertEqual(p.started(now: 0, unit: 0.5, size: { _ in 10 }), [.sendRequests([[0, 1, 2], [3, 4, 5], [6, 7, 8]])])
        let failed = Array(repeating: DeliveryOutcome.failed("HTTP 503", retryAfter: nil), count: 3)
        XCTAssertEqual(p.requestAnswered([0, 1, 2], failed, now: 1, unit: 0.5), [])
        let actions = p.requestAnswered([3, 4, 5], failed, now: 1, unit: 0.5)
        XCTAssertEqual(p.breaker.reported, .open)
        XCTAssertEqual(actions.count, 6, "the failed documents are rescheduled: \(actions)")
        for index in 6...8 { _ = p.notSent(index, now: 1, unit: 0.5) }
        XCTAssertTrue(p.isFinished)

        var probe = DeliveryPlan(items: items(9), policy: policy, breaker: p.breaker, limits: RequestLimits(documents: 3, bytes: 1000))
        XCTAssertEqual(probe.started(now: 61, unit: 0.5, size: { _ in 10 }), [.sendRequests([[0, 1, 2]])], "half-open: one request")
        XCTAssertEqual(probe.due(now: 61, size: { _ in 10 }), [], "nothing more until the probe answers")
        _ = probe.requestAnswered([0, 1, 2], Array(repeating: .delivered, count: 3), now: 62, unit: 0.5)
        XCTAssertEqual(probe.breaker.reported, .closed)
        XCTAssertEqual(probe.due(now: 62, size: { _ in 10 }), [.sendRequests([[3, 4, 5], [6, 7, 8]])])
    }
}
