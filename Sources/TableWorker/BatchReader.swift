// Reading one batch (DESIGN.md section 5, steps 1 to 3) in one REPEATABLE READ snapshot: the due
// rows, the same keys' later rows, and each key's atomic data, so the state published for a key is
// exactly its state as of the changes read.
//
// Cost: a constant number of round trips, whatever the batch size or the number of failing keys.
// The atomic queries run pipelined after a savepoint; when one fails (which aborts the snapshot
// transaction), only the commands the server skipped run again, one pipeline segment each, every
// segment starting with ROLLBACK TO SAVEPOINT: one more round trip, and every key is queried once.

import Shared

struct Batch: Sendable {
    var groups: [KeyChanges] = []
    /// Each group's atomic data (JSON text): `[]` for a delete (not queried) and for a key whose
    /// query failed.
    var atomicData: [String] = []
    /// The error of the atomic data query, by group index, for each key it failed for. Kept apart
    /// from the data, for memory: a `Result` per key took 64 bytes where a `String` takes 16.
    var queryErrors: [Int: PostgresError] = [:]
    /// The query error of group `index`, if its query failed (no hashing when none did: the
    /// usual batch, asked once per key).
    func queryError(_ index: Int) -> PostgresError? {
        queryErrors.isEmpty ? nil : queryErrors[index]
    }
    /// Why the whole-batch atomic data statement failed, when it did (the keys were then queried
    /// one by one, which tells which key failed).
    var batchedFailure: PostgresError?
    /// How many tracking rows the batch covers.
    var changeCount = 0
    /// How many of them were due rows (at most the batch size; the rest were covered rows): a
    /// full batch says more is probably due.
    var dueCount = 0
    var isEmpty: Bool { changeCount == 0 }
}

/// How an atomic data query's error is handled.
enum QueryFailure: Equatable, Sendable {
    /// The row's data is at fault (a cast, a raised exception): that key fails permanently.
    case key
    /// Worth retrying as is (a statement timeout, a lock timeout, a deadlock, a serialization failure).
    case transient
    /// The table or the query is at fault for every key (privilege revoked, column or function
    /// gone): stop publishing the table, keep every change, retry until it is fixed.
    case table

    static func classify(_ error: PostgresError) -> QueryFailure {
        guard let state = error.sqlState else { return .transient }
        if ["57014", "55P03", "40001", "40P01", "53200", "53300", "53400"].contains(state) || state.hasPrefix("53") { return .transient }
        // 42: syntax error or access rule violation (42501 insufficient privilege, 42P01 undefined
        // table, 42703 undefined column, 42883 undefined function); 0A: feature not supported;
        // 3F000: invalid schema; 26000: prepared statement gone.
        if state.hasPrefix("42") || state.hasPrefix("0A") || state == "3F000" || state == "26000" { return .table }
        return .key
    }
}

struct BatchReader: Sendable {
    let schema: TrackingSchema
    let batchSize: Int
    static let statementName = "adp_atomic_data"
    static let batchedStatementName = "adp_atomic_data_batch"

    /// `probeFirst` (when the last poll found nothing): one cheap statement decides whether a
    /// snapshot is worth opening, so an idle table costs one statement per poll, not three.
    /// `batched`: the whole-batch atomic data statement is prepared (`DatabaseSession.batched`).
    /// `excludingKeys`: keys left out of the due rows (those of a batch still being sent, when
    /// this one is read ahead of its turn: BatchPrefetcher).
    func read(_ db: PostgresConnection, probeFirst: Bool = false, batched: Bool = false, excludingKeys: [String] = []) throws(PostgresError) -> Batch {
        if probeFirst, try db.execute(schema.anyDueSQL)[0, 0] != "t" { return Batch() }
        try db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ")
        do {
            var batch = Batch()
            // Rows are grouped as libpq hands them over: no read holds its rows, which bounds a batch's memory. A batch
            // has at most `batchSize` keys (the covered rows are the same keys' rows): reserving
            // them all up front leaves no doubled capacity behind (at batch 5,000 the groups grew
            // to room for 8,192, 0.4 MB more per batch; untouched room is never paged in).
            var grouping = KeyChanges.Grouping(expectedKeys: batchSize)
            var dueIds: [Int64] = []
            try schema.fetchDue(db, limit: batchSize, excludingKeys: excludingKeys) { row in
                dueIds.append(row.id)
                grouping.add(row)
            }
            if dueIds.isEmpty {
                try db.execute("COMMIT")
                return batch
            }
            // The keys' later changes beyond the LIMIT are in the state read below too: cover
            // them now rather than publish the same state once per slice of a backlog.
            try schema.fetchCovered(db, keys: grouping.groups.map(\.primaryKey), excluding: dueIds, limit: batchSize * 4) { grouping.add($0) }
            batch.changeCount = grouping.rowCount
            batch.dueCount = dueIds.count
            batch.groups = grouping.finish()
            let queried = batch.groups.indices.filter { batch.groups[$0].latest.operation != .delete }
            let results = try queryAtomicData(db, keys: queried.map { batch.groups[$0].primaryKey }, batched: batched,
                                              failure: &batch.batchedFailure)
            batch.atomicData = Array(repeating: "[]", count: batch.groups.count)
            for (position, index) in queried.enumerated() {
                switch results[position] {
                case .success(let json): batch.atomicData[index] = json
                case .failure(let error): batch.queryErrors[index] = error
                }
            }
            try db.execute(batch.queryErrors.isEmpty ? "COMMIT" : "ROLLBACK")
            return batch
        } catch {
            if !error.isConnectionLost { _ = try? db.execute("ROLLBACK") }
            throw error
        }
    }

