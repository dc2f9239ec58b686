// Wake-up from idle (README "Polling and wake-up"): the capture trigger notifies only while the
// table's worker sleeps, so writers pay for a notification on the idle-to-busy edge, not per row.
//
// Invariants:
// - The "sleeping" flag is a session-level advisory lock on `wakeKey` (its own key space, distinct
//   from the lease and from setup's lock), held exclusively by a worker only while it sleeps.
// - The trigger tries the same key in shared mode for the rest of the writer's transaction
//   (`pg_try_advisory_xact_lock_shared`): it fails only while a worker sleeps, and then the trigger
//   notifies `wakeChannel` (delivered at commit). When it succeeds, the writer holds the shared
//   lock until after its commit is visible, so a worker that takes the flag afterwards (exclusive)
//   sees the change in its next snapshot. Hence the worker's order: LISTEN (once per session),
//   take the flag (never waiting: a writer between its change and its commit makes it fail, and the
//   worker polls instead), then check for due rows in a new statement, then sleep. No change is
//   missed: it is either committed before the check (seen) or notified (woken).
// - Concurrent writers take the shared lock together: they never wait on each other or on it.
// - Several partitions of one table (several workers): each sleeping worker needs its own key
//   (`wakeKey(partition:)`) and the trigger tries every key (a failure notifies); all of a table's
//   workers listen on the one channel, so a notification wakes every sleeping one.

extension TrackingSchema {
    /// The advisory lock key of the "sleeping" flag of partition `partition` (0: the whole table).
    public func wakeKey(partition: Int = 0) -> Int64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        let name = partition == 0 ? "atomic-data-publisher:wake:\(table.qualifiedName)" : "atomic-data-publisher:wake:\(partition):\(table.qualifiedName)"
        for byte in name.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return Int64(bitPattern: hash)
    }

    /// The notification channel of this table: fixed length (PostgreSQL truncates identifiers at
    /// 63 bytes, and pg_notify would refuse a longer name), derived from the key, quoted where used.
    public var wakeChannel: String {
        let hex = String(UInt64(bitPattern: wakeKey()), radix: 16)
        return "adp_wake_" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The trigger's fragment, after a change is recorded: notify only while a worker sleeps.
    /// (A failed try takes nothing; a successful one is a local lock-table hit after the first
    /// row of a transaction; repeated notifications in one transaction are folded by PostgreSQL.)
    public func wakeTriggerSQL(partitions: Int = 1) -> String {
        let tries = (0..<max(1, partitions)).map { "pg_try_advisory_xact_lock_shared(\(quoteLiteral(String(wakeKey(partition: $0))))::bigint)" }
        return "IF NOT (\(tries.joined(separator: " AND "))) THEN PERFORM pg_notify(\(quoteLiteral(wakeChannel)), ''); END IF;"
    }

    public var listenSQL: String { "LISTEN \(quoteIdentifier(wakeChannel))" }

    /// Take the flag without waiting: false while a writer is between a change and its commit.
    public func trySleep(_ db: PostgresConnection, partition: Int = 0) throws(PostgresError) -> Bool {
        try db.execute("SELECT pg_try_advisory_lock($1::bigint)", [String(wakeKey(partition: partition))])[0, 0] == "t"
    }

    /// Give the flag back: writers stop notifying.
    public func wake(_ db: PostgresConnection, partition: Int = 0) throws(PostgresError) {
        try db.execute("SELECT pg_advisory_unlock($1::bigint)", [String(wakeKey(partition: partition))])
    }

    /// For print-sql: how the wake-up works and how to see a sleeping worker.
    public var wakeCommentSQL: String {
        let bits = UInt64(bitPattern: wakeKey())
        return """
        -- Wake-up: while its worker sleeps, a session holds pg_advisory_lock(\(wakeKey())) (pg_locks: advisory,
        -- classid \(UInt32(truncatingIfNeeded: bits >> 32)), objid \(UInt32(truncatingIfNeeded: bits))) and listens on \(quoteIdentifier(wakeChannel)); the trigger
        -- then notifies that channel (at most once per writing transaction); otherwise it notifies nothing.
        """
    }
}
