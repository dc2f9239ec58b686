// Retained WAL bounded by bytes (docs/database.md, "When the slot moves on"): a logical slot's
// restart position (the WAL PostgreSQL keeps for it) moves only when its decoder reads a standby
// snapshot (an xl_running_xacts record) and the position after it is confirmed. The background
// writer logs one every 15 s while WAL is written (and each checkpoint does), so a database
// writing 50 MB/s elsewhere keeps 750 MB and more for an idle watched table. The stream's holder
// therefore has one logged sooner whenever its slot holds more than `thresholdBytes`.
//
// Invariants:
// - At most one nudge per `minimumInterval`, and only above `thresholdBytes`: a quiet database
//   pays one small query per `minimumInterval` and nothing else.
// - Never waits on anyone: PostgreSQL 16 and later log the snapshot with pg_log_standby_snapshot()
//   when the role may execute it; otherwise (PostgreSQL 15, or no grant) a temporary logical slot
//   is created and dropped in one statement. Creating it logs the snapshot first (slot.c,
//   ReplicationSlotReserveWal: LogStandbySnapshot for a logical slot) and then waits for the
//   transactions running elsewhere to end before it is consistent; `lock_timeout` ends that wait
//   after 10 ms (the snapshot is already in the WAL, which is all that is wanted) and PostgreSQL
//   drops a temporary slot when its statement fails. Within REPLICATION, the privilege WAL
//   capture already needs.
// - Needs a free replication slot for an instant: skipped when none is free (the slots are the
//   operator's; a nudge never takes the last one for long, and never fails when they are gone).
// - A failed nudge is logged and forgotten; it never ends the stream (the stream's own
//   statements find a lost connection).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
import Logging
import Shared

struct WalSlotNudge {
    /// Above this much retained WAL, a standby snapshot is logged (the requirement is 256 MB at
    /// 50 MB/s of other writes: the restart position then trails by one or two nudges' worth).
    static let thresholdBytes = 64 << 20
    static let minimumInterval = 1.0
    /// For bench/wal-retained only: `ADP_WAL_SLOT_NUDGE=off` measures PostgreSQL's own pace.
    static let disabledByEnvironment = ProcessInfo.processInfo.environment["ADP_WAL_SLOT_NUDGE"] == "off"

    enum Method: Equatable {
        case logStandbySnapshot, temporarySlot
    }

    let slotName: String
    let logger: Logger
    var enabled = !WalSlotNudge.disabledByEnvironment
    private var lastCheckAt = -Double.infinity
    /// Probed once per connection (the server and the role's grants do not change under it).
    private var method: Method?
    /// Nudges made on this connection (logged with each, for the operator reading the journal).
    private(set) var nudges = 0
    /// The last failure logged: the same one again (every second) is not.
    private var lastFailure: String?

    init(slotName: String, logger: Logger) {
        self.slotName = slotName
        self.logger = logger
    }

    /// The slot's retained WAL, and whether another replication slot may be created now.
    static let retainedSQL = """
        SELECT (pg_current_wal_lsn() - restart_lsn)::bigint,
               (SELECT count(*) FROM pg_replication_slots) < current_setting('max_replication_slots')::int
        FROM pg_replication_slots WHERE slot_name = $1
        """
    static let methodSQL = "SELECT coalesce(has_function_privilege(to_regprocedure('pg_catalog.pg_log_standby_snapshot()'), 'EXECUTE'), false)"
    static let logStandbySnapshotSQL = "SELECT pg_log_standby_snapshot()"
    /// One implicit transaction (a simple query): the timeouts are its own, and the slot is gone
    /// when it ends, whether the creation finished or was cancelled.
    static let temporarySlotSQL = """
        SET LOCAL lock_timeout = '10ms'; SET LOCAL statement_timeout = '2s';
        SELECT pg_drop_replication_slot(slot_name) FROM pg_create_logical_replication_slot('adp_nudge_' || pg_backend_pid(), 'pgoutput', true)
        """

    /// Called from the stream's loop: checks the slot at most every `minimumInterval`, and logs a
    /// standby snapshot when it holds more than `thresholdBytes`. Returns true when it did.
    @discardableResult
    mutating func tick(_ db: PostgresConnection, now: Double) -> Bool {
        guard enabled, now - lastCheckAt >= Self.minimumInterval else { return false }
        lastCheckAt = now
        do throws(PostgresError) {
            let slot = try db.execute(Self.retainedSQL, [slotName])
            guard let retained = slot.rows.first?[0].flatMap({ Int($0) }), retained > Self.thresholdBytes else { return false }
            if method == nil {
                method = try db.execute(Self.methodSQL)[0, 0] == "t" ? .logStandbySnapshot : .temporarySlot
            }
            if method == .logStandbySnapshot {
                _ = try db.execute(Self.logStandbySnapshotSQL)
            } else {
                guard slot[0, 1] == "t" else {
                    logger.debug("no replication slot is free to have a standby snapshot logged", metadata: ["retained_bytes": "\(retained)"])
                    return false
                }
                do throws(PostgresError) {
                    try db.executeScript(Self.temporarySlotSQL)
                } catch let error where error.sqlState == "55P03" || error.sqlState == "57014" {
                    // Cancelled while waiting for transactions elsewhere: the snapshot was logged first.
                }
            }
            nudges += 1
            lastFailure = nil
            logger.debug("had a standby snapshot logged so the slot's restart position can move on", metadata: [
                "retained_bytes": "\(retained)", "method": "\(method == .logStandbySnapshot ? "pg_log_standby_snapshot" : "temporary slot")", "nudges": "\(nudges)",
            ])
            return true
        } catch {
            // 53400 (the last slot taken meanwhile), 42501 (a grant revoked), a lost connection:
            // the stream goes on; its own statements notice a lost connection.
            if lastFailure != error.description {
                lastFailure = error.description
                logger.info("could not have a standby snapshot logged for the slot; its restart position moves at PostgreSQL's pace", metadata: ["error": "\(error)"])
            }
            return false
        }
    }
}
