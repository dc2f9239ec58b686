import XCTest
@testable import PublisherCLI
@testable import Shared

/// check-config's session sum: what the server has free for the role against the instance's budget.
final class ServerSessionsTests: XCTestCase {
    private func server(limit: Int = -1, inUse: Int = 0, roleInUse: Int = 0, superuser: Bool = false) -> ServerSessions {
        ServerSessions(role: "adp", maxConnections: 100, reserved: 3, superuser: superuser, roleLimit: limit, inUse: inUse, roleInUse: roleInUse)
    }

    func testSixtyTablesByDefault_onAServerOf100_warnsWithEveryFigure() {
        let text = server(inUse: 10).warning(SessionBudget(workers: 60, maxConnections: 0))
        XCTAssertEqual(text, "this instance may open up to 120 PostgreSQL sessions (60 workers, database.max_connections automatic (2 per worker)) but only 87 are free for role adp (server max_connections 100, 3 reserved for superusers, 10 in use by other sessions): set database.max_connections to at most 87 (at least 60, one per worker), raise the role's CONNECTION LIMIT or the server's max_connections, or end other sessions")
    }

    func testABudgetThatFits_isNotWarnedAbout() {
        XCTAssertNil(server(inUse: 10).warning(SessionBudget(workers: 60, maxConnections: 87)))
        XCTAssertNil(server(limit: 40, roleInUse: 5).warning(SessionBudget(workers: 30, maxConnections: 35)))
    }

    func testTheRolesConnectionLimit_counts() {
        let text = server(limit: 40, roleInUse: 10).warning(SessionBudget(workers: 20, maxConnections: 0)) ?? ""
        XCTAssertTrue(text.contains("but only 30 are free for role adp"), text)
        XCTAssertTrue(text.contains("; role CONNECTION LIMIT 40 with 10 in use)"), text)
    }

    func testASuperuser_ignoresTheReservedSlotsAndItsRoleLimit() {
        XCTAssertEqual(server(limit: 1, inUse: 10, superuser: true).free, 90)
    }

    func testFewerFreeThanWorkers_saysSomeWorkersWouldWait() {
        let text = server(inUse: 90).warning(SessionBudget(workers: 10, maxConnections: 10)) ?? ""
        XCTAssertTrue(text.contains("but only 7 are free"), text)
        XCTAssertTrue(text.contains("not even one session per worker fits, so 3 of the 10 workers would wait for a session"), text)
    }
}
