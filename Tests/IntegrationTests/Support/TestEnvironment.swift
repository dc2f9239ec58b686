import Foundation
import Shared

/// Where the real things the integration tests talk to are: the repository, the built binaries,
/// the ingestor script and the PostgreSQL server. Nothing here is optional: a missing piece is a
/// test failure with a message that says how to provide it, never a skip.
enum TestEnvironment {
    struct Missing: Error, CustomStringConvertible {
        let description: String
    }

    /// The repository root, from this file's path: <root>/Tests/IntegrationTests/Support/TestEnvironment.swift.
    static let repositoryRoot: URL = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent()  // Support
        .deletingLastPathComponent()  // IntegrationTests
        .deletingLastPathComponent()  // Tests
        .deletingLastPathComponent()

    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    /// The PostgreSQL server the tests create their databases on, from ADP_TEST_PGHOST,
    /// ADP_TEST_PGPORT, ADP_TEST_PGUSER (and ADP_TEST_PGPASSWORD if the server wants one).
    /// `database_name` is the maintenance database used to create and drop test databases.
    static func postgresServer() throws -> DatabaseConfig {
        let env = environment
        let required = ["ADP_TEST_PGHOST", "ADP_TEST_PGPORT", "ADP_TEST_PGUSER"]
        let missing = required.filter { (env[$0] ?? "").isEmpty }
        guard missing.isEmpty else {
            throw Missing(description: """
                the integration tests need a PostgreSQL server: \(missing.joined(separator: ", ")) \
                \(missing.count == 1 ? "is" : "are") not set. Export ADP_TEST_PGHOST, ADP_TEST_PGPORT and \
                ADP_TEST_PGUSER (e.g. 127.0.0.1, 55432, postgres), or run the tests through dev/test, which \
                starts a throwaway server (dev/lib/common.sh adp_pg_start)
                """)
        }
        guard let port = Int(env["ADP_TEST_PGPORT"]!) else {
            throw Missing(description: "ADP_TEST_PGPORT is not a port number: '\(env["ADP_TEST_PGPORT"]!)'")
        }
        var config = DatabaseConfig()
        config.host = env["ADP_TEST_PGHOST"]!
        config.port = port
        config.username = env["ADP_TEST_PGUSER"]!
        config.password = env["ADP_TEST_PGPASSWORD"] ?? ""
        config.databaseName = "postgres"
        config.sslmode = "disable"
        config.connectTimeoutSeconds = 5
        config.statementTimeoutSeconds = 60
        return config
    }

    /// A product executable built next to the test bundle (`swift build` puts executables and the
    /// `.xctest` in the same directory), or in ADP_BIN_DIR when set.
    static func binary(named name: String) throws -> URL {
        var directories: [URL] = []
        if let dir = environment["ADP_BIN_DIR"], !dir.isEmpty {
            directories.append(URL(fileURLWithPath: dir))
        } else {
            // On Linux the test bundle is itself an executable: arguments[0] is
            // <scratch>/<triple>/debug/<package>PackageTests.xctest, next to the products, and
            // Bundle.main.bundleURL is that directory. (On macOS the bundle is a directory and
            // bundleURL's parent holds the products.)
            if let first = CommandLine.arguments.first {
                directories.append(URL(fileURLWithPath: first).resolvingSymlinksInPath().deletingLastPathComponent())
            }
            directories.append(Bundle.main.bundleURL)
            directories.append(Bundle.main.bundleURL.deletingLastPathComponent())
        }
        for directory in directories {
            let candidate = directory.appendingPathComponent(name)
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw Missing(description: """
            cannot find the executable '\(name)'; looked in \(directories.map(\.path).joined(separator: ", ")). \
            Build it (`swift build`, which `swift test` does too) or set ADP_BIN_DIR to the directory that holds it
            """)
    }

    static var ingestorScript: URL { repositoryRoot.appendingPathComponent("dev/ingestor.py") }

    /// python3 from PATH, to run dev/ingestor.py.
    static func python() throws -> URL {
        let path = environment["PATH"] ?? "/usr/bin:/bin"
        for directory in path.split(separator: ":") {
            let candidate = URL(fileURLWithPath: String(directory)).appendingPathComponent("python3")
            if FileManager.default.isExecutableFile(atPath: candidate.path) { return candidate }
        }
        throw Missing(description: "python3 is not on PATH (\(path)); the tests run dev/ingestor.py with it")
    }

    /// A file under the repository, as text (dev/demo-schema.sql, config/default.toml, ...).
    static func repositoryFile(_ relativePath: String) throws -> String {
        try String(contentsOf: repositoryRoot.appendingPathComponent(relativePath), encoding: .utf8)
    }

    /// A file from Tests/IntegrationTests/Fixtures (a resource of the test target), as text.
    static func fixture(_ name: String) throws -> String {
        guard let directory = Bundle.module.url(forResource: "Fixtures", withExtension: nil) else {
            throw Missing(description: "the Fixtures resource folder is missing from the test bundle")
        }
        return try String(contentsOf: directory.appendingPathComponent(name), encoding: .utf8)
    }
}
