import Foundation
import Shared
import XCTest

/// A slot invalidated by `max_slot_wal_keep_size` has lost changes for good: the worker stops
/// the table with a sentence that says to run `setup`, then `backfill`. `setup` must then make a
/// slot that works (not leave the invalidated one, which would fail the table again) and say
/// what was lost.
extension DeliveryReliabilityTests {
    func testWALCapture_aSlotInvalidatedByMaxSlotWalKeepSize_failsTheTable_andSetupRecreatesIt_sayingToBackfill() throws {
        let (database, ingestor, config, configURL) = try walSetup(keys: 10, extraSQL: "CREATE TABLE filler (id bigserial PRIMARY KEY, pad text NOT NULL);")
        XCTAssertEqual(try runPublisher(["--config", configURL.path, "setup"]).status, 0)
        let slot = TrackingSchema(table: walItems).slotName(database: database.name)
        let status = "SELECT coalesce((SELECT wal_status FROM pg_replication_slots WHERE slot_name = $1), 'none')"

        // No instance reads the slot while 64 MB are written elsewhere, past a 16 MB cap.
        let admin = try PostgresConnection.connect(ConnectionParameters(database.config, applicationName: "lost-slot-admin"))
        defer {
            _ = try? admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
            _ = try? admin.execute("SELECT pg_reload_conf()")
            admin.close()
        }
        try admin.execute("ALTER SYSTEM SET max_slot_wal_keep_size = '16MB'")
        try admin.execute("SELECT pg_reload_conf()")
        try waitUntil(timeout: 60, "the slot is invalidated") {
            try admin.execute("INSERT INTO filler (pad) SELECT repeat('x', 1000) FROM generate_series(1, 16000)")
            try admin.execute("SELECT pg_switch_wal()")
            try admin.execute("CHECKPOINT")
            return try admin.execute(status, [slot])[0, 0] == "lost"
        }
        try admin.execute("ALTER SYSTEM RESET max_slot_wal_keep_size")
        try admin.execute("SELECT pg_reload_conf()")

        // The worker refuses to go on with a gap.
        let supervisor = try SupervisorProcess(configURL: configURL, healthPort: config.service.healthCheckPort, directory: workDirectory, name: "supervisor-lost")
        supervisors.append(supervisor)
        addDiagnostics { supervisor.process.stderrTail(lines: 40) }
        var sentence = ""
        try waitUntil(timeout: 30, "the table is failed with the lost-slot sentence") {
            let entry = try supervisor.health().body["components"]?["tables"]?["items"]
            sentence = entry?["error"]?.string ?? entry?["last_error"]?.string ?? ""
            return entry?["state"] == "failed" && sentence.contains("run `atomic-data-publisher setup` to recreate it")
        }
        XCTAssertTrue(sentence.contains("backfill --table items"), sentence)
        XCTAssertEqual(supervisor.process.stop(timeout: 15), .exited(0))

        // setup: a new slot, and the sentence about what was lost.
        let setup = try runPublisher(["--config", configURL.path, "setup"])
        XCTAssertEqual(setup.status, 0, setup.output)
        XCTAssertTrue(setup.output.contains("warning: public.items: dropped the invalidated replication slot \(slot) and created it anew"), setup.output)
        XCTAssertTrue(setup.output.contains("run `atomic-data-publisher backfill --table items`"), setup.output)
        XCTAssertEqual(try admin.execute(status, [slot])[0, 0], "reserved")

        // Capture works again.
        let again = try launchSwitchInstance(config, configURL)
        try database.execute("UPDATE items SET v = 42 WHERE id = 3")
        try waitUntil(timeout: 30, "the change after the new slot arrives") {
            try ingestor.requests().contains { $0.body["primary_key"]?.string == "3" && $0.body["atomic_data"]?[0]?["v"]?.int == 42 }
        }
        XCTAssertEqual(again.process.stop(timeout: 15), .exited(0))
    }
}
