// Rows of the tracking table as the worker reads them, and their grouping by key.

/// One tracking row: one recorded change of one key.
public struct ChangeRow: Equatable, Sendable {
    public var id: Int64
    public var primaryKey: String
    public var operation: ChangeOperation
    public var changeColumnValue: String?
    public var changedAt: String
    /// Every try made so far (transient and permanent): the payload's `metadata.retry_count`.
    public var attempts: Int
    /// Permanent failures so far (4xx, a query error for this key): the dead-letter rule counts
    /// these only, so an ingestor outage never dead-letters a key at its first 4xx.
    public var permanentFailures: Int
    /// Set on a row a dependency's trigger wrote: "<schema>.<table> <insert|update|delete>"
    /// (TrackingSchema+Dependencies.swift); nil for the watched table's own changes.
    public var cause: String?

    public init(id: Int64, primaryKey: String, operation: ChangeOperation, changeColumnValue: String? = nil,
                changedAt: String = "", attempts: Int = 0, permanentFailures: Int = 0, cause: String? = nil) {
        self.id = id
        self.primaryKey = primaryKey
        self.operation = operation
        self.changeColumnValue = changeColumnValue
        self.changedAt = changedAt
        self.attempts = attempts
        self.permanentFailures = permanentFailures
        self.cause = cause
    }
}

/// Every tracking row of one key in a batch: one publish covers them all. Kept compact (keeping every
/// row, a batch of 5,000 keys with 20,000 covered rows held every row of every key, 3.4 MB at peak):
/// the ids of the rows, the newest row, and the counters' maxima are all a publish needs.
public struct KeyChanges: Equatable, Sendable {
    public var primaryKey: String
    /// The tracking ids of the key's rows, ascending.
    public private(set) var ids: [Int64]
    /// The newest row (the highest id); for an empty group (tests only), a placeholder update.
    /// When the newest row came from a dependency and the group also holds rows of the watched
    /// table itself, its operation and change column value are those of the newest of these: a
    /// watched row deleted and then referenced by a new dependency row is still a delete.
    public private(set) var latest: ChangeRow
    /// The distinct causes of the group's dependency rows, in the order first seen (empty when
    /// every row is the watched table's own).
    public private(set) var dependencyCauses: [String] = []
    /// The operations of the group's own rows (bits of `ChangeOperation.allCases` positions).
    private var ownOperationBits: UInt8 = 0
    private var ownLatestID: Int64 = 0
    private var ownLatestOperation = ChangeOperation.update
    private var ownLatestValue: String?
    /// The most tries recorded on any of the rows.
    public private(set) var attempts: Int
    /// The most permanent failures recorded on any of the rows.
    public private(set) var permanentFailures: Int

    /// `rows` in id order.
    public init(primaryKey: String, rows: [ChangeRow]) {
        guard let first = rows.first else {
            self.init(primaryKey: primaryKey, ids: [], latest: ChangeRow(id: 0, primaryKey: primaryKey, operation: .update))
            return
        }
        self.init(primaryKey: primaryKey, ids: [first.id], latest: first)
        for row in rows.dropFirst() { add(row) }
    }

    /// The operations of the group's own rows, in `ChangeOperation.allCases` order.
    public var ownOperations: [ChangeOperation] {
        ChangeOperation.allCases.enumerated().filter { ownOperationBits & (1 << $0.offset) != 0 }.map(\.element)
    }

    /// Group rows by key, keeping the order in which keys first appear (oldest first) and each
    /// key's ids in ascending order.
    public static func coalesce(_ rows: [ChangeRow]) -> [KeyChanges] {
        var grouping = Grouping(expectedKeys: min(rows.count, 1024))
        for row in rows { grouping.add(row) }
        return grouping.finish()
    }

    /// Groups rows by key as they are read, one at a time (the batch's reads hand libpq's rows over
    /// as they come: otherwise a batch of 5,000 keys with 20,000 covered rows holds every row as a
    /// `ChangeRow` before grouping, 3.5 MB at peak). Only each key's ids, newest row and counters'
    /// maxima are kept; keys stay in the order they first appear.
    public struct Grouping {
        private var position: [String: Int32] = [:]
        public private(set) var groups: [KeyChanges] = []
        /// Rows added so far.
        public private(set) var rowCount = 0
        private var unordered: [Int] = []

        public init(expectedKeys: Int) {
            position.reserveCapacity(expectedKeys)
            groups.reserveCapacity(expectedKeys)
        }

        public mutating func add(_ row: ChangeRow) {
            rowCount += 1
            if let index = position[row.primaryKey] {
                let i = Int(index)
                if let last = groups[i].ids.last, last > row.id { unordered.append(i) }
                groups[i].add(row)
            } else {
                position[row.primaryKey] = Int32(groups.count)
                groups.append(KeyChanges(primaryKey: row.primaryKey, ids: [row.id], latest: row))
            }
        }

        /// The groups, each key's ids ascending. A group's ids are sorted only when its rows did
        /// not arrive in id order (the due rows and the covered rows are each read in id order,
        /// so most groups are).
        public mutating func finish() -> [KeyChanges] {
            for index in Set(unordered) where !KeyChanges.isSorted(groups[index].ids) {
                groups[index].ids.sort()
            }
            position = [:]
            unordered = []
            return groups
        }
    }

    private init(primaryKey: String, ids: [Int64], latest: ChangeRow) {
        self.primaryKey = primaryKey
        self.ids = ids
        self.latest = latest
        attempts = latest.attempts
        permanentFailures = latest.permanentFailures
        noteCause(latest)
    }

    private mutating func add(_ row: ChangeRow) {
        ids.append(row.id)
        if row.id > latest.id { latest = row }
        attempts = max(attempts, row.attempts)
        permanentFailures = max(permanentFailures, row.permanentFailures)
        noteCause(row)
        if latest.cause != nil && ownLatestID != 0 {
            latest.operation = ownLatestOperation
            latest.changeColumnValue = ownLatestValue
        }
    }

    private mutating func noteCause(_ row: ChangeRow) {
        if let cause = row.cause {
            if !dependencyCauses.contains(cause) { dependencyCauses.append(cause) }
        } else {
            if let position = ChangeOperation.allCases.firstIndex(of: row.operation) { ownOperationBits |= 1 << position }
            if row.id > ownLatestID {
                ownLatestID = row.id
                ownLatestOperation = row.operation
                ownLatestValue = row.changeColumnValue
            }
        }
    }

    private static func isSorted(_ ids: [Int64]) -> Bool {
        var i = 1
        while i < ids.count {
            if ids[i - 1] > ids[i] { return false }
            i += 1
        }
        return true
    }
}
