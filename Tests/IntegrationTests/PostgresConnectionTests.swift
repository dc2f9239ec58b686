import Foundation
import Shared
import XCTest

/// Shared.PostgresConnection against a real server: dead-peer detection settings reach both ends
/// and do their job on a connection whose peer vanishes (packets dropped, no FIN, no RST), and
/// server NOTICEs reach the notice handler.
final class PostgresConnectionTests: IntegrationTestCase {
    private func connect(_ config: DatabaseConfig) throws -> PostgresConnection {
        try PostgresConnection.connect(ConnectionParameters(config, applicationName: "adp-connection-test"))
    }

    private func show(_ connection: PostgresConnection, _ setting: String) throws -> String? {
        try connection.execute("SHOW \(setting)").rows.first?.first ?? nil
    }

    func testDefaults_setTheServersKeepalivesAndUserTimeoutToo() throws {
        var config = server!
        config.host = "127.0.0.1"  // over TCP: on a Unix socket the server ignores these settings
        let connection = try connect(config)
        defer { connection.close() }
        XCTAssertEqual(try show(connection, "tcp_keepalives_idle"), "10")
        XCTAssertEqual(try show(connection, "tcp_keepalives_interval"), "5")
        XCTAssertEqual(try show(connection, "tcp_keepalives_count"), "3")
        XCTAssertEqual(try show(connection, "tcp_user_timeout"), "30000", "milliseconds")
    }

    /// Results are kept flat (one buffer of bytes, one of value ends): NULL, the empty string,
    /// multi-byte text and rows after a NULL all read back as sent.
    func testResultValues_nullEmptyAndMultiByte_readBackExactly() throws {
        let connection = try connect(server)
        defer { connection.close() }
        let r = try connection.execute("""
            SELECT g::text, CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('é', g) END, '', NULL::text
            FROM generate_series(0, 4) g ORDER BY g
            """)
        XCTAssertEqual(r.rows.count, 5)
        XCTAssertEqual(r.rows, [["0", nil, "", nil], ["1", "é", "", nil], ["2", "éé", "", nil], ["3", nil, "", nil], ["4", "éééé", "", nil]])
        XCTAssertEqual(r[4, 1], "éééé")
        XCTAssertNil(r[3, 1])
        XCTAssertEqual(try connection.execute("SELECT 1 WHERE false").rows.count, 0)
        XCTAssertEqual(try connection.execute("SELECT").rows.count, 1, "a row without columns")
    }

    /// Rows handed over as libpq holds them (the tracking rows' reads), whole or in single-row
    /// mode, are exactly the rows of `execute`; an error after some rows were sent is the
    /// statement's error, and the connection stays usable.
    func testForEachRow_wholeOrSingleRow_givesTheRowsOfExecute_andAnErrorMidStreamFailsIt() throws {
        let connection = try connect(server)
        defer { connection.close() }
        let sql = """
            SELECT g::text, CASE WHEN g % 3 = 0 THEN NULL ELSE repeat('é', g % 7) END, '', (g * 1000000000000)::text, (-g)::text
            FROM generate_series(1, $1::int) AS s(g) ORDER BY s.g
            """
        let whole = try connection.execute(sql, ["5000"])
        for singleRow in [false, true] {
            var rows: [[String?]] = []
            var numbers: [Int64?] = []
            let count = try connection.forEachRow(sql, ["5000"], singleRow: singleRow) { row in
                rows.append((0..<row.columnCount).map { row.string($0) })
                numbers.append(row.int64(3))
                XCTAssertEqual(row.int64(4), -Int64(rows.count))
                XCTAssertNil(row.int64(1), "not a number")
                XCTAssertEqual(row.isNull(1), rows.count % 3 == 0)
            }
            XCTAssertEqual(count, 5000)
            XCTAssertEqual(QueryRows(rows), whole.rows, "singleRow \(singleRow)")
            XCTAssertEqual(numbers.last, 5_000_000_000_000_000)
            XCTAssertEqual(try connection.forEachRow(sql, ["0"], singleRow: singleRow) { _ in XCTFail("no row") }, 0)

            var before = 0
            XCTAssertThrowsError(try connection.forEachRow("SELECT g, 1 / (g - 3000) FROM generate_series(1, 5000) g", singleRow: singleRow) { _ in before += 1 }) { error in
                XCTAssertEqual((error as? PostgresError)?.sqlState, "22012", "\(error)")
            }
            XCTAssertLessThan(before, 3000)
            XCTAssertEqual(try connection.execute("SELECT 42")[0, 0], "42", "usable after the error")
        }
    }