    /// Each key's atomic data: all keys in one statement when `batched`; the keys that statement
    /// did not answer (one key's row broke the query, so the statement stopped there; a timeout)
    /// then run one pipelined statement each, so a failure is pinned on its key, the others are
    /// published, and every key is queried once (the rows before a failure are kept).
    private func queryAtomicData(_ db: PostgresConnection, keys: [String], batched: Bool,
                                 failure: inout PostgresError?) throws(PostgresError) -> [Result<String, PostgresError>] {
        if keys.isEmpty { return [] }
        var results: [Result<String, PostgresError>?] = Array(repeating: nil, count: keys.count)
        var start: [PostgresConnection.PipelineCommand] = [.sql("SAVEPOINT adp_batch")]
        if batched {
            let whole = try db.pipeline([start + [.preparedStreaming(name: Self.batchedStatementName, parameters: [TrackingSchema.textArray(keys)])]])[0]
            if case .failure(let error) = whole[0] { throw error }
            var answered: QueryResult?
            switch whole[1] {
            case .success(let q):
                answered = q
            case .failedAfter(let q, let error):
                answered = q
                failure = error
            case .failure(let error):
                failure = error
            case .aborted:
                failure = PostgresError(kind: .query, sqlState: nil, message: "the whole-batch atomic data query was skipped")
            }
            for row in answered?.rows ?? [] {
                guard let ord = row.first.flatMap({ $0 }).flatMap({ Int($0) }), ord >= 1, ord <= keys.count else { continue }
                results[ord - 1] = .success(row.count > 1 ? row[1] ?? "[]" : "[]")
            }
            if failure == nil {
                if !results.contains(where: { $0 == nil }) { return results.map { $0! } }
                failure = PostgresError(kind: .query, sqlState: nil, message: "the whole-batch atomic data query answered \(answered?.rows.count ?? 0) of \(keys.count) keys")
            }
            start = [.sql("ROLLBACK TO SAVEPOINT adp_batch")]
        }
        let pending = results.indices.filter { results[$0] == nil }
        let first = try db.pipeline([start + pending.map { .prepared(name: Self.statementName, parameters: [keys[$0]]) }])[0]
        if case .failure(let error) = first[0] { throw error }
        for (position, index) in pending.enumerated() { results[index] = Self.result(first[position + 1]) }
        let skipped = results.indices.filter { results[$0] == nil }
        if !skipped.isEmpty {
            let segments: [[PostgresConnection.PipelineCommand]] = skipped.map {
                [.sql("ROLLBACK TO SAVEPOINT adp_batch"), .prepared(name: Self.statementName, parameters: [keys[$0]])]
            }
            let again = try db.pipeline(segments)
            for (position, index) in skipped.enumerated() {
                results[index] = again[position].count == 2 ? Self.result(again[position][1])
                    : .failure(PostgresError(kind: .query, sqlState: nil, message: "no result for the atomic data query"))
                if results[index] == nil, case .failure(let error) = again[position][0] { results[index] = .failure(error) }
            }
        }
        return results.map { $0 ?? .failure(PostgresError(kind: .query, sqlState: nil, message: "no result for the atomic data query")) }
    }

    private static func result(_ r: PostgresConnection.PipelineResult) -> Result<String, PostgresError>? {
        switch r {
        case .success(let q): .success(q.rows.first?.first.flatMap { $0 } ?? "[]")
        case .failure(let e), .failedAfter(_, let e): .failure(e)
        case .aborted: nil
        }
    }
}
