import XCTest
@testable import TableWorker

final class LeaseMachineTests: XCTestCase {
    func testFreeAtTheFirstTry_leadsAtOnce() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        XCTAssertNil(m.tried(acquired: true, now: 100))
        XCTAssertTrue(m.mayPublish(now: 100), "nobody was seen holding it: a single instance starts at once")
        XCTAssertEqual(m.takeovers, 0)
    }

    func testTakeover_fencesThenLeads() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: false, now: 90)
        XCTAssertNil(m.tried(acquired: true, now: 100))
        XCTAssertEqual(m.reported, .standby)
        XCTAssertFalse(m.mayPublish(now: 111.9), "the previous holder's requests may still be in flight")
        XCTAssertEqual(m.fenceRemaining(now: 106), 6)
        XCTAssertTrue(m.mayPublish(now: 112))
        XCTAssertEqual(m.reported, .leader)
        XCTAssertEqual(m.heldSeconds(now: 130), 30)
    }

    func testTakeoverAfterACleanHandoff_leadsAtOnce_butStillCountsAsATakeover() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: false, now: 90)
        XCTAssertNil(m.tried(acquired: true, now: 100, cleanHandoff: true))
        XCTAssertTrue(m.mayPublish(now: 100), "the previous holder let the lease go with nothing in flight")
        XCTAssertEqual(m.takeovers, 1)
    }

    func testCleanHandoff_afterLosingOurOwnLease_stillWaitsForOurOwnRequests() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.connectionLost()  // our requests sent at 50 were abandoned with the session
        _ = m.tried(acquired: false, now: 55, abandonedAt: 50)
        XCTAssertNil(m.tried(acquired: true, now: 56, abandonedAt: 50, cleanHandoff: true))
        XCTAssertFalse(m.mayPublish(now: 61.9), "our own abandoned requests end a fence after we sent them")
        XCTAssertTrue(m.mayPublish(now: 62))
    }

    func testReleased_holdsNothing() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.released()
        XCTAssertFalse(m.isHeld)
        XCTAssertEqual(m.reported, .none)
    }

    func testYielded_standsBy_andTakingItAgainFencesUnlessHandedOverCleanly() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.yielded()
        XCTAssertEqual(m.reported, .standby)
        XCTAssertNil(m.tried(acquired: true, now: 20))
        XCTAssertFalse(m.mayPublish(now: 31.9), "another instance may have led in between")
        var n = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = n.tried(acquired: true, now: 0)
        n.yielded()
        XCTAssertNil(n.tried(acquired: true, now: 20, cleanHandoff: true))
        XCTAssertTrue(n.mayPublish(now: 20))
    }

    func testNotAcquired_standsByAndRetries() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        XCTAssertEqual(m.tried(acquired: false, now: 5), 7)
        XCTAssertEqual(m.reported, .standby)
        XCTAssertFalse(m.mayPublish(now: 100))
    }

    func testTakeover_isCounted_onlyAfterAnotherHolderWasSeen() {
        var m = LeaseMachine(fenceSeconds: 0, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        XCTAssertEqual(m.takeovers, 0, "first holder: no takeover")
        m.connectionLost()
        _ = m.tried(acquired: false, now: 1)
        _ = m.tried(acquired: true, now: 3)
        XCTAssertEqual(m.takeovers, 1)
    }

    func testConnectionLost_dropsTheLease_andTheNextAcquisitionFencesAgain() {
        var m = LeaseMachine(fenceSeconds: 5, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        XCTAssertTrue(m.mayPublish(now: 0))
        m.connectionLost()
        XCTAssertFalse(m.mayPublish(now: 6))
        XCTAssertEqual(m.reported, .none)
        _ = m.tried(acquired: true, now: 10, abandonedAt: 9)
        XCTAssertFalse(m.mayPublish(now: 13.9), "our own abandoned requests may still be in flight until 9 + 5")
        XCTAssertTrue(m.mayPublish(now: 14))
    }

    func testReTakingALostLease_longAfterTheLastRequest_doesNotWaitAgain() {
        var m = LeaseMachine(fenceSeconds: 5, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.connectionLost()
        _ = m.tried(acquired: true, now: 60, abandonedAt: 20)
        XCTAssertTrue(m.mayPublish(now: 60), "a database outage longer than the fence: no wait after it")
    }

    func testZeroFence_leadsAtOnce() {
        var m = LeaseMachine(fenceSeconds: 0, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        XCTAssertTrue(m.mayPublish(now: 0))
    }
    // MARK: - the gate before every request

    func testTheGate_refusesWithoutAnEpoch_evenWhenLeading() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2, requestTimeoutSeconds: 10)
        _ = m.tried(acquired: true, now: 0)
        XCTAssertEqual(m.launch(now: 0), .refuse, "no grant recorded: nothing the ingestor could fence")
        m.granted(epoch: 7, at: 0)
        XCTAssertEqual(m.launch(now: 0), .go)
    }

    func testTheGate_asksForAConfirmation_onceTheBoundHasPassed() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2, requestTimeoutSeconds: 10)
        XCTAssertEqual(m.launchBoundSeconds, 2, "fence 12 - timeout 10")
        _ = m.tried(acquired: true, now: 0)
        m.granted(epoch: 7, at: 0)
        XCTAssertEqual(m.launch(now: 1.9), .go)
        XCTAssertEqual(m.launch(now: 2.0), .confirmFirst)
        m.renewed(at: 15)
        XCTAssertEqual(m.launch(now: 16.9), .go)
        XCTAssertEqual(m.launch(now: 17), .confirmFirst, "a retry after a 15 s Retry-After confirms first")
    }

    func testTheBound_isTheFenceLessTheTimeout_atMostTheRenewalPeriod_atLeastAFifth() {
        XCTAssertEqual(LeaseMachine(fenceSeconds: 32, retrySeconds: 2, requestTimeoutSeconds: 30).launchBoundSeconds, 2)
        XCTAssertEqual(LeaseMachine(fenceSeconds: 31, retrySeconds: 2, requestTimeoutSeconds: 30).launchBoundSeconds, 1)
        XCTAssertEqual(LeaseMachine(fenceSeconds: 100, retrySeconds: 2, requestTimeoutSeconds: 30).launchBoundSeconds, 2)
        XCTAssertEqual(LeaseMachine(fenceSeconds: 0, retrySeconds: 2, requestTimeoutSeconds: 30).launchBoundSeconds, 0.2)
    }

    func testTheGate_refusesOnceTheSessionIsLost_andTheEpochGoesWithIt() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2, requestTimeoutSeconds: 10)
        _ = m.tried(acquired: true, now: 0)
        m.granted(epoch: 7, at: 0)
        m.connectionLost()
        XCTAssertNil(m.epoch)
        XCTAssertEqual(m.launch(now: 0.1), .refuse)
        XCTAssertFalse(m.renewalDue(now: 100), "nothing to renew")
    }

    func testRenewal_isDueEveryTwoSeconds_whileHeld() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: false, now: 0)
        XCTAssertFalse(m.renewalDue(now: 10), "a standby renews nothing")
        _ = m.tried(acquired: true, now: 10)
        m.granted(epoch: 1, at: 10)
        XCTAssertFalse(m.renewalDue(now: 11.9))
        XCTAssertTrue(m.renewalDue(now: 12), "also while fencing: a standby elsewhere reads it")
    }

    /// A blip of the database while idle: nothing of ours was in flight, so no fence.
    func testRetakingOurOwnLease_withNothingAbandoned_leadsAtOnce() {
        var m = LeaseMachine(fenceSeconds: 12, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.connectionLost()
        XCTAssertNil(m.tried(acquired: true, now: 50, abandonedAt: nil))
        XCTAssertTrue(m.mayPublish(now: 50))
        m.connectionLost()
        XCTAssertNil(m.tried(acquired: true, now: 60, abandonedAt: 58))
        XCTAssertFalse(m.mayPublish(now: 69.9), "requests abandoned at 58 may be in flight until 70")
        XCTAssertTrue(m.mayPublish(now: 70))
    }
}

