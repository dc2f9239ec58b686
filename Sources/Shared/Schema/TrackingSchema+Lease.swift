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
//   (docs/delivery.md, "Fencing across hosts").
// - Every grant gets an epoch (`T_changes_lease`, one row per lease): a bigint that only grows,
//   written by the holder right after it takes the advisory lock. It starts from the wall clock in
//   milliseconds and is at least the previous epoch + 1, so it keeps growing across restarts of
//   every instance and even across a teardown and setup. Requests carry it (X-Publisher-Epoch), so
//   an ingestor can refuse a request of an older grant that arrives late.
// - The holder renews the row (`heartbeat_at`) at least every `leaseRenewSeconds`, and the renewal
//   is also the confirmation that the grant held by this database session is still the current one. A standby that
//   sees neither a renewal nor any statement of the holder's session for `lease_expiry_seconds`
//   (a paused host: its kernel still answers keepalives, so its session and lock live on)
//   terminates the holder's backend and takes the lease after the fence.

extension TrackingSchema {
    /// The session-level advisory lock key of this table's lease; a partition's lease adds
    /// `#<index>/<count>` to the text (each partition has a lease of its own).
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

    /// The lease's name in the lease table and in the X-Publisher-Lease header: the qualified
    /// table, `#<index>/<count>` added for a partition. An ingestor keeps the highest epoch per name.
    public var leaseName: String {
        partition.isWhole ? table.qualifiedName : "\(table.qualifiedName)#\(partition.index)/\(partition.count)"
    }

    public var leaseTableName: String { "\(table.name)_changes_lease" }
    public var leaseTable: String { "\(schemaIdent).\(quoteIdentifier(leaseTableName))" }

    public var createLeaseTableSQL: String {
        """
        CREATE TABLE IF NOT EXISTS \(leaseTable) (
            lease text PRIMARY KEY,
            epoch bigint NOT NULL,
            holder text,
            granted_at timestamptz NOT NULL DEFAULT clock_timestamp(),
            heartbeat_at timestamptz NOT NULL DEFAULT clock_timestamp()
        );
        """
    }

    /// A new epoch for the grant just taken on this connection (call right after `tryLease` succeeded). Returns the
    /// new epoch and the one before it (nil: the first grant ever).
    public func grantEpoch(_ db: PostgresConnection, holder: String) throws(PostgresError) -> (epoch: Int64, previous: Int64?) {
        let r = try db.execute("""
            WITH before AS (SELECT epoch FROM \(leaseTable) WHERE lease = $1)
            INSERT INTO \(leaseTable) AS l (lease, epoch, holder) VALUES ($1, (extract(epoch FROM clock_timestamp()) * 1000)::bigint, $2)
            ON CONFLICT (lease) DO UPDATE SET epoch = greatest(l.epoch + 1, EXCLUDED.epoch), holder = EXCLUDED.holder,
                                              granted_at = clock_timestamp(), heartbeat_at = clock_timestamp()
            RETURNING epoch, (SELECT epoch FROM before)
            """, [leaseName, holder])
        guard let text = r[0, 0], let epoch = Int64(text) else {
            throw PostgresError(kind: .query, sqlState: nil, message: "no epoch returned for lease \(leaseName)")
        }
        return (epoch, r[0, 1].flatMap { Int64($0) })
    }

    /// Renew the grant held on this connection: true while `epoch` is still the lease's current epoch (a query
    /// that succeeds on the session also proves the advisory lock is still held). False: another
    /// grant happened since, this one is stale.
    public func renewLease(_ db: PostgresConnection, epoch: Int64) throws(PostgresError) -> Bool {
        try !db.execute("UPDATE \(leaseTable) SET heartbeat_at = clock_timestamp() WHERE lease = $1 AND epoch = $2 RETURNING 1",
                        [leaseName, String(epoch)]).rows.isEmpty
    }

    /// The backend of a lease holder that shows no sign of life for `expirySeconds`: neither a
    /// renewal of the lease row nor any statement on its session (pg_stat_activity.state_change,
    /// visible for sessions of the same role, which also covers holders of a release that does
    /// not renew), and no statement running now.
    public func expiredHolder(_ db: PostgresConnection, expirySeconds: Double) throws(PostgresError) -> (pid: Int32, silentSeconds: Double, name: String)? {
        let tag = leaseLockTag
        let r = try db.execute("""
            SELECT k.pid, extract(epoch FROM clock_timestamp() - greatest(l.heartbeat_at, a.state_change))::float8, coalesce(a.application_name, '')
            FROM pg_locks k JOIN pg_stat_activity a ON a.pid = k.pid LEFT JOIN \(leaseTable) l ON l.lease = $3
            WHERE k.locktype = 'advisory' AND k.granted AND k.classid = $1::bigint::oid AND k.objid = $2::bigint::oid AND k.objsubid = 1
              AND k.pid <> pg_backend_pid() AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND a.state IS DISTINCT FROM 'active'
              AND clock_timestamp() - greatest(l.heartbeat_at, a.state_change) > make_interval(secs => $4::float8)
            LIMIT 1
            """, [String(tag.classid), String(tag.objid), leaseName, String(expirySeconds)])
        guard let row = r.rows.first, let pid = row[0].flatMap({ Int32($0) }) else { return nil }
        return (pid, row[1].flatMap { Double($0) } ?? expirySeconds, row[2] ?? "")
    }

    /// End a silent holder's session (its advisory locks go with it). Needs the same role or
    /// membership in `pg_signal_backend`.
    public func terminateHolder(_ db: PostgresConnection, pid: Int32) throws(PostgresError) -> Bool {
        try db.execute("SELECT pg_terminate_backend($1::int)", [String(pid)])[0, 0] == "t"
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
