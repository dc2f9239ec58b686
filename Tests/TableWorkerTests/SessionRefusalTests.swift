import XCTest
@testable import TableWorker
@testable import Shared

/// The sentence a worker reports when PostgreSQL has no room for its session: which limit, this
/// instance's figures, and the three settings that can make room.
final class SessionRefusalTests: XCTestCase {
    private let share = SessionShare(sessions: 1, budget: SessionBudget(workers: 30, maxConnections: 35))

    private func refused(_ message: String) -> PostgresError {
        PostgresError(kind: .connection, sqlState: "53300", message: "could not connect to PostgreSQL at h:5432/db: FATAL:  \(message)")
    }

    func testTooManyConnections_isRecognisedBySQLState_only() {
        XCTAssertTrue(SessionRefusal.matches(refused("sorry, too many clients already")))
        XCTAssertFalse(SessionRefusal.matches(PostgresError(kind: .connection, sqlState: nil, message: "too many clients")))
        XCTAssertFalse(SessionRefusal.matches(PostgresError(kind: .connection, sqlState: "57P03", message: "the database system is starting up")))
    }

    func testServerFull_namesTheServersMaxConnections_theBudget_andEveryFix() {
        let text = SessionRefusal.sentence(refused("remaining connection slots are reserved for non-replication superuser connections"), share: share, role: "adp")
        XCTAssertTrue(text.contains("SQLSTATE 53300"), text)
        XCTAssertTrue(text.contains("the server has reached its max_connections"), text)
        XCTAssertTrue(text.contains("this instance may hold 35 sessions for its 30 workers (database.max_connections = 35)"), text)
        XCTAssertTrue(text.contains("Lower database.max_connections (at least 30)"), text)
        XCTAssertTrue(text.contains("raise the CONNECTION LIMIT of role adp"), text)
        XCTAssertTrue(text.contains("raise the server's max_connections"), text)
    }

    func testRoleLimit_namesTheRolesConnectionLimit() {
        let text = SessionRefusal.sentence(refused("too many connections for role \"adp\""), share: share, role: "adp")
        XCTAssertTrue(text.contains("the role adp has reached its CONNECTION LIMIT"), text)
    }

    func testDatabaseLimit_namesTheDatabasesConnectionLimit() {
        let text = SessionRefusal.sentence(refused("too many connections for database \"helium\""), share: share, role: "adp")
        XCTAssertTrue(text.contains("the database has reached its CONNECTION LIMIT"), text)
    }

    func testAutomaticBudget_saysSo() {
        let automatic = SessionShare(sessions: 2, budget: SessionBudget(workers: 60, maxConnections: 0))
        let text = SessionRefusal.sentence(refused("sorry, too many clients already"), share: automatic, role: "adp")
        XCTAssertTrue(text.contains("120 sessions for its 60 workers (database.max_connections automatic), this worker 2"), text)
    }
}
