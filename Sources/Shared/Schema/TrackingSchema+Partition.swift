// Partitioned tables (a table too hot for one worker): `partitions = N` splits a table's changes into N shares by a
// stable hash of the primary key, each published by its own worker under its own lease.
//
// Invariants:
// - A key belongs to exactly one partition: `(hashtext(primary_key) & 2147483647) % N`,
//   computed by PostgreSQL at read time from the key text (nothing is stored at capture, so the
//   trigger costs the same for every N). An index on that expression and the tracking id keeps a
//   partition's read an index scan in id order; setup creates it for the configured N.
// - Workers configured with different N never publish one table at once. Every worker, of a
//   partitioned table or not, holds the table's *generation* lock while it leads: a shared
//   advisory lock on (table, N). Before taking its lease it takes its own generation lock, then
//   looks for a granted generation lock of another N; if there is one, it lets its own go and
//   stands by. Two workers with different N that race both see the other (each took its lock
//   before looking), so at worst both stand by and retry; never both lead. Workers that already
//   lead do not look again: the running N keeps the table until its workers stop, so changing N
//   on a running system takes effect when the last worker with the old N has stopped, without a
//   key ever having two publishers. A worker that waited for another generation fences like any
//   takeover (the old workers' last requests may still be in flight).

extension TrackingSchema {
    /// The partition of a key as SQL (`alias` is "" or "c."): the expression of the index.
    public func partitionExpression(_ alias: String, count: Int? = nil) -> String {
        "((hashtext(\(alias)primary_key) & 2147483647) % \(count ?? table.partitions))"
    }

    /// ` AND <expression> = <index>` for one partition's reads (`first`: ` WHERE` instead);
    /// empty for the whole table.
    func partitionFilter(_ alias: String, first: Bool = false) -> String {
        guard !partition.isWhole else { return "" }
        return "\(first ? " WHERE" : " AND") \(partitionExpression(alias, count: partition.count)) = \(partition.index)"
    }

    public func partitionIndexName(count: Int) -> String { "\(table.name)_changes_p\(count)_idx" }

    /// The index a partitioned table's reads use; empty text for an unpartitioned table.
    public var createPartitionIndexSQL: String {
        guard table.partitions > 1 else { return "" }
        return "CREATE INDEX IF NOT EXISTS \(quoteIdentifier(partitionIndexName(count: table.partitions))) ON \(changesTable) (\(partitionExpression("")), id);"
    }

    /// Inside setup's transaction: create the partition index when it is missing (a plain CREATE
    /// INDEX: it holds the application's writes for the build, milliseconds on a drained tracking
    /// table; docs/operations.md, "Changing partitions").
    func installPartitionIndex(on db: PostgresConnection) throws(PostgresError) {
        guard table.partitions > 1 else { return }
        let name = "\(schemaIdent).\(quoteIdentifier(partitionIndexName(count: table.partitions)))"
        if try db.execute("SELECT to_regclass($1) IS NULL", [name])[0, 0] == "t" {
            try db.execute(createPartitionIndexSQL)
        }
    }

    /// Partition indexes of other partition counts that no worker uses any more: dropped without
    /// blocking writers (DROP INDEX CONCURRENTLY, outside a transaction). Returns their names.
    public func dropStalePartitionIndexes(_ db: PostgresConnection) throws(PostgresError) -> [String] {
        let r = try db.execute("""
            SELECT i.indexname, substring(i.indexname FROM '_p([0-9]+)_idx$')::int
            FROM pg_indexes i WHERE i.schemaname = $1 AND i.tablename = $2
              AND left(i.indexname, length($3)) = $3 AND substring(i.indexname FROM length($3) + 1) ~ '^_changes_p[0-9]+_idx$'
            """, [table.schema, changesTableName, table.name])
        var dropped: [String] = []
        for row in r.rows {
            guard let name = row[0], let count = row[1].flatMap({ Int($0) }), count != table.partitions else { continue }
            if try !generationHolders(db, count: count).isEmpty { continue }
            try db.execute("DROP INDEX CONCURRENTLY IF EXISTS \(schemaIdent).\(quoteIdentifier(name))")
            dropped.append(name)
        }
        return dropped
    }

    // MARK: the generation lock

    /// The first key of the generation lock (the second is the partition count).
    public var generationKey: Int32 {
        Int32(truncatingIfNeeded: Int64(bitPattern: Self.fnv1a("atomic-data-publisher:partitions:\(table.qualifiedName)")))
    }

    /// pg_locks shows a two-key advisory lock with classid = key1, objid = key2, objsubid 2.
    private var generationClassid: String { String(UInt32(bitPattern: generationKey)) }

    /// Take this worker's generation lock (shared: every worker with the same N holds it).
    public func takeGeneration(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute("SELECT pg_advisory_lock_shared($1::int, $2::int)", [String(generationKey), String(table.partitions)])
    }

    public func releaseGeneration(_ db: PostgresConnection) throws(PostgresError) {
        try db.execute("SELECT pg_advisory_unlock_shared($1::int, $2::int)", [String(generationKey), String(table.partitions)])
    }

