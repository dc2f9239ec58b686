import Foundation
import Shared
import XCTest

/// TLS to PostgreSQL against a real server started here with `ssl = on` and a
/// certificate for "localhost" from a throwaway CA: verify-full needs the right CA and host name,
/// a failure is one sentence and a configuration failure (exit 78), require works without a CA,
/// client certificates work, and a rejected login is recognised by its SQLSTATE.
final class PostgresTLSTests: IntegrationTestCase {
    private var certificates: TestCertificates!
    private var tlsServer: TLSPostgresServer!

    override func setUpWithError() throws {
        try super.setUpWithError()
        certificates = try TestCertificates.make(in: workDirectory.appendingPathComponent("pki"))
        tlsServer = try TLSPostgresServer(directory: workDirectory.appendingPathComponent("tls-pg"), certificates: certificates)
    }

    override func tearDownWithError() throws {
        tlsServer?.stop()
        try super.tearDownWithError()
    }

    private func connect(_ change: (inout DatabaseConfig) -> Void) throws(PostgresError) -> PostgresConnection {
        var config = tlsServer.config()
        change(&config)
        return try PostgresConnection.connect(ConnectionParameters(config, applicationName: "adp-tls-test"))
    }

    private func connectionError(_ change: (inout DatabaseConfig) -> Void, file: StaticString = #filePath, line: UInt = #line) -> PostgresError? {
        do {
            let connection = try connect(change)
            connection.close()
            XCTFail("the connection should have failed", file: file, line: line)
            return nil
        } catch {
            return error
        }
    }

