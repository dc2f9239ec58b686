// The sentence a worker reports when PostgreSQL refuses its one session for want of room
// (SQLSTATE 53300): which limit was hit, this instance's figures, and what to change. Pure, so
// every wording is unit-tested; the worker only keeps retrying and reporting it.

import Shared

enum SessionRefusal {
    /// Whether `error` is the server refusing a session for want of room: "sorry, too many clients
    /// already", "remaining connection slots are reserved ...", "too many connections for role"
    /// or "... for database" all carry SQLSTATE 53300 (too_many_connections).
    static func matches(_ error: PostgresError) -> Bool {
        error.sqlState == "53300"
    }

    /// One sentence for /health, /readyz and the log.
    static func sentence(_ error: PostgresError, share: SessionShare, role: String) -> String {
        let text = error.message.lowercased()
        let limit: String
        if text.contains("for role") {
            limit = "the role \(role) has reached its CONNECTION LIMIT"
        } else if text.contains("for database") {
            limit = "the database has reached its CONNECTION LIMIT"
        } else {
            limit = "the server has reached its max_connections (less the slots reserved for superusers)"
        }
        let setting = share.configured ? "database.max_connections = \(share.instanceLimit)" : "database.max_connections automatic"
        return "PostgreSQL refused this worker's session, too many connections (SQLSTATE 53300): \(limit); "
            + "this instance may hold \(share.instanceLimit) sessions for its \(share.instanceWorkers) workers (\(setting)), this worker \(share.sessions). "
            + "Lower database.max_connections (at least \(share.instanceWorkers)), raise the CONNECTION LIMIT of role \(role), or raise the server's max_connections (or end other sessions); retrying with backoff"
    }
}
