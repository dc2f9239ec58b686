// check-config's session arithmetic: what the server has free for the service's role, against what
// this instance may open (SessionBudget). A warning, never an error: the figures are a snapshot
// (other clients come and go), and a worker the server refuses waits and says so in /health.

import Shared

/// The server's side of the sum, read by `read(on:instance:)`; the rest is pure.
struct ServerSessions: Equatable {
    var role: String
    var maxConnections: Int
    /// `superuser_reserved_connections`, plus PostgreSQL 16's `reserved_connections`: slots an
    /// ordinary role cannot take.
    var reserved: Int
    var superuser: Bool
    /// `rolconnlimit`: -1 for none (superusers are not held to it).
    var roleLimit: Int
    /// Client sessions now, other than this instance's (a running one is replaced, not added to)
    /// and check-config's own; and of those, the role's.
    var inUse: Int
    var roleInUse: Int

    /// Sessions this role can still open: the server's free ordinary slots, and under its role's
    /// CONNECTION LIMIT.
    var free: Int {
        let server = maxConnections - (superuser ? 0 : reserved) - inUse
        guard roleLimit >= 0, !superuser else { return max(0, server) }
        return max(0, min(server, roleLimit - roleInUse))
    }

    /// One sentence when `budget` could take more than is free, else nil.
    func warning(_ budget: SessionBudget) -> String? {
        let need = budget.peak
        guard need > free else { return nil }
        var figures = "server max_connections \(maxConnections)"
        if !superuser { figures += ", \(reserved) reserved for superusers" }
        figures += ", \(inUse) in use by other sessions"
        if roleLimit >= 0 && !superuser { figures += "; role CONNECTION LIMIT \(roleLimit) with \(roleInUse) in use" }
        let streams = budget.streamingWorkers.count
        let least = streams == 0 ? "one per worker" : "one per worker and two per WAL stream"
        let fix = free >= budget.required
            ? "set database.max_connections to at most \(free) (at least \(budget.required), \(least)), raise the role's CONNECTION LIMIT or the server's max_connections, or end other sessions"
            : (streams == 0 ? "not even one session per worker fits, so \(budget.workers - free) of the \(budget.workers) workers would wait for a session"
                : "not even one session per worker and two per WAL stream fit, so \(budget.required - free) of the \(budget.required) sessions they need would wait")
                + ": raise the role's CONNECTION LIMIT or the server's max_connections, end other sessions, or watch fewer tables"
        let counted = streams == 0 ? "\(budget.workers) workers" : "\(budget.workers) workers, \(streams) WAL stream\(streams == 1 ? "" : "s") of 2"
        return "this instance may open up to \(need) PostgreSQL sessions (\(counted), \(budget.setting)) but only \(free) are free for role \(role) (\(figures)): \(fix)"
    }

    static func read(on db: PostgresConnection, instance: String) throws -> ServerSessions {
        // pg_stat_activity shows every session's pid, role, name and type to any role.
        let row = try db.execute("""
            WITH others AS (
                SELECT usename FROM pg_stat_activity
                WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()
                  AND NOT (coalesce(application_name, '') LIKE 'atomic-data-publisher%'
                           AND right(application_name, length($1)) = $1))
            SELECT current_user::text, current_setting('max_connections'),
                   current_setting('superuser_reserved_connections')::int + coalesce(nullif(current_setting('reserved_connections', true), ''), '0')::int,
                   r.rolsuper, r.rolconnlimit,
                   (SELECT count(*) FROM others), (SELECT count(*) FROM others WHERE usename = current_user)
            FROM pg_roles r WHERE r.rolname = current_user
            """, ["@" + instance])
        func int(_ column: Int) -> Int { Int(row[0, column] ?? "") ?? 0 }
        return ServerSessions(role: row[0, 0] ?? "", maxConnections: int(1), reserved: int(2), superuser: row[0, 3] == "t",
                              roleLimit: int(4), inUse: int(5), roleInUse: int(6))
    }
}