    private func assertEncrypted(_ connection: PostgresConnection, file: StaticString = #filePath, line: UInt = #line) throws {
        let result = try connection.execute("SELECT ssl::text FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        XCTAssertEqual(result.rows.first?.first ?? nil, "true", "the session is encrypted", file: file, line: line)
    }

    func testVerifyFull_withTheRightCAAndHostName_connectsEncrypted() throws {
        let connection = try connect {
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.caCertificate
        }
        defer { connection.close() }
        try assertEncrypted(connection)
    }

    func testVerifyFull_withAnotherHostName_failsWithOneSentence_asAConfigurationFailure() throws {
        let error = try XCTUnwrap(connectionError {
            $0.host = "127.0.0.1"  // the certificate names localhost only
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.caCertificate
        })
        XCTAssertEqual(error.kind, .tls, "\(error)")
        XCTAssertTrue(error.isConfigurationFailure, "\(error)")
        XCTAssertTrue(error.description.contains("not issued for the host name in database.host"), "\(error)")
        XCTAssertTrue(error.description.contains("does not match host name \"127.0.0.1\""), "libpq's words are kept: \(error)")
        XCTAssertFalse(error.description.contains("\n"), "one line: \(error)")
        XCTAssertFalse(error.description.contains(TLSPostgresServer.password), "no password: \(error)")
    }

    func testVerifyFull_withAnotherCA_failsWithOneSentence_asAConfigurationFailure() throws {
        let error = try XCTUnwrap(connectionError {
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.otherCACertificate
        })
        XCTAssertEqual(error.kind, .tls, "\(error)")
        XCTAssertTrue(error.isConfigurationFailure, "\(error)")
        XCTAssertTrue(error.description.contains("is not signed by a CA in database.sslrootcert (\(certificates.otherCACertificate))"), "\(error)")
        XCTAssertFalse(error.description.contains("\n"), "one line: \(error)")
    }

    func testVerifyCA_ignoresTheHostName_butNotTheCA() throws {
        let connection = try connect {
            $0.host = "127.0.0.1"
            $0.sslmode = "verify-ca"
            $0.sslrootcert = certificates.caCertificate
        }
        connection.close()
        let error = try XCTUnwrap(connectionError {
            $0.sslmode = "verify-ca"
            $0.sslrootcert = certificates.otherCACertificate
        })
        XCTAssertEqual(error.kind, .tls, "\(error)")
    }

    func testRequire_withoutACA_connectsEncrypted() throws {
        let connection = try connect {
            $0.host = "127.0.0.1"
            $0.sslmode = "require"
        }
        defer { connection.close() }
        try assertEncrypted(connection)
    }

    func testDisable_isRejectedByAServerThatOnlyAcceptsTLS_andThatIsARejectedLogin() throws {
        let error = try XCTUnwrap(connectionError { $0.sslmode = "disable" })
        XCTAssertEqual(error.sqlState, "28000", "no pg_hba.conf entry: \(error)")
        XCTAssertTrue(error.isRejectedLogin, "\(error)")
    }

    func testWrongPassword_isRecognisedByItsSQLState() throws {
        let error = try XCTUnwrap(connectionError {
            $0.sslmode = "require"
            $0.password = "not-the-password"
        })
        XCTAssertEqual(error.sqlState, "28P01", "\(error)")
        XCTAssertTrue(error.isRejectedLogin && error.isConfigurationFailure, "\(error)")
        XCTAssertTrue(error.description.contains("password authentication failed"), "\(error)")
        XCTAssertFalse(error.description.contains("LOCATION"), "the verbose decoration is dropped: \(error)")
        XCTAssertFalse(error.description.contains("not-the-password"), "\(error)")
    }

    func testClientCertificate_signedByTheCA_logsIn_andOneFromAnotherCAIsRefused() throws {
        let connection = try connect {
            $0.username = TLSPostgresServer.certRole
            $0.password = ""
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.caCertificate
            $0.sslcert = certificates.clientCertificate
            $0.sslkey = certificates.clientKey
        }
        XCTAssertEqual(try connection.execute("SELECT current_user").rows.first?.first ?? nil, TLSPostgresServer.certRole)
        connection.close()

        let stranger = try XCTUnwrap(connectionError {
            $0.username = TLSPostgresServer.certRole
            $0.password = ""
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.caCertificate
            $0.sslcert = certificates.strangerCertificate
            $0.sslkey = certificates.strangerKey
        })
        XCTAssertTrue(stranger.isConfigurationFailure, "a certificate from another CA is refused for good: \(stranger)")

        let without = try XCTUnwrap(connectionError {
            $0.username = TLSPostgresServer.certRole
            $0.password = ""
            $0.sslmode = "verify-full"
            $0.sslrootcert = certificates.caCertificate
        })
        XCTAssertTrue(without.isConfigurationFailure, "no certificate where one is required: \(without)")
    }

    /// The worker (and `check-config`) treat a TLS verification failure like a rejected login:
    /// exit 78 with a fatal message, no retrying forever.
    func testWorkerAndCheckConfig_exit78OnAHostNameMismatch() throws {
        let ingestor = try startIngestor()
        var database = tlsServer.config(host: "127.0.0.1")
        database.sslmode = "verify-full"
        database.sslrootcert = certificates.caCertificate
        var config = ConfigFile.forTests(database: database, ingestorURL: ingestor.baseURL, tables: [TestTables.devices])
        config.service.healthCheckAddress = "127.0.0.1"
        let configURL = try writeConfig(config)

        let worker = try startWorkerWithoutWaiting(table: "devices", config: configURL)
        worker.expectedErrorLogs = ["worker cannot run"]
        XCTAssertEqual(worker.process.waitForExit(timeout: Wait.defaultTimeout), .exited(78), worker.diagnostics())
        let messages = worker.messages()
        XCTAssertEqual(messages.map { $0["type"] }, ["fatal"], "\(messages)")
        XCTAssertTrue((messages.first?["error"]?.string ?? "").contains("TLS verification failed"), "\(messages)")

        let check = try ManagedProcess(name: "check-config", executable: try TestEnvironment.binary(named: "atomic-data-publisher"),
                                       arguments: ["--config", configURL.path, "check-config"],
                                       workingDirectory: workDirectory, logDirectory: workDirectory)
        XCTAssertEqual(check.waitForExit(timeout: 30), .exited(78), check.stderrText())
        let output = check.stderrText()
        XCTAssertTrue(output.contains("TLS verification failed: the certificate of PostgreSQL at 127.0.0.1:\(tlsServer.port)/postgres is not issued for the host name"), output)
        XCTAssertEqual(output.split(separator: "\n").filter { $0.contains("TLS") }.count, 1, "one sentence: \(output)")
    }
}
