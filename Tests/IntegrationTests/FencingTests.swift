import Foundation
import Shared
import XCTest

/// The one gate before every send, and the lease epoch, tried from the outside: real supervisors,
/// a real PostgreSQL, the real ingestor with its fencing rule on, real signals.
extension DeliveryReliabilityTests {
    private func leaseState(_ s: SupervisorProcess, _ table: String = "items") -> String? {
        (try? s.health().body["components"]?["tables"]?[table]?["lease"]?.string) ?? nil
    }

    /// Instance A sends key 3 and is answered 503 with Retry-After 8. Its session is then cut while
    /// it cannot act (its worker is stopped: a network fault, a failover). B takes the lease,
    /// waits the fence and publishes key 3's newer state. When A runs again, its retry is due: it
    /// must never be sent, so the ingestor never receives v=1 after v=2 from another instance.
    func testARetryWaitingOnRetryAfter_whenTheLeaseIsLost_isNeverSentAfterTheSuccessorsNewerState() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 5))
        let ingestor = try startIngestor()
        try ingestor.setControl(["enforce_epoch": true])
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let configure: (inout PublisherConfig) -> Void = {
            $0.ingestor.maxRetries = 3
            $0.ingestor.maxRetryDelaySeconds = 20  // Retry-After 8 is honoured as sent
        }
        let a = try startInstance(database, ingestor, table: items, instance: "host-a", configure: configure)  // fence 4 s
        try waitUntil(timeout: 30, "host-a leads") { self.leaseState(a) == "leader" }
        let b = try startInstance(database, ingestor, table: items, instance: "host-b", configure: configure)
        try waitUntil(timeout: 30, "host-b stands by") { self.leaseState(b) == "standby" }

        try ingestor.setControl(["fail_keys": ["3": 503], "retry_after": 8])
        try database.execute("UPDATE items SET v = 1 WHERE id = 3")
        try waitUntil("host-a's first try of key 3 is answered 503") {
            try ingestor.requests().contains { $0.body["primary_key"]?.string == "3" && $0.status == 503 }
        }
        let refusedAt = Date()
        guard let workerPID = try a.workerPIDs()["items"] else { return XCTFail("no worker pid for host-a") }
        // A cannot act (stopped well under the supervisor's 10 s stall limit) and loses its session.
        kill(workerPID, SIGSTOP)
        var resumed = false
        defer { if !resumed { kill(workerPID, SIGCONT) } }
        try database.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher%@host-a'")
        try ingestor.setControl(["fail_keys": [String: Int](), "retry_after": NSNull()])
        try database.execute("UPDATE items SET v = 2 WHERE id = 3")
        try waitUntil(timeout: 20, "host-b takes over and publishes key 3's newer state") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == "host-b" && $0.body["primary_key"]?.string == "3" && $0.status == 200 }
        }
        XCTAssertLessThan(Date().timeIntervalSince(refusedAt), 8, "B published before A's retry came due, as in the scenario")
        kill(workerPID, SIGCONT)
        resumed = true
        // Past the time A's retry was due (8 s after the 503), with room for it to be sent.
        try waitUntil(timeout: 30, "host-a stands by again") {
            Date().timeIntervalSince(refusedAt) > 12 && self.leaseState(a) == "standby"
        }
        let requests = try ingestor.requests()
        guard let firstOfB = requests.firstIndex(where: { $0.header("X-Publisher-Instance") == "host-b" }) else { return XCTFail("no request from host-b") }
        let lateFromA = requests[firstOfB...].filter { $0.header("X-Publisher-Instance") == "host-a" }
        XCTAssertTrue(lateFromA.isEmpty, "host-a sent after host-b took over: \(lateFromA)")
        let key3 = requests.filter { $0.body["primary_key"]?.string == "3" && $0.status == 200 }.compactMap { $0.body["atomic_data"]?[0]?["v"]?.int }
        XCTAssertEqual(key3.last, 2, "the last state of key 3 delivered is its latest: \(key3)")
        XCTAssertEqual(key3, key3.sorted(), "key 3 never went backwards: \(key3)")

        // Every request carries the grant's epoch and the lease's name; B's grant is newer than A's.
        var epochs: [String: Set<Int64>] = [:]
        for r in requests {
            guard let instance = r.header("X-Publisher-Instance") else { continue }
            XCTAssertEqual(r.header("X-Publisher-Lease"), "public.items", "\(r)")
            guard let epoch = r.header("X-Publisher-Epoch").flatMap({ Int64($0) }) else { XCTFail("no X-Publisher-Epoch: \(r)"); continue }
            XCTAssertEqual(r.body["metadata"]?["publisher_epoch"]?.int.map(Int64.init), epoch, "the payload carries the same epoch")
            epochs[instance, default: []].insert(epoch)
        }
        let epochA = epochs["host-a"]?.max() ?? .max, epochB = epochs["host-b"]?.min() ?? .min
        XCTAssertLessThan(epochA, epochB, "the successor's grant has the higher epoch: \(epochs)")
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes_failed"), 0)
    }

    /// The ingestor's fencing rule: a request whose epoch is older than one it accepted for the
    /// same lease is refused with 409. The worker takes that as "this grant is stale": it sends
    /// nothing more under it, writes no failure onto the rows, lets the lease go, and publishes
    /// again only under a new, higher epoch.
    func testA409FromTheIngestor_endsTheStaleGrant_andPublishingResumesUnderAHigherEpoch() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 5))
        let ingestor = try startIngestor()
        try ingestor.setControl(["enforce_epoch": true])
        let a = try startInstance(database, ingestor, table: items, instance: "host-a")
        try waitUntil(timeout: 30, "host-a leads") { self.leaseState(a) == "leader" }
        try database.execute("UPDATE items SET v = 1 WHERE id = 1")
        try waitUntil("the first change is published") { try self.sequences(ingestor)["1"] == [1] }
        let first = try XCTUnwrap(try ingestor.requests().last?.header("X-Publisher-Epoch").flatMap { Int64($0) })
        // Another grant of this lease was seen by the ingestor (as from a successor elsewhere).
        let poison = HTTPRequest(url: ingestor.baseURL + "/api/v1/items", method: "POST", headers: [("Content-Type", "application/json"),
                                 ("X-Publisher-Lease", "public.items"), ("X-Publisher-Epoch", String(first + 1))], body: Array("{}".utf8))
        _ = HTTPClient(timeoutMilliseconds: 5_000, connectTimeoutMilliseconds: 2_000, maxConnections: 1).perform(poison)
        try database.execute("UPDATE items SET v = 2 WHERE id = 1")
        try waitUntil(timeout: 30, "the stale grant is refused, then key 1's state arrives under a higher epoch") {
            try self.sequences(ingestor)["1"] == [1, 2]
        }
        let requests = try ingestor.requests()
        XCTAssertTrue(requests.contains { $0.status == 409 }, "the stale grant was refused at least once")
        let accepted = requests.filter { $0.status == 200 && $0.body["primary_key"]?.string == "1" }.compactMap { $0.header("X-Publisher-Epoch").flatMap { Int64($0) } }
        XCTAssertGreaterThanOrEqual(accepted.last ?? 0, first + 1, "published again under an epoch no lower than the one the ingestor had seen")
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes WHERE last_error IS NOT NULL"), 0, "a stale grant is not the key's failure")
        XCTAssertEqual(try database.count("SELECT count(*) FROM items_changes_failed"), 0)
        XCTAssertTrue(a.process.stderrText().contains("HTTP 409"), "the worker says why it let the lease go")
    }

    /// A whole instance paused (SIGSTOP of the supervisor and its workers, as a frozen VM): its
    /// kernel keeps its TCP sessions, so its lock lives on. The standby sees no renewal for
    /// `lease_expiry_seconds`, ends the holder's session and takes over after the fence. When the
    /// paused instance resumes, it finds its session gone and sends nothing.
    func testAPausedLeader_isTakenOverAfterTheExpiry_andSendsNothingWhenItResumes() throws {
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: 20))
        let ingestor = try startIngestor()
        try ingestor.setControl(["enforce_epoch": true])
        let configure: (inout PublisherConfig) -> Void = { $0.service.leaseExpirySeconds = 6 }
        let a = try startInstance(database, ingestor, table: items, instance: "host-a", configure: configure)
        try waitUntil(timeout: 30, "host-a leads") { self.leaseState(a) == "leader" }
        let b = try startInstance(database, ingestor, table: items, instance: "host-b", configure: configure)
        try waitUntil(timeout: 30, "host-b stands by") { self.leaseState(b) == "standby" }
        let workerPIDs = Array(try a.workerPIDs().values)
        a.process.send(SIGSTOP)
        for pid in workerPIDs { kill(pid, SIGSTOP) }
        let pausedAt = Date()
        var resumed = false
        defer {
            if !resumed {
                a.process.send(SIGCONT)
                for pid in workerPIDs { kill(pid, SIGCONT) }
            }
        }
        try database.execute("UPDATE items SET v = 1")
        try waitUntil(timeout: 40, "host-b publishes") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == "host-b" }
        }
        let takeover = Date().timeIntervalSince(pausedAt)
        print("paused leader: the standby's first request came \(String(format: "%.1f", takeover)) s after the pause (expiry 6 s + fence 4 s + retry 0.5 s)")
        XCTAssertGreaterThanOrEqual(takeover, 6, "not before the expiry")
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 60)
        let before = try ingestor.requests().count
        a.process.send(SIGCONT)
        for pid in workerPIDs { kill(pid, SIGCONT) }
        resumed = true
        try database.execute("UPDATE items SET v = 2 WHERE id <= 5")
        try waitUntil(timeout: 30, "host-a stands by after resuming, and the new changes arrive") {
            try self.leaseState(a) == "standby" && self.sequences(ingestor).filter { $0.value.last == 2 }.count == 5
        }
        let after = try ingestor.requests()[before...]
        XCTAssertFalse(after.contains { $0.header("X-Publisher-Instance") == "host-a" }, "the resumed instance sent nothing: \(after.filter { $0.header("X-Publisher-Instance") == "host-a" })")
        _ = try assertNoKeyWentBackwards(ingestor)
        XCTAssertTrue(b.process.stderrText().contains("showed no sign of life"), "the standby says why it took over")
    }
}

