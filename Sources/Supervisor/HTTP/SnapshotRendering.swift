// /health, /livez, /readyz, /metrics and /metrics/prometheus bodies from a snapshot: pure functions.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import SharedCore

extension ServiceSnapshot.Table {
    /// Prometheus labels: `table`, and `partition` for a partition's worker.
    var labels: String {
        let table = "table=\"\(ServiceSnapshot.escapeLabel(tableName))\""
        return partition.isWhole ? table : table + ",partition=\"\(partition.index)\""
    }

    /// A partition's entry in /health and /metrics (keyed `table#index`) names its table and share.
    func addPartition(to entry: inout [String: Any]) {
        guard !partition.isWhole else { return }
        entry["table"] = tableName
        entry["partition"] = partition.index
        entry["partitions"] = partition.count
    }
}

extension ServiceSnapshot {
    private func json(_ object: Any) -> String {
        JSONText.render(object)
    }

    var healthJSON: String {
        var tablesObject: [String: Any] = [:]
        for t in tables {
            var entry: [String: Any] = [
                "state": t.state, "restarts": t.restarts, "backlog": t.stats.backlog,
                "oldest_change_age_seconds": t.stats.oldestChangeAgeSeconds,
                "database": t.stats.database.rawValue, "circuit_breaker": t.stats.circuitBreaker.rawValue,
            ]
            entry["pid"] = t.pid.map { Int($0) } ?? JSONNull()
            entry["last_publish"] = t.stats.lastPublishAt ?? JSONNull()
            if let e = t.lastExit { entry["last_exit"] = e }
            if let e = t.lastError { entry["last_error"] = e }
            if let p = t.stats.tableProblem { entry["problem"] = p }
            if let p = t.stats.ingestorProblem { entry["ingestor_problem"] = p }
            if let p = t.stats.databaseProblem { entry["database_problem"] = p }
            entry["lease"] = t.stats.lease.rawValue
            if let holder = t.stats.leaseHolder { entry["leader"] = holder }
            if let retained = t.stats.walRetainedBytes { entry["wal_retained_bytes"] = retained }
            if let lag = t.stats.walConfirmedLagBytes { entry["wal_confirmed_lag_bytes"] = lag }
            if t.stats.walRetainedBytes != nil { entry["wal_safe_bytes"] = t.stats.walSafeBytes ?? JSONNull() }
            if let status = t.stats.walStatus { entry["wal_status"] = status }
            t.addPartition(to: &entry)
            if t.stalled {
                // The worker's figures are as old as its last report: say so, never a stale "0".
                entry["stalled"] = true
                entry["silent_seconds"] = (t.silentSeconds * 10).rounded() / 10
            }
            tablesObject[t.name] = entry
        }
        let dbUp = tables.contains { $0.stats.database == .up }
        let dbAllUp = !tables.isEmpty && tables.allSatisfy { $0.stats.database == .up }
        let breakerOpen = tables.filter { $0.stats.circuitBreaker == .open || $0.stats.circuitBreaker == .halfOpen }.map(\.name)
        let ready = readiness
        let body: [String: Any] = [
            "status": health.rawValue,
            "instance": instance,
            "ready": ready.ok,
            "ready_reason": ready.reason,
            "version": PublisherVersion.current,
            "uptime_seconds": Int(Date().timeIntervalSince(startedAt)),
            "components": [
                "database": ["status": dbAllUp ? "up" : (dbUp ? "degraded" : "down")],
                "ingestor": ["status": breakerOpen.isEmpty ? "up" : "degraded", "circuit_breaker_open": breakerOpen.sorted()],
                "tables": tablesObject,
            ],
        ]
        return json(body)
    }

    private func counters(_ s: WorkerStats) -> [String: Any] {
        let attempts = s.publishSuccesses + s.publishFailures
        var figures: [String: Any] = [:]
        if let retained = s.walRetainedBytes { figures["wal_retained_bytes"] = retained }
        if let lag = s.walConfirmedLagBytes { figures["wal_confirmed_lag_bytes"] = lag }
        if s.walRetainedBytes != nil { figures["wal_safe_bytes"] = s.walSafeBytes ?? JSONNull() }
        if let status = s.walStatus { figures["wal_status"] = status }
        return figures.merging([
            "changes_processed": s.changesProcessed, "changes_published": s.changesPublished,
            "publish_failures": s.publishFailures, "publish_timeouts": s.publishTimeouts, "retries": s.retries, "query_errors": s.queryErrors,
            "dead_lettered": s.deadLettered, "backlog": s.backlog, "oldest_change_age_seconds": s.oldestChangeAgeSeconds,
            "in_flight": s.inFlight, "dead_letters": s.deadLetters, "oldest_dead_letter_age_seconds": s.oldestDeadLetterAgeSeconds,
            "ingestor_success_rate": attempts == 0 ? 1.0 : Double(s.publishSuccesses) / Double(attempts), "publish_successes": s.publishSuccesses,
            "query_seconds": latency(s.query), "publish_seconds": latency(s.publish), "batch_seconds": latency(s.batch),
        ]) { a, _ in a }
    }

