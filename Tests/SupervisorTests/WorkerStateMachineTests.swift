import XCTest
@testable import Supervisor
@testable import Shared

final class WorkerStateMachineTests: XCTestCase {
    typealias M = WorkerStateMachine

    private func running(pid: Int32 = 10, at t: Double = 0) -> M {
        var m = M()
        _ = m.startRequested()
        _ = m.spawned(pid: pid, now: t)
        _ = m.readyReceived(now: t)
        return m
    }

    func testStartRequested_fromIdle_spawns() {
        var m = M()
        XCTAssertEqual(m.startRequested(), [.spawn])
    }

    func testSpawned_entersStarting_andReady_entersRunning() {
        var m = M()
        _ = m.startRequested()
        _ = m.spawned(pid: 42, now: 5)
        XCTAssertEqual(m.state, .starting(pid: 42, since: 5))
        _ = m.readyReceived(now: 6)
        XCTAssertEqual(m.state, .running(pid: 42, since: 5))
        XCTAssertEqual(m.pid, 42)
    }

    func testReady_whenNotStarting_isIgnored() {
        var m = M()
        XCTAssertEqual(m.readyReceived(now: 1), [])
        XCTAssertEqual(m.state, .idle)
    }

    func testCrash_whileRunning_backsOffAtLeastOneSecond_andCountsARestart() {
        var m = running()
        let actions = m.exited(.signaled(9), now: 10, unit: 0)
        guard case .backingOff(let until) = m.state else { return XCTFail("expected backing off, got \(m.state)") }
        XCTAssertEqual(until, 11, accuracy: 0.0001)
        XCTAssertEqual(m.nextWake, until)
        XCTAssertTrue(actions.contains(.log("running -> backing_off")))
        XCTAssertEqual(m.restarts, 1)
        XCTAssertEqual(m.lastExit, .signaled(9))
    }

    func testBackoffTimer_beforeDeadline_doesNothing_afterDeadline_spawns() {
        var m = running()
        _ = m.exited(.exited(1), now: 10, unit: 0.5)
        let until = m.nextWake!
        XCTAssertEqual(m.timerFired(now: until - 0.01), [])
        XCTAssertEqual(m.timerFired(now: until), [.spawn])
    }

    func testRepeatedCrashesAtStart_doubleTheDelay_upToSixtySeconds() {
        var m = M()
        _ = m.startRequested()
        var now = 0.0
        var delays: [Double] = []
        for _ in 0..<10 {
            _ = m.spawned(pid: 1, now: now)
            _ = m.exited(.exited(1), now: now + 0.1, unit: 0.5)  // unit 0.5: no jitter
            let until = m.nextWake!
            delays.append(until - (now + 0.1))
            now = until
            XCTAssertEqual(m.timerFired(now: now), [.spawn])
        }
        XCTAssertEqual(delays.map { ($0 * 1000).rounded() / 1000 }, [1, 2, 4, 8, 16, 32, 60, 60, 60, 60])
        XCTAssertEqual(m.restarts, 10)
    }

    func testJitter_staysWithinAQuarterOfTheCeiling_andNeverBelowOneSecond() {
        let p = RestartPolicy()
        XCTAssertEqual(p.delay(failures: 0, unit: 0), 1)
        XCTAssertEqual(p.delay(failures: 2, unit: 0), 3, accuracy: 1e-9)
        XCTAssertEqual(p.delay(failures: 2, unit: 0.999), 4.998, accuracy: 1e-3)
        XCTAssertEqual(p.delay(failures: 20, unit: 0.999), 60)
    }

    func testStableRunOfSixtySeconds_resetsTheBackoff() {
        var m = M()
        _ = m.startRequested()
        _ = m.spawned(pid: 1, now: 0)
        _ = m.exited(.exited(1), now: 1, unit: 0.5)
        _ = m.timerFired(now: m.nextWake!)
        _ = m.spawned(pid: 2, now: 3)
        _ = m.exited(.exited(1), now: 4, unit: 0.5)
        XCTAssertEqual(m.consecutiveFailures, 2)
        _ = m.timerFired(now: m.nextWake!)
        _ = m.spawned(pid: 3, now: 10)
        _ = m.readyReceived(now: 10)
        _ = m.exited(.signaled(9), now: 71, unit: 0.5)
        XCTAssertEqual(m.nextWake!, 72, accuracy: 1e-9, "after 61 s of running the next delay is back to 1 s")
        XCTAssertEqual(m.restarts, 3)
    }

    func testExit78_isNeverRestarted_andKeepsTheFatalMessage() {
        var m = running()
        m.fatalReceived(error: "watched table public.gone does not exist")
        let actions = m.exited(.exited(78), now: 5, unit: 0.5)
        XCTAssertEqual(m.state, .failed(reason: "watched table public.gone does not exist"))
        XCTAssertFalse(actions.contains(.spawn))
        XCTAssertNil(m.nextWake)
        XCTAssertEqual(m.restarts, 0)
        XCTAssertEqual(m.timerFired(now: 1000), [])
    }

