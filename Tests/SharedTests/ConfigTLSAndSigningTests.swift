import Foundation
import XCTest

@testable import Shared

/// The production keys: TLS files, keepalives, signing secrets (with _FILE and credentials), and the
/// rule that credentials do not travel over plain http to another host.
final class ConfigTLSAndSigningTests: XCTestCase {
    private var directory: URL!
    private let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"

    override func setUpWithError() throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("config-tls-tests-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(at: directory)
    }

    private func file(_ name: String, _ text: String = "x") throws -> String {
        let url = directory.appendingPathComponent(name)
        try text.write(to: url, atomically: true, encoding: .utf8)
        return url.path
    }

    private func valid() -> PublisherConfig {
        var config = PublisherConfig()
        config.service.watchedTables = [WatchedTable(name: "hotspots", changeColumns: ["updated_at"],
                                                     atomicDataQuery: "SELECT 1 WHERE $PRIMARY_KEY = 1", publishEndpoint: "/p")]
        return config
    }

    private func problem(_ change: (inout PublisherConfig) -> Void, file: StaticString = #filePath, line: UInt = #line) -> ConfigError? {
        var config = valid()
        change(&config)
        do {
            try ConfigLoader.validate(config)
            return nil
        } catch {
            return error
        }
    }

    func testTOML_readsEveryNewKey() throws {
        let ca = try file("ca.pem")
        var config = valid()
        var warnings: [String] = []
        try ConfigLoader.apply(toml: """
            [database]
            sslmode = "verify-full"
            sslrootcert = "\(ca)"
            sslcert = "\(ca)"
            sslkey = "\(ca)"
            keepalives_idle_seconds = 7
            keepalives_interval_seconds = 2
            keepalives_count = 4
            tcp_user_timeout_seconds = 20
            [ingestor]
            base_url = "https://ingest.example"
            ca_file = "\(ca)"
            client_cert = "\(ca)"
            client_key = "\(ca)"
            signing_secret = "\(secret)"
            previous_signing_secret = "\(secret)"
            allow_insecure_http = true
            """, file: "t.toml", to: &config, warnings: &warnings)
        XCTAssertEqual(config.database.sslrootcert, ca)
        XCTAssertEqual([config.database.keepalivesIdleSeconds, config.database.keepalivesIntervalSeconds,
                        config.database.keepalivesCount, config.database.tcpUserTimeoutSeconds], [7, 2, 4, 20])
        XCTAssertEqual(config.ingestor.caFile, ca)
        XCTAssertEqual(config.ingestor.signingSecret, secret)
        XCTAssertTrue(config.ingestor.allowInsecureHTTP)
        XCTAssertNoThrow(try ConfigLoader.validate(config))
    }

    func testDefaults_detectAVanishedPeerWithinAboutThirtySeconds() {
        let database = DatabaseConfig()
        XCTAssertEqual(database.keepalivesIdleSeconds + database.keepalivesIntervalSeconds * database.keepalivesCount, 25)
        XCTAssertEqual(database.tcpUserTimeoutSeconds, 30)
    }

    func testBoolean_wrongTypeInTOML_andEnvironmentSpellings() throws {
        var config = valid()
        var warnings: [String] = []
        XCTAssertThrowsError(try ConfigLoader.apply(toml: "[ingestor]\nallow_insecure_http = \"yes\"", file: "t.toml", to: &config, warnings: &warnings)) {
            XCTAssertTrue("\($0)".contains("expected a boolean"), "\($0)")
        }
        for (text, value) in [("true", true), ("0", false), ("YES", true), ("off", false)] {
            try ConfigLoader.applyEnvironment(["ATOMIC_DATA_PUBLISHER_INGESTOR_ALLOW_INSECURE_HTTP": text], to: &config, warnings: &warnings)
            XCTAssertEqual(config.ingestor.allowInsecureHTTP, value, text)
        }
        XCTAssertThrowsError(try ConfigLoader.applyEnvironment(["ATOMIC_DATA_PUBLISHER_INGESTOR_ALLOW_INSECURE_HTTP": "maybe"], to: &config, warnings: &warnings))
    }

    func testSigningSecret_fromFileAndCredential_likeTheAuthToken() throws {
        let secretFile = try file("secret", secret + "\n")
        var config = valid()
        var warnings: [String] = []
        try ConfigLoader.applyEnvironment(["ATOMIC_DATA_PUBLISHER_INGESTOR_SIGNING_SECRET_FILE": secretFile], to: &config, warnings: &warnings)
        XCTAssertEqual(config.ingestor.signingSecret, secret)

        let credentials = directory.appendingPathComponent("credentials")
        try FileManager.default.createDirectory(at: credentials, withIntermediateDirectories: true)
        try (secret + "\n").write(to: credentials.appendingPathComponent("ingestor_signing_secret"), atomically: true, encoding: .utf8)
        var fromCredential = valid()
        try ConfigLoader.applyEnvironment(["CREDENTIALS_DIRECTORY": credentials.path], to: &fromCredential, warnings: &warnings)
        XCTAssertEqual(fromCredential.ingestor.signingSecret, secret)
        XCTAssertEqual(fromCredential.redacted().ingestor.signingSecret, PublisherConfig.redactedPlaceholder)
    }