extension DeliveryReliabilityTests {
    /// Only the leading instance's supervisor stopped (SIGSTOP; its worker runs on), during a write
    /// stream: the worker never blocks on its pipe to the supervisor, notices that its reports are
    /// not read for the silence limit (here the lease expiry, 6 s), and hands the lease over; the
    /// standby takes it without the fence and publishes. Once the supervisor runs again, the worker
    /// (the same process: not killed as stalled) stands by; nothing is lost, no key goes backwards,
    /// and no line reached the supervisor broken.
    func testAStoppedSupervisor_itsWorkerHandsTheLeaseOver_andTheStandbyPublishes() throws {
        let keys = 300
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        try ingestor.setControl(["enforce_epoch": true])
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let configure: (inout PublisherConfig) -> Void = { $0.service.leaseExpirySeconds = 6 }
        let a = try startInstance(database, ingestor, table: items, instance: "host-a", configure: configure)
        try waitUntil(timeout: 30, "host-a leads") { self.leaseState(a) == "leader" }
        let b = try startInstance(database, ingestor, table: items, instance: "host-b", configure: configure)
        try waitUntil(timeout: 30, "host-b stands by") { self.leaseState(b) == "standby" }
        let workerPID = try XCTUnwrap(try a.workerPIDs()["items"])
        // The worker's pipe to its supervisor, shrunk to one page: it fills within a second of the
        // SIGSTOP (at 64 KiB it would take longer than the silence limit), so the worker meets a
        // full pipe while it still leads.
        let pipe = open("/proc/\(workerPID)/fd/1", O_WRONLY | O_NONBLOCK | O_CLOEXEC)
        XCTAssertGreaterThanOrEqual(pipe, 0, "open the worker's stdout pipe: errno \(errno)")
        defer { close(pipe) }
        let F_SETPIPE_SZ: Int32 = 1031, F_GETPIPE_SZ: Int32 = 1032  // fcntl.h, Linux (_GNU_SOURCE)
        try waitUntil("the pipe is shrunk to one page (refused while it holds more)") { fcntl(pipe, F_SETPIPE_SZ, 4096) >= 0 }
        let capacity = Int(fcntl(pipe, F_GETPIPE_SZ))

        let writer = BackgroundWriter(database: database.config, name: "stopped-supervisor-writer", rounds: 1_500, perRound: 10, keys: keys, pauseMicroseconds: 10_000)
        try waitUntil("host-a publishes part of the stream") { try ingestor.requests().count >= 100 }
        a.process.send(SIGSTOP)
        let stoppedAt = Date()
        var resumed = false
        defer { if !resumed { a.process.send(SIGCONT) } }
        // A stats line is under 2 KiB: more than capacity - 2 KiB unread leaves no room for the next.
        try waitUntil("the worker's pipe fills") { (Pipes.unreadBytes(pipe) ?? 0) > capacity - 2048 }
        try waitUntil(timeout: 60, "host-b publishes while host-a's supervisor is stopped") {
            try ingestor.requests().contains { $0.header("X-Publisher-Instance") == "host-b" }
        }
        let takeover = Date().timeIntervalSince(stoppedAt)
        XCTAssertTrue(processIsAlive(workerPID), "host-a's worker runs on")
        let aLog = a.process.stderrText()
        XCTAssertTrue(aLog.contains("the supervisor has read nothing of this worker's reports"), "host-a's worker says why it let the lease go:\n\(aLog.suffix(3000))")
        let bLog = b.process.stderrText()
        XCTAssertTrue(bLog.contains("\"clean_handoff\":\"true\""), "host-b took over from a clean handoff, not by ending a silent holder:\n\(bLog.suffix(3000))")
        XCTAssertFalse(bLog.contains("showed no sign of life"))
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 60)

        a.process.send(SIGCONT)
        resumed = true
        try waitUntil(timeout: 30, "host-a's supervisor reads again and its worker stands by") { self.leaseState(a) == "standby" }
        XCTAssertEqual(try a.workerPIDs()["items"], workerPID, "the supervisor did not take its worker for stalled")
        try database.execute("UPDATE items SET v = v + 1 WHERE id <= 5")
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 30)
        let payloads = try assertNoKeyWentBackwards(ingestor).payloads
        XCTAssertEqual(try publishingOrder(ingestor), ["host-a", "host-b"], "host-a sent nothing after the handover")
        XCTAssertEqual(try a.metrics()["totals"]?["malformed_worker_lines"], 0, "every line reached the supervisor whole")
        XCTAssertEqual(try a.metrics()["tables"]?["items"]?["restarts"], 0)
        for s in [a, b] { XCTAssertTrue(s.unexpectedLogLines().isEmpty, s.unexpectedLogLines().joined(separator: "\n")) }
        print("stopped supervisor: the standby published \(String(format: "%.1f", takeover)) s after the SIGSTOP (silence limit 6 s = lease_expiry_seconds, clean handoff: no fence); \(payloads) payloads")
    }
}