    func testExit78_duringStart_isAlsoPermanent() {
        var m = M()
        _ = m.startRequested()
        _ = m.spawned(pid: 3, now: 0)
        _ = m.exited(.exited(78), now: 0.2, unit: 0)
        XCTAssertEqual(m.state.name, "failed")
    }

    func testCleanExitWithoutStopRequest_isRestarted() {
        var m = running()
        _ = m.exited(.exited(0), now: 5, unit: 0.5)
        XCTAssertEqual(m.state.name, "backing_off")
    }

    func testStop_whileRunning_sendsTerm_thenKillAfterTimeout() {
        var m = running(pid: 7)
        let actions = m.stopRequested(now: 100, timeout: 10)
        XCTAssertEqual(m.state, .stopping(pid: 7, killAt: 110))
        XCTAssertTrue(actions.contains(.signal(pid: 7, .term)))
        XCTAssertEqual(m.timerFired(now: 105), [])
        XCTAssertTrue(m.timerFired(now: 110).contains(.signal(pid: 7, .kill)))
        _ = m.exited(.signaled(9), now: 110.1, unit: 0)
        XCTAssertEqual(m.state, .stopped)
        XCTAssertEqual(m.restarts, 0)
    }

    func testKillDeadline_passed_sendsKillExactlyOnce_andLeavesNoTimerUntilTheExit() {
        var m = running(pid: 7)
        _ = m.stopRequested(now: 100, timeout: 10)
        let kills = (0..<5).flatMap { m.timerFired(now: 110 + Double($0)) }.filter { $0 == .signal(pid: 7, .kill) }
        XCTAssertEqual(kills.count, 1)
        XCTAssertNil(m.nextWake, "a deadline in the past would make the supervisor loop spin until the reap")
        XCTAssertEqual(m.state, .stopping(pid: 7, killAt: nil))
        _ = m.exited(.signaled(9), now: 120, unit: 0)
        XCTAssertEqual(m.state, .stopped)
    }

    func testReady_afterACrashWithAnError_clearsTheError() {
        var m = running(pid: 7)
        m.fatalReceived(error: "boom")
        _ = m.exited(.exited(1), now: 100, unit: 0)
        _ = m.timerFired(now: 200)
        _ = m.spawned(pid: 8, now: 200)
        XCTAssertEqual(m.lastError, "boom")
        _ = m.readyReceived(now: 201)
        XCTAssertNil(m.lastError)
    }

    func testStall_whileRunning_killsOnce_andTheExitRestartsIt() {
        var m = running(pid: 7)
        XCTAssertEqual(m.stallDetected(silentSeconds: 12).first, .signal(pid: 7, .kill))
        XCTAssertEqual(m.lastError?.hasPrefix("stalled"), true)
        _ = m.exited(.signaled(9), now: 20, unit: 0)
        XCTAssertEqual(m.state.name, "backing_off")
        XCTAssertEqual(m.stallDetected(silentSeconds: 30), [], "only a running worker can stall")
    }

    func testStop_whileBackingOff_settlesAtOnce() {
        var m = running()
        _ = m.exited(.exited(1), now: 1, unit: 0)
        XCTAssertEqual(m.stopRequested(now: 1.5, timeout: 10).contains(.spawn), false)
        XCTAssertEqual(m.state, .stopped)
        XCTAssertTrue(m.isSettled)
    }

    func testStop_whenAlreadyStopped_doesNothing() {
        var m = running()
        _ = m.stopRequested(now: 0, timeout: 1)
        _ = m.exited(.exited(0), now: 0.5, unit: 0)
        XCTAssertEqual(m.stopRequested(now: 1, timeout: 1), [])
    }

    func testStartRequested_afterFailed_spawnsAgain_withFreshBackoff() {
        var m = running()
        _ = m.exited(.exited(78), now: 1, unit: 0)
        XCTAssertEqual(m.startRequested(), [.spawn])
        XCTAssertEqual(m.consecutiveFailures, 0)
    }

    func testSpawnFailure_backsOff() {
        var m = M()
        _ = m.startRequested()
        _ = m.spawnFailed(error: "posix_spawn failed: ENOENT", now: 0, unit: 0.5)
        XCTAssertEqual(m.state, .backingOff(until: 1))
        XCTAssertEqual(m.lastError, "posix_spawn failed: ENOENT")
    }

    func testExitClassification_followsDesignSection7() {
        XCTAssertEqual(ExitReason.exited(0).classification, .clean)
        XCTAssertEqual(ExitReason.exited(1).classification, .transient)
        XCTAssertEqual(ExitReason.exited(78).classification, .config)
        XCTAssertEqual(ExitReason.exited(2).classification, .crash)
        XCTAssertEqual(ExitReason.signaled(9).classification, .crash)
    }
}