    private func latency(_ l: LatencySummary) -> [String: Any] {
        ["count": l.count, "avg": l.averageSeconds, "max": l.maxSeconds, "last": l.lastSeconds, "sum": l.sumSeconds]
    }

    var metricsJSON: String {
        var totals = WorkerStats()
        var perTable: [String: Any] = [:]
        var restarts = 0
        for t in tables {
            totals.changesProcessed += t.stats.changesProcessed
            totals.changesPublished += t.stats.changesPublished
            totals.publishFailures += t.stats.publishFailures
            totals.publishTimeouts += t.stats.publishTimeouts
            totals.publishSuccesses += t.stats.publishSuccesses
            totals.retries += t.stats.retries
            totals.queryErrors += t.stats.queryErrors
            totals.deadLettered += t.stats.deadLettered
            totals.backlog += t.stats.backlog
            totals.inFlight += t.stats.inFlight
            totals.deadLetters += t.stats.deadLetters
            totals.oldestDeadLetterAgeSeconds = max(totals.oldestDeadLetterAgeSeconds, t.stats.oldestDeadLetterAgeSeconds)
            totals.oldestChangeAgeSeconds = max(totals.oldestChangeAgeSeconds, t.stats.oldestChangeAgeSeconds)
            for (dst, src) in [(\WorkerStats.query, t.stats.query), (\WorkerStats.publish, t.stats.publish), (\WorkerStats.batch, t.stats.batch)] {
                totals[keyPath: dst].count += src.count
                totals[keyPath: dst].sumSeconds += src.sumSeconds
                totals[keyPath: dst].maxSeconds = max(totals[keyPath: dst].maxSeconds, src.maxSeconds)
                totals[keyPath: dst].lastSeconds = max(totals[keyPath: dst].lastSeconds, src.lastSeconds)
            }
            restarts += t.restarts
            var entry = counters(t.stats)
            entry["state"] = t.state
            entry["up"] = t.up
            entry["pid"] = t.pid.map { Int($0) } ?? JSONNull()
            entry["restarts"] = t.restarts
            entry["database"] = t.stats.database.rawValue
            entry["circuit_breaker"] = t.stats.circuitBreaker.rawValue
            entry["last_publish"] = t.stats.lastPublishAt ?? JSONNull()
            entry["lease"] = t.stats.lease.rawValue
            entry["leader"] = t.stats.leaseHolder ?? JSONNull()
            entry["lease_held_seconds"] = t.stats.leaseHeldSeconds
            entry["takeovers"] = t.stats.takeovers
            if let p = t.stats.tableProblem { entry["problem"] = p }
            if let p = t.stats.ingestorProblem { entry["ingestor_problem"] = p }
            if let p = t.stats.databaseProblem { entry["database_problem"] = p }
            t.addPartition(to: &entry)
            perTable[t.name] = entry
        }
        var totalsObject = counters(totals)
        totalsObject["worker_restarts"] = restarts
        totalsObject["workers_up"] = tables.filter(\.up).count
        totalsObject["workers"] = tables.count
        totalsObject["malformed_worker_lines"] = malformedLines
        return json(["uptime_seconds": Int(Date().timeIntervalSince(startedAt)), "instance": instance, "totals": totalsObject, "tables": perTable])
    }

