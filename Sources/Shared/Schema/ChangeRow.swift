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
    public var attempts: Int { rows.map(\.attempts).max() ?? 0 }
    public var permanentFailures: Int { rows.map(\.permanentFailures).max() ?? 0 }

    /// Group rows by key, keeping the order in which keys first appear (oldest first) and each
    /// key's rows in id order.
    public static func coalesce(_ rows: [ChangeRow]) -> [KeyChanges] {
        var order: [String] = []
        var groups: [String: [ChangeRow]] = [:]
        for row in rows {
            if groups[row.primaryKey] == nil { order.append(row.primaryKey) }
            groups[row.primaryKey, default: []].append(row)
        }
        return order.map { key in KeyChanges(primaryKey: key, rows: groups[key]!.sorted { $0.id < $1.id }) }
    }
}