import Shared

final class PartitionPictureTests: XCTestCase {
    private func picture(_ leaders: [Int: String], standby: [(String, Int)]) -> PartitionPicture {
        var workers = leaders.map { PartitionPicture.PartitionWorker(instance: $0.value, partition: $0.key) }
        workers += standby.map { PartitionPicture.PartitionWorker(instance: $0.0, partition: $0.1) }
        return PartitionPicture(leaders: leaders, workers: workers)
    }

    func testOneInstanceLeadingAllFour_letsItsHighestGo_toAnIdleInstanceStandingByForIt() {
        let p = picture([0: "a", 1: "a", 2: "a", 3: "a"], standby: [("b", 0), ("b", 1), ("b", 2), ("b", 3)])
        XCTAssertTrue(p.shouldYield(instance: "a", partition: 3))
        XCTAssertFalse(p.shouldYield(instance: "a", partition: 2), "one partition at a time: the highest")
        XCTAssertFalse(p.shouldYield(instance: "b", partition: 3), "b leads nothing")
    }

    func testSettles_whenTheGapIsAtMostOne() {
        let three = picture([0: "a", 1: "a", 2: "a", 3: "b"], standby: [("b", 0), ("b", 1), ("b", 2), ("a", 3)])
        XCTAssertTrue(three.shouldYield(instance: "a", partition: 2), "3 against 1")
        let even = picture([0: "a", 1: "a", 2: "b", 3: "b"], standby: [("b", 0), ("b", 1), ("a", 2), ("a", 3)])
        XCTAssertFalse(even.shouldYield(instance: "a", partition: 1))
        XCTAssertFalse(even.shouldYield(instance: "b", partition: 3))
        let odd = picture([0: "a", 1: "a", 2: "b"], standby: [("b", 0), ("b", 1), ("a", 2)])
        XCTAssertFalse(odd.shouldYield(instance: "a", partition: 1), "2 against 1: moving one would only swap the roles")
    }

    func testNoYield_withoutAStandbyForThatPartition() {
        let p = picture([0: "a", 1: "a", 2: "a", 3: "a"], standby: [("b", 0)])
        XCTAssertFalse(p.shouldYield(instance: "a", partition: 3), "nobody could take partition 3")
    }

    func testApplicationNames() {
        XCTAssertEqual(PartitionPicture.parse(applicationName: "atomic-data-publisher/items#12@host-a")?.partition, 12)
        XCTAssertEqual(PartitionPicture.parse(applicationName: "atomic-data-publisher/items#12@host@x")?.instance, "host@x")
        XCTAssertNil(PartitionPicture.parse(applicationName: "atomic-data-publisher/items@host-a"))
    }

}