    var prometheusText: String {
        var out = ""
        func family(_ name: String, _ type: String, _ help: String, _ samples: [(labels: String, value: Double)]) {
            out += "# HELP atomic_data_publisher_\(name) \(help)\n# TYPE atomic_data_publisher_\(name) \(type)\n"
            for s in samples {
                out += "atomic_data_publisher_\(name)\(s.labels) \(Self.format(s.value))\n"
            }
        }
        func perTable(_ value: (Table) -> Double) -> [(labels: String, value: Double)] {
            tables.map { ("{\($0.labels)}", value($0)) }
        }
        family("changes_processed_total", "counter", "Tracking rows read and processed.", perTable { Double($0.stats.changesProcessed) })
        family("changes_published_total", "counter", "Tracking rows acknowledged by the ingestor.", perTable { Double($0.stats.changesPublished) })
        family("publish_failures_total", "counter", "Publishes that failed (transport error or non-2xx).", perTable { Double($0.stats.publishFailures) })
        family("publish_timeouts_total", "counter", "Publishes the ingestor did not answer within ingestor.timeout_seconds (also counted in publish_failures_total).",
               perTable { Double($0.stats.publishTimeouts) })
        family("publish_successes_total", "counter", "Publishes the ingestor acknowledged with a 2xx.", perTable { Double($0.stats.publishSuccesses) })
        family("retries_total", "counter", "Changes rescheduled after a failure.", perTable { Double($0.stats.retries) })
        family("query_errors_total", "counter", "Atomic data queries that failed for a key.", perTable { Double($0.stats.queryErrors) })
        family("dead_lettered_total", "counter", "Changes moved to the dead-letter table.", perTable { Double($0.stats.deadLettered) })
        family("backlog_changes", "gauge", "Tracking rows waiting to be published.", perTable { Double($0.stats.backlog) })
        family("oldest_change_age_seconds", "gauge", "Age of the oldest unpublished change.", perTable { $0.stats.oldestChangeAgeSeconds })
        family("in_flight_requests", "gauge", "Ingestor requests in flight.", perTable { Double($0.stats.inFlight) })
        family("dead_letters", "gauge", "Changes waiting in the dead-letter table.", perTable { Double($0.stats.deadLetters) })
        family("oldest_dead_letter_age_seconds", "gauge", "Age of the oldest dead letter.", perTable { $0.stats.oldestDeadLetterAgeSeconds })
        // WAL mode only: a table captured by triggers has no slot, and no sample.
        let slots = tables.filter { $0.stats.walRetainedBytes != nil }
        family("wal_retained_bytes", "gauge", "capture = \"wal\": WAL the table's replication slot holds back (restart position to WAL end).",
               slots.map { ("{\($0.labels)}", Double($0.stats.walRetainedBytes ?? 0)) })
        family("wal_confirmed_lag_bytes", "gauge", "capture = \"wal\": how far the slot's confirmed position is behind the WAL end.",
               slots.map { ("{\($0.labels)}", Double($0.stats.walConfirmedLagBytes ?? 0)) })
        // Only for a slot with a cap (max_slot_wal_keep_size set): no sample means no cap.
        family("wal_safe_bytes", "gauge", "capture = \"wal\": WAL that may still be written before max_slot_wal_keep_size invalidates the slot (no sample without a cap).",
               slots.compactMap { t in t.stats.walSafeBytes.map { ("{\(t.labels)}", Double($0)) } })
        family("wal_status", "gauge", "capture = \"wal\": 1 for the slot's pg_replication_slots.wal_status (reserved, extended, unreserved, lost).",
               slots.compactMap { t in t.stats.walStatus.map { ("{\(t.labels),status=\"\($0)\"}", 1) } })
        family("worker_up", "gauge", "1 when the table's worker is running.", perTable { $0.up ? 1 : 0 })
        family("worker_restarts_total", "counter", "Worker restarts by the supervisor.", perTable { Double($0.restarts) })
        family("worker_failed", "gauge", "1 when the table failed permanently (configuration or permission error) and is not restarted.",
               perTable { $0.state == "failed" ? 1 : 0 })
        family("database_up", "gauge", "1 when the worker's database connection is up.", perTable { $0.stats.database == .up ? 1 : 0 })
        family("lease_leader", "gauge", "1 when this instance holds the table's lease and publishes it; 0 when it stands by.",
               perTable { $0.stats.lease == .leader ? 1 : 0 })
        family("lease_takeovers_total", "counter", "Times this instance took the table's lease after another instance held it.",
               perTable { Double($0.stats.takeovers) })
        family("lease_held_seconds", "gauge", "Seconds since this instance took the table's lease (0 when not leading).",
               perTable { $0.stats.leaseHeldSeconds })
        family("table_problem", "gauge", "1 while the table cannot be published (a revoked grant, a query failing for every key).",
               perTable { $0.stats.tableProblem == nil ? 0 : 1 })
        family("circuit_breaker_open", "gauge", "1 when the worker's circuit breaker is open or half-open.",
               perTable { ($0.stats.circuitBreaker == .open || $0.stats.circuitBreaker == .halfOpen) ? 1 : 0 })
        for (name, help, path) in [("query_duration_seconds", "Atomic data query time per batch.", \WorkerStats.query),
                                   ("publish_duration_seconds", "Ingestor response time per request.", \WorkerStats.publish),
                                   ("batch_duration_seconds", "Time to process one batch.", \WorkerStats.batch)] {
            out += "# HELP atomic_data_publisher_\(name) \(help)\n# TYPE atomic_data_publisher_\(name) summary\n"
            for t in tables {
                let l = t.stats[keyPath: path]
                let label = t.labels
                out += "atomic_data_publisher_\(name)_sum{\(label)} \(Self.format(l.sumSeconds))\n"
                out += "atomic_data_publisher_\(name)_count{\(label)} \(l.count)\n"
            }
        }
        family("malformed_worker_lines_total", "counter", "Worker stdout lines that were not valid messages.", [("", Double(malformedLines))])
        family("up", "gauge", "1 when the service is healthy or degraded.", [("", health == .unhealthy ? 0 : 1)])
        return out
    }

    static func escapeLabel(_ s: String) -> String {
        s.replacingAll("\\", with: "\\\\").replacingAll("\"", with: "\\\"").replacingAll("\n", with: "\\n")
    }

    static func format(_ v: Double) -> String {
        if v == v.rounded() && abs(v) < 1e15 { return String(Int64(v)) }
        return String(v)
    }
}

/// The body of /livez and /readyz: `{"status": "...", "reason": "..."}`.
func probeJSON(_ result: ProbeResult, okStatus: String, failStatus: String) -> String {
    JSONText.render(["status": result.ok ? okStatus : failStatus, "reason": result.reason])
}