    public struct OtherGeneration: Equatable, Sendable {
        public var partitions: Int
        public var applicationName: String

        public init(partitions: Int, applicationName: String) {
            self.partitions = partitions
            self.applicationName = applicationName
        }
    }

    /// Sessions holding this table's generation lock with another partition count.
    public func otherGenerations(_ db: PostgresConnection) throws(PostgresError) -> [OtherGeneration] {
        let r = try db.execute("""
            SELECT l.objid::bigint, coalesce(a.application_name, '') FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::bigint::oid AND l.objid <> $2::bigint::oid
              AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
            ORDER BY 1, 2
            """, [generationClassid, String(table.partitions)])
        return r.rows.compactMap { row in
            guard let n = row[0].flatMap({ Int($0) }) else { return nil }
            return OtherGeneration(partitions: n, applicationName: row[1] ?? "")
        }
    }

    private func generationHolders(_ db: PostgresConnection, count: Int) throws(PostgresError) -> [String] {
        try db.execute("""
            SELECT l.pid::text FROM pg_locks l
            WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2 AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
            """, [generationClassid, String(count)]).rows.compactMap { $0[0] }
    }

    var generationCommentSQL: String {
        """
        -- Generation: every worker of \(table.qualifiedName) (partitions = \(table.partitions)) holds pg_advisory_lock_shared(\(generationKey), \(table.partitions))
        -- while it publishes; workers configured with another partition count stand by until none is held
        -- (pg_locks: locktype 'advisory', classid \(generationClassid), objid = the partition count, objsubid 2).
        """
    }
}

// MARK: spreading partitions across instances

/// Who runs and who leads a partitioned table's partitions, from pg_locks and the sessions'
/// application names (`atomic-data-publisher/<table>#<i>@<instance>`).
public struct PartitionPicture: Equatable, Sendable {
    /// Partition → the instance whose worker holds its lease.
    public var leaders: [Int: String] = [:]
    /// Every worker of this partition count, leading or standing by: (instance, partition).
    public var workers: [PartitionWorker] = []

    public struct PartitionWorker: Equatable, Hashable, Sendable {
        public var instance: String
        public var partition: Int
        public init(instance: String, partition: Int) {
            self.instance = instance
            self.partition = partition
        }
    }

    public init(leaders: [Int: String] = [:], workers: [PartitionWorker] = []) {
        self.leaders = leaders
        self.workers = workers
    }

    /// The rule that spreads partitions: an instance leading at least two more partitions than
    /// another instance that stands by for `partition` lets its highest-numbered partition go (one
    /// at a time; the standby takes it after a clean handoff). Each move narrows the gap between
    /// the busiest and the idlest instance, so it settles.
    public func shouldYield(instance me: String, partition: Int) -> Bool {
        var leads: [String: Int] = [:]
        for w in workers { leads[w.instance] = 0 }
        for (_, instance) in leaders { leads[instance, default: 0] += 1 }
        let mine = leaders.filter { $0.value == me }.map(\.key)
        guard mine.max() == partition, let myLeads = leads[me] else { return false }
        return workers.contains { $0.partition == partition && $0.instance != me && (leads[$0.instance] ?? 0) + 2 <= myLeads }
    }

    /// (partition, instance) from an application name `atomic-data-publisher/<table>#<i>@<instance>`.
    public static func parse(applicationName: String) -> (partition: Int, instance: String)? {
        guard let hash = applicationName.lastIndex(of: "#") else { return nil }
        let rest = applicationName[applicationName.index(after: hash)...]
        guard let at = rest.firstIndex(of: "@"), let partition = Int(rest[..<at]) else { return nil }
        return (partition, String(rest[rest.index(after: at)...]))
    }
}

extension TrackingSchema {
    /// The picture of this table's partitions, in one round trip.
    public func partitionPicture(_ db: PostgresConnection) throws(PostgresError) -> PartitionPicture {
        let leases = (0..<table.partitions).map { TrackingSchema(table: table, partition: TablePartition(index: $0, count: table.partitions)).leaseLockTag }
        let r = try db.execute("""
            SELECT l.objsubid, coalesce(a.application_name, '') FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
            WHERE l.locktype = 'advisory' AND l.granted AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
              AND ((l.objsubid = 2 AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid)
                OR (l.objsubid = 1 AND (l.classid::bigint, l.objid::bigint) IN (SELECT * FROM unnest($3::bigint[], $4::bigint[]))))
            """, [generationClassid, String(table.partitions),
                  "{" + leases.map { String($0.classid) }.joined(separator: ",") + "}",
                  "{" + leases.map { String($0.objid) }.joined(separator: ",") + "}"])
        var picture = PartitionPicture()
        for row in r.rows {
            guard let parsed = PartitionPicture.parse(applicationName: row[1] ?? "") else { continue }
            if row[0] == "1" {
                picture.leaders[parsed.partition] = parsed.instance
            } else {
                picture.workers.append(.init(instance: parsed.instance, partition: parsed.partition))
            }
        }
        return picture
    }
}
