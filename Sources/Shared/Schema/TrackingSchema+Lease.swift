// The table lease (several instances on one database): a worker publishes a table only while its
// own database session holds a session-level advisory lock for that table.
//
// Invariants:
// - The lease key lives in its own key space ("atomic-data-publisher:lease:<schema>.<table>"),
//   distinct from setup's transaction lock, so a standby never blocks another instance's setup.
// - PostgreSQL releases a session lock only when the session ends (or on pg_advisory_unlock):
//   while a query on that session succeeds, the lease is ours. A worker confirms it before each
//   batch (the batch read is on the session) and at least every `leaseConfirmSeconds` while
//   requests go out; a confirmation that fails stops new requests at once.
// - A new holder waits `lease_fence_seconds` (by default the ingestor timeout plus 2 s) before
//   its first request, so any request the previous holder still had in flight has finished
//   (README, "Running several hosts").

extension TrackingSchema {
    /// The session-level advisory lock key of this table's lease; a partition's lease adds
    /// `#<index>/<count>` to the text (issue 9).
    public var leaseKey: Int64 {
        let suffix = partition.isWhole ? "" : "#\(partition.index)/\(partition.count)"
        return Int64(bitPattern: Self.fnv1a("atomic-data-publisher:lease:\(table.qualifiedName)\(suffix)"))
    }

    /// 64-bit FNV-1a of `text`: how every advisory lock key of the service is derived.
    static func fnv1a(_ text: String) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in text.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x100_0000_01b3
        }
        return hash
    }

    /// How `pg_locks` shows the key: classid (high 32 bits) and objid (low 32 bits), objsubid 1.
    public var leaseLockTag: (classid: UInt32, objid: UInt32) {
        let bits = UInt64(bitPattern: leaseKey)
        return (UInt32(truncatingIfNeeded: bits >> 32), UInt32(truncatingIfNeeded: bits))
    }

    /// True when this session now holds the lease (or already did).
    public func tryLease(_ db: PostgresConnection) throws(PostgresError) -> Bool {
        try db.execute("SELECT pg_try_advisory_lock($1::bigint)", [String(leaseKey)])[0, 0] == "t"
    }

    /// The application_name of the session holding the lease, if any (it names the instance).
    public func leaseHolder(_ db: PostgresConnection) throws(PostgresError) -> String? {
        let tag = leaseLockTag
        let r = try db.execute("""
            SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid AND l.objsubid = 1
            LIMIT 1
            """, [String(tag.classid), String(tag.objid)])
        return r.rows.first?[0] ?? nil
    }

    /// The handoff marker (a session lock in its own key space): held by a worker that let its
    /// lease go with nothing in flight, until its successor holds the lease.
    public var handoffKey: Int64 {
        let suffix = partition.isWhole ? "" : "#\(partition.index)/\(partition.count)"
        return Int64(bitPattern: Self.fnv1a("atomic-data-publisher:handoff:\(table.qualifiedName)\(suffix)"))
    }

    /// Let the lease go (this session holds it once).
    public func releaseLease(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute("SELECT pg_advisory_unlock($1::bigint)", [String(leaseKey)])
    }

    public func holdHandoff(_ db: PostgresConnection) throws(PostgresError) -> Bool {
        try db.execute("SELECT pg_try_advisory_lock($1::bigint)", [String(handoffKey)])[0, 0] == "t"
    }

    public func releaseHandoff(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute("SELECT pg_advisory_unlock($1::bigint)", [String(handoffKey)])
    }

    /// Whether another session holds the session lock `key` (pg_locks, objsubid 1).
    public func heldByAnotherSession(_ db: PostgresConnection, key: Int64) throws(PostgresError) -> Bool {
        let bits = UInt64(bitPattern: key)
        return try db.execute("""
            SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND granted AND objsubid = 1
                           AND classid = $1::bigint::oid AND objid = $2::bigint::oid AND pid <> pg_backend_pid()
                           AND database = (SELECT oid FROM pg_database WHERE datname = current_database()))
            """, [String(UInt32(truncatingIfNeeded: bits >> 32)), String(UInt32(truncatingIfNeeded: bits))])[0, 0] == "t"
    }

    /// One round trip on the session: succeeds only while the session (and so the lease) lives.
    public func confirmLease(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute("SELECT 1")
    }

    /// For print-sql: how to see who leads this table.
    public var leaseCommentSQL: String {
        if table.partitions > 1 && partition.isWhole {
            return (0..<table.partitions).map {
                TrackingSchema(table: table, partition: TablePartition(index: $0, count: table.partitions)).leaseCommentSQL
            }.joined(separator: "\n") + "\n" + generationCommentSQL
        }
        let tag = leaseLockTag
        let what = partition.isWhole ? table.qualifiedName : "partition \(partition.index) of \(partition.count) of \(table.qualifiedName) (keys with \(partitionExpression("")) = \(partition.index))"
        return """
        -- Lease: a worker publishes \(what) only while its session holds
        -- pg_advisory_lock(\(leaseKey)) (pg_locks: locktype 'advisory', classid \(tag.classid), objid \(tag.objid), objsubid 1).
        -- Who leads: SELECT a.application_name FROM pg_locks l JOIN pg_stat_activity a USING (pid)
        --            WHERE l.locktype = 'advisory' AND l.granted AND l.classid = \(tag.classid) AND l.objid = \(tag.objid);
        """ + (table.partitions > 1 ? "" : "\n" + generationCommentSQL)
    }
}