    func testServerNotices_reachTheNoticeHandler() throws {
        let connection = try connect(server)
        defer { connection.close() }
        let notices = LockedBox<[String]>([])
        connection.noticeHandler = { notices.value.append($0) }
        try connection.execute("DO $$ BEGIN RAISE NOTICE 'hello %', 42; RAISE WARNING 'careful'; END $$")
        XCTAssertEqual(notices.value, ["NOTICE:  hello 42", "WARNING:  careful"])
    }

    /// A peer that vanishes (its packets dropped on loopback by iptables, as when a host dies or a
    /// NAT forgets the flow): a query on the held connection fails within tcp_user_timeout instead
    /// of blocking for the kernel's ~15 minutes of retransmissions. Uses its own server, so no
    /// other test's traffic is touched.
    func testAVanishedPeer_failsTheNextQueryWithinTheUserTimeout() throws {
        let certificates = try TestCertificates.make(in: workDirectory.appendingPathComponent("pki"))
        let own = try TLSPostgresServer(directory: workDirectory.appendingPathComponent("own-pg"), certificates: certificates)
        defer { own.stop() }
        var config = own.config(host: "127.0.0.1")
        config.sslmode = "require"
        config.keepalivesIdleSeconds = 1
        config.keepalivesIntervalSeconds = 1
        config.keepalivesCount = 2
        config.tcpUserTimeoutSeconds = 3
        let connection = try connect(config)
        defer { connection.close() }
        XCTAssertEqual(try show(connection, "tcp_user_timeout"), "3000", "milliseconds")

        let firewall = try LoopbackFirewall(port: own.port, logDirectory: workDirectory)
        defer { firewall.remove() }
        let started = Date()
        XCTAssertThrowsError(try connection.execute("SELECT 1")) { error in
            XCTAssertTrue((error as? PostgresError)?.isConnectionLost ?? false, "\(error)")
        }
        let elapsed = Date().timeIntervalSince(started)
        XCTAssertLessThan(elapsed, 15, "noticed after \(elapsed) s")
        XCTAssertGreaterThan(elapsed, 2, "it is the user timeout that ended the wait (\(elapsed) s)")
    }
}

/// iptables rules that drop every packet to and from one loopback port, removed by `remove()`.
/// Tagged with a comment naming the port so a leftover is recognisable.
final class LoopbackFirewall {
    private let rules: [[String]]
    private let logDirectory: URL
    private var installed: [[String]] = []

    init(port: Int, logDirectory: URL) throws {
        self.logDirectory = logDirectory
        let tag = ["-m", "comment", "--comment", "adp-test-drop-\(port)"]
        rules = [
            ["INPUT", "-i", "lo", "-p", "tcp", "--dport", String(port), "-j", "DROP"] + tag,
            ["INPUT", "-i", "lo", "-p", "tcp", "--sport", String(port), "-j", "DROP"] + tag,
        ]
        do {
            for rule in rules {
                try runTool("/usr/sbin/iptables", ["-w", "5", "-I"] + rule, logDirectory: logDirectory, timeout: 15)
                installed.append(rule)
            }
        } catch {
            remove()
            throw UnexpectedResult(description: "this test drops packets with iptables (root, NET_ADMIN): \(error)")
        }
    }

    deinit { remove() }

    func remove() {
        for rule in installed.reversed() {
            try? runTool("/usr/sbin/iptables", ["-w", "5", "-D"] + rule, logDirectory: logDirectory, timeout: 15)
        }
        installed.removeAll()
    }
}
