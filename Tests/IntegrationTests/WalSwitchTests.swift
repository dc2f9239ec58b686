import Foundation
import Shared
import XCTest

/// `capture = "wal"` back to `"trigger"` on a running table: the changes committed before the
/// triggers existed are only in the slot, and the lease holder reads it up to where the triggers
/// took over before dropping it (docs/database.md, "Switching").
extension DeliveryReliabilityTests {
    func leftoverSlotAndPublication(_ database: TestDatabase) throws -> Int {
        try database.count("SELECT (SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'adp_items_%') + (SELECT count(*) FROM pg_publication WHERE pubname LIKE 'adp_items_%')")
    }

    /// A supervisor on `configURL`, its worker running.
    func launchSwitchInstance(_ config: PublisherConfig, _ configURL: URL) throws -> SupervisorProcess {
        let s = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort, directory: workDirectory,
                                      name: "supervisor-\(supervisors.count + 1)")
        supervisors.append(s)
        addDiagnostics { s.process.stderrTail(lines: 40) }
        try waitUntil("the supervisor's worker runs") { try s.workerPIDs()["items"] != nil }
        return s
    }

    /// A running WAL-mode table switched to trigger mode (a reload) while the application writes.
    /// A transaction that updated keys 251...300 before the reload commits only once the WAL
    /// worker has let the slot go and the new worker's CREATE TRIGGER waits for it: those
    /// changes are in the WAL and under no trigger, so only reading the slot publishes them.
    func testWALCapture_aWALModeTableSwitchedToTriggerModeDuringAStream_losesNothing_andTheSlotAndPublicationGo() throws {
        let keys = 300, streamed = 250, changes = 6_000
        let setup = try walSetup(keys: keys)
        let (database, ingestor, configURL) = (setup.database, setup.ingestor, setup.configURL)
        var config = setup.config
        let supervisor = try launchSwitchInstance(config, configURL)
        try waitUntil("the WAL worker streams the slot") {
            try database.count("SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'adp_items_%'") == 1
        }
        XCTAssertEqual(try userTriggers(database, on: ["items"]), 0, "WAL mode to begin with")
        let writer = BackgroundWriter(database: database.config, name: "wal-back-writer", rounds: changes / 10, perRound: 10, keys: streamed, pauseMicroseconds: 10_000)
        try waitUntil("the WAL-mode worker publishes part of the stream") { try ingestor.requests().count >= 100 }

        let held = try PostgresConnection.connect(ConnectionParameters(database.config, applicationName: "held-writer"))
        try held.execute("BEGIN")
        try held.execute("UPDATE items SET v = 1000 WHERE id > $1", [String(streamed)])
        config.service.watchedTables = [items]
        try ConfigFile.write(config, to: configURL)
        XCTAssertFalse(writer.isDone, "the switch comes during the stream")
        supervisor.process.send(SIGHUP)
        try waitUntil(timeout: 30, "the WAL worker let the slot go, and the trigger-mode worker's CREATE TRIGGER waits for the held transaction") {
            try database.count("SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'adp_items_%'") == 0
                && database.count("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name LIKE 'atomic-data-publisher%' AND query LIKE 'CREATE TRIGGER%'") == 1
        }
        try held.execute("COMMIT")

        try waitUntil(timeout: 60, "the slot and the publication are gone") { try self.leftoverSlotAndPublication(database) == 0 }
        XCTAssertEqual(try userTriggers(database, on: ["items"]), 2, "the capture and TRUNCATE triggers")
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error, "no application write failed during the switch")
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        let got = try sequences(ingestor)
        for key in (streamed + 1)...keys { XCTAssertEqual(got[String(key)]?.last, 1000, "key \(key), committed between the two modes") }
        let (payloads, _) = try assertNoKeyWentBackwards(ingestor)
        XCTAssertEqual(try leftoverSlotAndPublication(database), 0, "not made again")
        print("WAL capture, WAL mode switched to trigger mode during a stream: \(payloads) payloads")
    }

    /// The same switch with a restart, and kill -9 of the instance while the new trigger-mode
    /// worker reads the slot's backlog (300,000 row changes made while no instance ran): the next
    /// instance reads it to the end, then drops it.
    func testWALCapture_switchedToTriggerMode_killNineWhileTheLeftoverSlotIsRead_theNextInstanceFinishesIt() throws {
        let keys = 1_000, rounds = 300
        let setup = try walSetup(keys: keys, crashTolerant: true)
        let (database, ingestor, configURL) = (setup.database, setup.ingestor, setup.configURL)
        var config = setup.config
        var supervisor = try launchSwitchInstance(config, configURL)
        let activeSlot = "SELECT count(*) FROM pg_replication_slots WHERE active AND slot_name LIKE 'adp_items_%'"
        try waitUntil("the WAL worker streams the slot") { try database.count(activeSlot) == 1 }
        _ = supervisor.process.stop(timeout: 15)
        try waitUntil("the slot is let go") { try database.count(activeSlot) == 0 }

        for _ in 0..<rounds { try database.execute("UPDATE items SET v = v + 1") }
        config.service.watchedTables = [items]
        try ConfigFile.write(config, to: configURL)
        supervisor = try launchSwitchInstance(config, configURL)
        try waitUntil("the trigger-mode worker reads the leftover slot") { try database.count(activeSlot) == 1 }
        let worker = try supervisor.workerPIDs()["items"]
        supervisor.process.send(SIGKILL)
        if let worker { kill(worker, SIGKILL) }
        _ = supervisor.process.waitForExit(timeout: 5)
        XCTAssertEqual(try leftoverSlotAndPublication(database), 2, "killed before it read the slot to its end")

        supervisor = try launchSwitchInstance(config, configURL)
        try waitUntil(timeout: 120, "the slot and the publication are gone") { try self.leftoverSlotAndPublication(database) == 0 }
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 180)
        XCTAssertEqual(Set(try databaseValues(database).values), [rounds])
        _ = try assertNoKeyWentBackwards(ingestor)
        XCTAssertEqual(try userTriggers(database, on: ["items"]), 2, "the capture and TRUNCATE triggers")
    }

    /// A rolling switch over two instances: host-b restarted with `"trigger"` stands by while
    /// host-a, still `"wal"`, leads and streams the slot. The standby never touches the slot
    /// (longer than the 10 s after which a lease holder ends another session streaming it); once
    /// host-a stops, host-b takes the lease, reads the slot to its end and drops it.
    func testWALCapture_rollingSwitchToTriggerMode_theStandbyLeavesTheLeadersSlotAlone_andDropsItOnceItLeads() throws {
        try useLogicalServer()
        let keys = 300, changes = 25_000
        let database = try makeDatabase()
        try database.executeScript(itemsSQL(keys: keys))
        let ingestor = try startIngestor()
        addDiagnostics { Self.trackingTableSummary(database, self.items) }
        let a = try startInstance(database, ingestor, table: walItems, instance: "host-a")
        addDiagnostics { a.process.stderrTail(lines: 40) }
        let streamedByA = "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = 'atomic-data-publisher-wal/items@host-a'"
        try waitUntil(timeout: 30, "host-a leads and streams the slot") {
            try a.health().body["components"]?["tables"]?["items"]?["lease"] == "leader" && database.count(streamedByA) == 1
        }
        let writer = BackgroundWriter(database: database.config, name: "rolling-switch-writer", rounds: changes / 10, perRound: 10, keys: keys, pauseMicroseconds: 10_000)
        let b = try startInstance(database, ingestor, table: items, instance: "host-b")
        addDiagnostics { b.process.stderrTail(lines: 40) }
        try waitUntil(timeout: 30, "host-b stands by, its triggers in place") {
            try b.health().body["components"]?["tables"]?["items"]?["lease"] == "standby" && self.userTriggers(database, on: ["items"]) == 2
        }
        // WalStreamer.takeOverAfterSeconds (10 s, not visible from here), and a few stats rounds:
        // host-a's walsender is the same session throughout (ended, it would be a new one), and
        // host-b never opens one.
        let walsenderOfA = "SELECT pid FROM pg_stat_activity WHERE backend_type = 'walsender' AND application_name = 'atomic-data-publisher-wal/items@host-a'"
        let streamerOfA = try database.value(walsenderOfA)
        let watchUntil = Date().addingTimeInterval(15)
        while Date() < watchUntil {
            XCTAssertEqual(try database.count("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'atomic-data-publisher-wal%@host-b'"), 0,
                           "the standby does not stream the slot")
            XCTAssertEqual(try leftoverSlotAndPublication(database), 2, "the standby drops nothing")
            usleep(100_000)
        }
        XCTAssertEqual(try database.value(walsenderOfA), streamerOfA, "host-a's stream was left alone")
        XCTAssertFalse(writer.isDone, "host-a led through the stream so far")
        _ = a.process.stop(timeout: 15)
        try waitUntil(timeout: 60, "host-b leads, reads the slot to its end and drops it and the publication") {
            try b.health().body["components"]?["tables"]?["items"]?["lease"] == "leader" && self.leftoverSlotAndPublication(database) == 0
        }
        try waitUntil(timeout: 120, "the writer is done") { writer.isDone }
        XCTAssertNil(writer.error)
        try waitUntilEveryFinalStateArrived(database, ingestor, timeout: 120)
        _ = try assertNoKeyWentBackwards(ingestor)
    }
}
