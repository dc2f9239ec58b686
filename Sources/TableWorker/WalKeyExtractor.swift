// What the capture trigger and the dependency triggers record, computed from pgoutput's row
// images instead (docs/database.md, "WAL capture"): the keys to enqueue in T_changes, with the
// same operation codes, change column values and causes. Pure: relations in, keys out.
//
// Invariants:
// - A change is never dropped for lack of information: an UPDATE whose old row the WAL does not
//   carry (the default replica identity, key unchanged) counts, as if a change column changed;
//   only an old row that is there and equal in every change column (and the key) is skipped.
// - The key of a deleted or moved row comes from the old tuple, which holds the replica identity
//   columns: setup and check-config refuse a watched key or a dependency's key column outside the
//   replica identity (TrackingSchema+WAL), so it is always there.
// - A relation whose configured columns are missing (renamed or dropped) is an error, not a row
//   skipped: the stream is not confirmed past it, and the worker reports the missing columns.
// - Values are PostgreSQL's text output, as `::text` in the triggers, so keys match byte for byte.

import Shared

struct CapturedKey: Equatable {
    var primaryKey: String
    /// "I", "U" or "D", as the capture trigger writes them.
    var operation: String
    /// One change column: its text. Several: a JSON object of their texts, which the insert
    /// turns into the trigger's `jsonb_build_object` of the typed values (TrackingSchema+WAL).
    var changeValue: String?
    /// A dependency's `"<schema>.<table> <event>"`; nil for the watched table's own rows.
    var cause: String?
}

struct WalKeyExtractor {
    struct MissingColumns: Error, CustomStringConvertible {
        var description: String
    }

    let table: WatchedTable

    private enum Role {
        case watched(key: Int, changes: [Int])
        /// `compared`: the key column first, then the change columns (every column when none are listed).
        case dependency(Dependency, key: Int, compared: [Int])
        case ignored
    }

    private var roles: [UInt32: Role] = [:]

    init(table: WatchedTable) {
        self.table = table
    }

    /// A Relation message: from now on, rows of `relation.oid` are read with its columns.
    mutating func relationReceived(_ relation: PgOutput.Relation) throws(MissingColumns) {
        let names = relation.columns.map(\.name)
        func index(_ column: String) throws(MissingColumns) -> Int {
            guard let i = names.firstIndex(of: column) else {
                throw MissingColumns(description: "column \"\(column)\" of \(relation.schema).\(relation.name) is not in its WAL records (renamed or dropped)")
            }
            return i
        }
        if relation.schema == table.schema && relation.name == table.name {
            var changes: [Int] = []
            for column in table.changeColumns { changes.append(try index(column)) }
            roles[relation.oid] = .watched(key: try index(table.primaryKey), changes: changes)
        } else if let dependency = table.dependencies.first(where: { $0.schema == relation.schema && $0.table == relation.name }) {
            let key = try index(dependency.keyColumns[0])
            var compared = [key]
            if dependency.changeColumns.isEmpty {
                compared += names.indices.filter { $0 != key }
            } else {
                for column in dependency.changeColumns where column != dependency.keyColumns[0] { compared.append(try index(column)) }
            }
            roles[relation.oid] = .dependency(dependency, key: key, compared: compared)
        } else {
            roles[relation.oid] = .ignored
        }
    }

    /// The keys a row change enqueues, in the order the triggers would write them.
    func keys(for message: PgOutput.Message) -> [CapturedKey] {
        switch message {
        case .insert(let oid, let new):
            return keys(oid, old: nil, oldIsKeyOnly: false, new: new, event: .insert)
        case .update(let oid, let old, let keyOnly, let new):
            return keys(oid, old: old, oldIsKeyOnly: keyOnly, new: new, event: .update)
        case .delete(let oid, let old, let keyOnly):
            return keys(oid, old: old, oldIsKeyOnly: keyOnly, new: nil, event: .delete)
        default:
            return []
        }
    }

    /// Whether rows of `oid` were announced by a Relation message (pgoutput always sends one first).
    func knows(_ oid: UInt32) -> Bool { roles[oid] != nil }

    private func keys(_ oid: UInt32, old: [PgOutput.Value]?, oldIsKeyOnly: Bool, new: [PgOutput.Value]?, event: ChangeOperation) -> [CapturedKey] {
        switch roles[oid] ?? .ignored {
        case .ignored:
            return []
        case .watched(let key, let changes):
            return watchedKeys(key: key, changes: changes, old: old, oldIsKeyOnly: oldIsKeyOnly, new: new, event: event)
        case .dependency(let dependency, let key, let compared):
            let cause = "\(dependency.qualifiedName) \(event.rawValue)"
            var found: [String] = []
            func add(_ value: PgOutput.Value?) {
                if let text = value?.text, !found.contains(text) { found.append(text) }
            }
            switch event {
            case .insert:
                add(new?[safe: key])
            case .delete:
                add(old?[safe: key])
            default:
                guard let new else { return [] }
                if let old, !oldIsKeyOnly {
                    // The whole old row (REPLICA IDENTITY FULL): count only a change of the compared columns.
                    guard compared.contains(where: { Self.differs(old[safe: $0], new[safe: $0]) }) else { return [] }
                    add(old[safe: key])
                } else if let old {
                    add(old[safe: key])  // the identity changed: the row may have moved to another parent
                }
                add(new[safe: key])
            }
            return found.map { CapturedKey(primaryKey: $0, operation: "U", changeValue: nil, cause: cause) }
        }
    }

    private func watchedKeys(key: Int, changes: [Int], old: [PgOutput.Value]?, oldIsKeyOnly: Bool, new: [PgOutput.Value]?,
                             event: ChangeOperation) -> [CapturedKey] {
        guard table.operations.contains(event) else { return [] }
        func value(_ row: [PgOutput.Value]?) -> String? {
            guard let row else { return nil }
            if changes.count == 1 { return row[safe: changes[0]]?.text }
            let pairs = zip(table.changeColumns, changes).map { name, index in
                "\(jsonString(name)):\(row[safe: index]?.text.map(jsonString) ?? "null")"
            }
            return "{" + pairs.joined(separator: ",") + "}"
        }
        switch event {
        case .insert:
            guard let k = new?[safe: key]?.text else { return [] }
            return [CapturedKey(primaryKey: k, operation: "I", changeValue: value(new))]
        case .delete:
            guard let k = old?[safe: key]?.text else { return [] }
            // A key-only old tuple carries no change column value unless it is part of the identity.
            return [CapturedKey(primaryKey: k, operation: "D", changeValue: value(old))]
        default:
            guard let new, let newKey = new[safe: key]?.text else { return [] }
            if let old, let oldKey = old[safe: key]?.text, oldKey != newKey {
                return [CapturedKey(primaryKey: oldKey, operation: "D", changeValue: value(old)),
                        CapturedKey(primaryKey: newKey, operation: "U", changeValue: value(new))]
            }
            if let old, !oldIsKeyOnly, !changes.contains(where: { Self.differs(old[safe: $0], new[safe: $0]) }) {
                return []  // the whole old row is there, and no change column changed
            }
            return [CapturedKey(primaryKey: newKey, operation: "U", changeValue: value(new))]
        }
    }

    /// `IS DISTINCT FROM` on text; an unchanged TOASTed value in the new row is the old one.
    static func differs(_ old: PgOutput.Value?, _ new: PgOutput.Value?) -> Bool {
        if new == .unchanged { return false }
        return old != new
    }
}

extension Array {
    subscript(safe index: Int) -> Element? {
        indices.contains(index) ? self[index] : nil
    }
}
