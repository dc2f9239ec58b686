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
        _ = m.tried(acquired: false, now: 55, lastSendAt: 50)
        XCTAssertNil(m.tried(acquired: true, now: 56, lastSendAt: 50, cleanHandoff: true))
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
        _ = m.tried(acquired: true, now: 10, lastSendAt: 9)
        XCTAssertFalse(m.mayPublish(now: 13.9), "our own abandoned requests may still be in flight until 9 + 5")
        XCTAssertTrue(m.mayPublish(now: 14))
    }

    func testReTakingALostLease_longAfterTheLastRequest_doesNotWaitAgain() {
        var m = LeaseMachine(fenceSeconds: 5, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        m.connectionLost()
        _ = m.tried(acquired: true, now: 60, lastSendAt: 20)
        XCTAssertTrue(m.mayPublish(now: 60), "a database outage longer than the fence: no wait after it")
    }

    func testZeroFence_leadsAtOnce() {
        var m = LeaseMachine(fenceSeconds: 0, retrySeconds: 2)
        _ = m.tried(acquired: true, now: 0)
        XCTAssertTrue(m.mayPublish(now: 0))
    }
}
