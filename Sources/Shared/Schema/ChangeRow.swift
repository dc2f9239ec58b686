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

    public init(id: Int64, primaryKey: String, operation: ChangeOperation, changeColumnValue: String? = nil,
                changedAt: String = "", attempts: Int = 0, permanentFailures: Int = 0) {
        self.id = id
        self.primaryKey = primaryKey
        self.operation = operation
        self.changeColumnValue = changeColumnValue
        self.changedAt = changedAt
        self.attempts = attempts
        self.permanentFailures = permanentFailures
    }
}

/// Every tracking row of one key in a batch: one publish covers them all.
public struct KeyChanges: Equatable, Sendable {
    public var primaryKey: String
    public var rows: [ChangeRow]

    public init(primaryKey: String, rows: [ChangeRow]) {
        self.primaryKey = primaryKey
        self.rows = rows
    }

    public var ids: [Int64] { rows.map(\.id) }
    /// The newest row (rows are kept in id order by `coalesce`).
    public var latest: ChangeRow { rows[rows.count - 1] }
    public var attempts: Int { rows.reduce(0) { max($0, $1.attempts) } }
    public var permanentFailures: Int { rows.reduce(0) { max($0, $1.permanentFailures) } }

    /// Group rows by key, keeping the order in which keys first appear (oldest first) and each
    /// key's rows in id order.
    public static func coalesce(_ rows: [ChangeRow]) -> [KeyChanges] {
        // One dictionary lookup per row (key to its group's position); a group is sorted only
        // when its rows did not arrive in id order (the due rows and the covered rows are each
        // read in id order, so most groups are).
        var groups: [KeyChanges] = []
        var position: [String: Int] = [:]
        position.reserveCapacity(rows.count)
        var unordered: [Int] = []
        for row in rows {
            if let index = position[row.primaryKey] {
                if let last = groups[index].rows.last, last.id > row.id { unordered.append(index) }
                groups[index].rows.append(row)
            } else {
                position[row.primaryKey] = groups.count
                groups.append(KeyChanges(primaryKey: row.primaryKey, rows: [row]))
            }
        }
        for index in unordered where !isSorted(groups[index].rows) {
            groups[index].rows.sort { $0.id < $1.id }
        }
        return groups
    }

    private static func isSorted(_ rows: [ChangeRow]) -> Bool {
        var i = 1
        while i < rows.count {
            if rows[i - 1].id > rows[i].id { return false }
            i += 1
        }
        return true
    }
}