    func testCredentialsOverPlainHTTP_toAnotherHost_areRefused_unlessAllowed() {
        let token = problem {
            $0.ingestor.baseURL = "http://ingest.example:8080"
            $0.ingestor.authToken = "tok"
        }
        XCTAssertEqual(token?.key, "ingestor.auth_token")
        XCTAssertTrue(token?.problem.contains("allow_insecure_http") ?? false, "\(String(describing: token))")
        XCTAssertFalse("\(String(describing: token))".contains("tok\""), "the token is not echoed")

        XCTAssertEqual(problem {
            $0.ingestor.baseURL = "http://10.0.0.5"
            $0.ingestor.signingSecret = secret
        }?.key, "ingestor.signing_secret")

        for url in ["http://localhost:8080", "http://127.0.0.1:9", "http://[::1]:80/x", "https://ingest.example", "http://127.0.0.2"] {
            XCTAssertNil(problem {
                $0.ingestor.baseURL = url
                $0.ingestor.authToken = "tok"
            }, url)
        }
        XCTAssertNil(problem {
            $0.ingestor.baseURL = "http://ingest.example"
            $0.ingestor.authToken = "tok"
            $0.ingestor.allowInsecureHTTP = true
        })
        XCTAssertNil(problem { $0.ingestor.baseURL = "http://ingest.example" }, "no credentials, nothing to protect")
        XCTAssertFalse(ConfigLoader.isLoopbackHost(ofURL: "http://127.0.0.1.evil.example"))
        XCTAssertFalse(ConfigLoader.isLoopbackHost(ofURL: "http://localhost@evil.example"))
    }

    func testTLSFiles_mustBeReadable_andAKeyNeedsItsCertificate() throws {
        XCTAssertEqual(problem { $0.database.sslrootcert = "/nonexistent/ca.pem" }?.key, "database.sslrootcert")
        XCTAssertEqual(problem { $0.ingestor.caFile = directory.path }?.key, "ingestor.ca_file", "a directory is not a file")
        let key = try file("key.pem")
        XCTAssertEqual(problem { $0.ingestor.clientKey = key }?.key, "ingestor.client_key")
        XCTAssertEqual(problem { $0.database.sslkey = key }?.key, "database.sslkey")
    }

    func testSigningSecrets_mustBeWellFormed_andThePreviousOneNeedsACurrentOne() {
        let bad = problem { $0.ingestor.signingSecret = "plain-text-secret" }
        XCTAssertEqual(bad?.key, "ingestor.signing_secret")
        XCTAssertFalse("\(String(describing: bad))".contains("plain-text-secret"), "not echoed")
        XCTAssertEqual(problem { $0.ingestor.previousSigningSecret = secret }?.key, "ingestor.previous_signing_secret")
    }

    func testKeepalives_mustBePositive() {
        XCTAssertEqual(problem { $0.database.keepalivesIdleSeconds = 0 }?.key, "database.keepalives_idle_seconds")
        XCTAssertEqual(problem { $0.database.keepalivesCount = 0 }?.key, "database.keepalives_count")
        XCTAssertEqual(problem { $0.database.tcpUserTimeoutSeconds = -1 }?.key, "database.tcp_user_timeout_seconds")
        XCTAssertNil(problem { $0.database.tcpUserTimeoutSeconds = 0 }, "0: the kernel's default")
    }

    func testSSLModes_everyLibpqModeIsAccepted_othersAreNot() {
        for mode in ["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] {
            XCTAssertNil(problem { $0.database.sslmode = mode }, mode)
        }
        XCTAssertEqual(problem { $0.database.sslmode = "verify_full" }?.key, "database.sslmode")
    }

    func testCompression_noneOrGzip_anythingElseNamesTheKeyAndTheValues() {
        XCTAssertEqual(PublisherConfig().ingestor.compression, "none", "off by default")
        XCTAssertNil(problem { $0.ingestor.compression = "gzip" })
        XCTAssertNil(problem { $0.ingestor.compression = "none" })
        for wrong in ["GZIP", "br", ""] {
            let error = problem { $0.ingestor.compression = wrong }
            XCTAssertEqual(error?.key, "ingestor.compression", wrong)
            XCTAssertTrue(error?.problem.contains("none, gzip") ?? false, "\(String(describing: error))")
        }
    }
}
