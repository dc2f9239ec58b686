import XCTest

@testable import Shared

/// How a failed connection attempt is classified: the SQLSTATE as libpq writes it in a verbose
/// message, the decoration removed for display, libpq's own TLS failures, and the connection
/// keywords that carry the keepalive settings to both ends.
final class PostgresConnectErrorTests: XCTestCase {
    private let rejected = """
        connection to server at "localhost" (127.0.0.1), port 5432 failed: FATAL:  28P01: password authentication failed for user "app"
        LOCATION:  auth_failed, auth.c:326

        """

    func testSQLState_isReadFromTheVerboseMessage() {
        XCTAssertEqual(PostgresConnection.sqlState(inVerboseMessage: rejected), "28P01")
        XCTAssertEqual(PostgresConnection.sqlState(inVerboseMessage: "FATAL:  3D000: database \"x\" does not exist"), "3D000")
        XCTAssertNil(PostgresConnection.sqlState(inVerboseMessage: "connection to server at \"h\", port 5432 failed: Connection refused"))
    }

    func testSQLState_lastAttemptWins() {
        let twice = "FATAL:  28000: no pg_hba.conf entry for host\nFATAL:  28P01: password authentication failed for user \"app\""
        XCTAssertEqual(PostgresConnection.sqlState(inVerboseMessage: twice), "28P01")
    }

    func testDisplayedMessage_dropsLocationAndCode() {
        XCTAssertEqual(PostgresConnection.withoutVerboseDecoration(rejected),
                       "connection to server at \"localhost\" (127.0.0.1), port 5432 failed: FATAL:  password authentication failed for user \"app\"")
    }

    func testTLSFailures_areRecognised_andTransientOnesAreNot() {
        XCTAssertEqual(PostgresTLSFailure(libpqMessage: "SSL error: certificate verify failed")?.cause, .untrustedCertificate)
        XCTAssertEqual(PostgresTLSFailure(libpqMessage: "server certificate for \"localhost\" does not match host name \"127.0.0.1\"")?.cause, .hostNameMismatch)
        XCTAssertEqual(PostgresTLSFailure(libpqMessage: "root certificate file \"/x\" does not exist")?.cause, .unusableFile)
        XCTAssertEqual(PostgresTLSFailure(libpqMessage: "server does not support SSL, but SSL was required")?.cause, .notSupportedByServer)
        XCTAssertEqual(PostgresTLSFailure(libpqMessage: "SSL error: tlsv1 alert unknown ca")?.cause, .clientCertificateRefused)
        XCTAssertNil(PostgresTLSFailure(libpqMessage: "SSL SYSCALL error: EOF detected"))
        XCTAssertNil(PostgresTLSFailure(libpqMessage: "Connection refused"))
    }

    func testConfigurationFailure_coversRejectedLoginsAndTLS_notOutages() {
        XCTAssertTrue(PostgresError(kind: .connection, sqlState: "28P01", message: "").isConfigurationFailure)
        XCTAssertTrue(PostgresError(kind: .connection, sqlState: "3D000", message: "").isConfigurationFailure)
        XCTAssertTrue(PostgresError(kind: .tls, sqlState: nil, message: "").isConfigurationFailure)
        XCTAssertFalse(PostgresError(kind: .connection, sqlState: nil, message: "").isConfigurationFailure)
        XCTAssertFalse(PostgresError(kind: .connection, sqlState: "57P03", message: "").isConfigurationFailure)
    }

    func testKeywords_carryKeepalivesToLibpqAndTheServer_andTLSFilesOnlyWhenSet() {
        var config = DatabaseConfig()
        config.password = "pw"
        let plain = Dictionary(uniqueKeysWithValues: ConnectionParameters(config, applicationName: "t").keywords)
        XCTAssertEqual(plain["keepalives"], "1")
        XCTAssertEqual(plain["keepalives_idle"], "10")
        XCTAssertEqual(plain["keepalives_interval"], "5")
        XCTAssertEqual(plain["keepalives_count"], "3")
        XCTAssertEqual(plain["tcp_user_timeout"], "30000")
        XCTAssertEqual(plain["sslmode"], "prefer")
        XCTAssertNil(plain["sslrootcert"])
        XCTAssertNil(plain["sslcert"])
        let options = plain["options"] ?? ""
        for setting in ["tcp_keepalives_idle=10", "tcp_keepalives_interval=5", "tcp_keepalives_count=3", "tcp_user_timeout=30000"] {
            XCTAssertTrue(options.contains("-c \(setting)"), options)
        }
        config.sslmode = "verify-full"
        config.sslrootcert = "/etc/ca.pem"
        config.sslcert = "/etc/c.pem"
        config.sslkey = "/etc/k.pem"
        let tls = Dictionary(uniqueKeysWithValues: ConnectionParameters(config, applicationName: "t").keywords)
        XCTAssertEqual([tls["sslmode"], tls["sslrootcert"], tls["sslcert"], tls["sslkey"]], ["verify-full", "/etc/ca.pem", "/etc/c.pem", "/etc/k.pem"])
    }

    func testKeywords_oneHost_leaveTargetSessionAttrsToLibpq() {
        var config = DatabaseConfig()
        config.host = "db1"
        let keywords = Dictionary(uniqueKeysWithValues: ConnectionParameters(config, applicationName: "t").keywords)
        XCTAssertEqual(keywords["host"], "db1")
        XCTAssertEqual(keywords["port"], "5432")
        XCTAssertNil(keywords["target_session_attrs"])
        XCTAssertEqual(ConnectionParameters(config, applicationName: "t").safeDescription, "db1:5432/helium")
    }

    func testKeywords_severalHosts_defaultToReadWrite_andCarryEveryPort() {
        var config = DatabaseConfig()
        config.host = "db1, db2"
        config.ports = [5432, 5433]
        config.password = "pw"
        let parameters = ConnectionParameters(config, applicationName: "t")
        let keywords = Dictionary(uniqueKeysWithValues: parameters.keywords)
        XCTAssertEqual(keywords["host"], "db1,db2", "blanks around a name are not libpq's to see")
        XCTAssertEqual(keywords["port"], "5432,5433")
        XCTAssertEqual(keywords["target_session_attrs"], "read-write")
        XCTAssertEqual(parameters.safeDescription, "db1:5432,db2:5433/helium (target_session_attrs=read-write)")
        XCTAssertFalse(parameters.safeDescription.contains("pw"))
        config.targetSessionAttrs = "primary"
        XCTAssertEqual(Dictionary(uniqueKeysWithValues: ConnectionParameters(config, applicationName: "t").keywords)["target_session_attrs"], "primary")
        config.ports = [6432]
        XCTAssertEqual(ConnectionParameters(config, applicationName: "t").safeDescription, "db1:6432,db2:6432/helium (target_session_attrs=primary)")
    }

    func testReadOnlyTransaction_countsAsALostConnection_soTheWorkerReconnects() {
        XCTAssertTrue(PostgresError(kind: .query, sqlState: "25006", message: "cannot execute UPDATE in a read-only transaction").isConnectionLost)
        XCTAssertFalse(PostgresError(kind: .query, sqlState: "25006", message: "").isPermanent)
        XCTAssertFalse(PostgresError(kind: .query, sqlState: "25P02", message: "").isConnectionLost)
    }
}
