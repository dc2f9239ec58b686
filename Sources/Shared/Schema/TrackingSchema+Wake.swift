// Wake-up from idle (docs/delivery.md, "Polling and wake-up"): the capture trigger notifies only while the
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
// - Partitions: the worker of partition i of N sleeps on the two-key lock
//   (wakeKey32, i); the trigger computes the changed key's partition and tries that one lock (a
//   primary key change: both keys' partitions). All of a table's workers listen on the one
//   channel, so a notification wakes every sleeping one; the others find nothing and sleep again.
//   While N changes (both counts' workers run, the trigger has the new N), a sleeping worker of
//   the old count may not be notified: it still reads its backlog every 5 s and then probes.

extension TrackingSchema {
    /// The advisory lock key of the "sleeping" flag of an unpartitioned table.
    public func wakeKey() -> Int64 {
        Int64(bitPattern: Self.fnv1a("atomic-data-publisher:wake:\(table.qualifiedName)"))
    }

    /// The first key of a partition's flag (the second is the partition's index).
    public var partitionWakeKey: Int32 {
        Int32(truncatingIfNeeded: Int64(bitPattern: Self.fnv1a("atomic-data-publisher:wake-partition:\(table.qualifiedName)")))
    }

    /// The notification channel of this table: fixed length (PostgreSQL truncates identifiers at
    /// 63 bytes, and pg_notify would refuse a longer name), derived from the key, quoted where used.
    public var wakeChannel: String {
        let hex = String(UInt64(bitPattern: wakeKey()), radix: 16)
        return "adp_wake_" + String(repeating: "0", count: 16 - hex.count) + hex
    }

    /// The trigger's fragment, after a change of `keys` (SQL text expressions) is recorded:
    /// notify only while a worker sleeps. (A failed try takes nothing; a successful one is a local
    /// lock-table hit after the first row of a transaction; repeated notifications in one
    /// transaction are folded by PostgreSQL.)
    /// `anyPartition`: the keys are not at hand (a dependency's statement enqueued a set of them):
    /// try every partition's flag, so any sleeping worker of the table is notified.
    public func wakeTriggerSQL(keys: [String] = [], anyPartition: Bool = false) -> String {
        let tries: [String]
        if table.partitions > 1 && anyPartition {
            tries = (0..<table.partitions).map { "pg_try_advisory_xact_lock_shared(\(partitionWakeKey), \($0))" }
        } else if table.partitions > 1 {
            tries = keys.map { "pg_try_advisory_xact_lock_shared(\(partitionWakeKey), (hashtext(\($0)) & 2147483647) % \(table.partitions))" }
        } else {
            tries = ["pg_try_advisory_xact_lock_shared(\(quoteLiteral(String(wakeKey())))::bigint)"]
        }
        // PREPARE TRANSACTION refuses a transaction that notified: on a server where two-phase
        // commit is possible the trigger never notifies (checked only when a worker sleeps), and
        // the workers poll instead (DatabaseSession.twoPhaseCommit).
        return "IF NOT (\(tries.joined(separator: " AND "))) AND current_setting('max_prepared_transactions') = '0' THEN PERFORM pg_notify(\(quoteLiteral(wakeChannel)), ''); END IF;"
    }

    public var listenSQL: String { "LISTEN \(quoteIdentifier(wakeChannel))" }

    /// Take this worker's flag (its partition's) without waiting: false while a writer is between
    /// a change and its commit.
    public func trySleep(_ db: PostgresConnection) throws(PostgresError) -> Bool {
        try db.execute(partition.isWhole ? "SELECT pg_try_advisory_lock($1::bigint)" : "SELECT pg_try_advisory_lock($1::int, $2::int)",
                       flagParameters)[0, 0] == "t"
    }

    /// Give the flag back: writers stop notifying.
    public func wake(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute(partition.isWhole ? "SELECT pg_advisory_unlock($1::bigint)" : "SELECT pg_advisory_unlock($1::int, $2::int)", flagParameters)
    }

    private var flagParameters: [String?] {
        partition.isWhole ? [String(wakeKey())] : [String(partitionWakeKey), String(partition.index)]
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
