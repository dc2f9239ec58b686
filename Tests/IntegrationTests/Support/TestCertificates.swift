import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A throwaway PKI made with the openssl command line for one test: a CA, a second CA that
/// nothing trusts, a server certificate for "localhost" only (DNS name, no IP address, so
/// connecting to 127.0.0.1 is a host-name mismatch), and client certificates signed by each CA.
/// Keys are 0600 (libpq refuses a private key with group or world access).
struct TestCertificates {
    let directory: URL
    var caCertificate: String { path("ca.crt") }
    var otherCACertificate: String { path("other-ca.crt") }
    var serverCertificate: String { path("server.crt") }
    var serverKey: String { path("server.key") }
    /// CN is `clientName`, signed by the CA.
    var clientCertificate: String { path("client.crt") }
    var clientKey: String { path("client.key") }
    /// The same CN, signed by the other CA.
    var strangerCertificate: String { path("stranger.crt") }
    var strangerKey: String { path("stranger.key") }

    struct OpenSSLFailed: Error, CustomStringConvertible { let description: String }

    /// Make everything in `directory` (created). `clientName`: the client certificates' CN
    /// (PostgreSQL's `cert` authentication maps it to the role of that name).
    static func make(in directory: URL, clientName: String = "tls_client") throws -> TestCertificates {
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let certificates = TestCertificates(directory: directory)
        try certificates.makeCA("ca", subject: "/CN=adp test CA")
        try certificates.makeCA("other-ca", subject: "/CN=adp untrusted CA")
        try certificates.issue("server", by: "ca", subject: "/CN=localhost", extensions: "subjectAltName=DNS:localhost\nextendedKeyUsage=serverAuth")
        try certificates.issue("client", by: "ca", subject: "/CN=\(clientName)", extensions: "extendedKeyUsage=clientAuth")
        try certificates.issue("stranger", by: "other-ca", subject: "/CN=\(clientName)", extensions: "extendedKeyUsage=clientAuth")
        return certificates
    }

    func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    private func makeCA(_ name: String, subject: String) throws {
        try openssl(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", path("\(name).key"), "-out", path("\(name).crt"), "-days", "2", "-subj", subject,
                     "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"])
        try restrict(path("\(name).key"))
    }

    private func issue(_ name: String, by ca: String, subject: String, extensions: String) throws {
        try openssl(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                     "-keyout", path("\(name).key"), "-out", path("\(name).csr"), "-subj", subject])
        try restrict(path("\(name).key"))
        let extensionFile = path("\(name).ext")
        try (extensions + "\n").write(toFile: extensionFile, atomically: true, encoding: .utf8)
        try openssl(["x509", "-req", "-in", path("\(name).csr"), "-CA", path("\(ca).crt"), "-CAkey", path("\(ca).key"),
                     "-CAcreateserial", "-out", path("\(name).crt"), "-days", "2", "-extfile", extensionFile])
    }

    private func restrict(_ file: String) throws {
        try FileManager.default.setAttributes([.posixPermissions: 0o600], ofItemAtPath: file)
    }

    private func openssl(_ arguments: [String]) throws {
        try runTool("/usr/bin/openssl", arguments, logDirectory: directory)
    }
}

/// Run a command line tool to completion: posix_spawn with stdout and stderr to a file under
/// `logDirectory`, then waitpid with a deadline. Not Foundation's Process (nor ManagedProcess):
/// it notices an exit only once every descendant has closed an inherited descriptor, and
/// `pg_ctl start` leaves the server running as such a descendant.
/// Runs a PostgreSQL server program (initdb, pg_ctl, pg_basebackup) as the server's owner: as
/// `postgres` through runuser when the tests run as root (the server refuses to run as root).
func runServerTool(_ tool: String, in bin: URL, _ arguments: [String], logDirectory: URL) throws {
    let path = bin.appendingPathComponent(tool).path
    if getuid() == 0 {
        try runTool("/sbin/runuser", ["-u", "postgres", "--", path] + arguments, logDirectory: logDirectory)
    } else {
        try runTool(path, arguments, logDirectory: logDirectory)
    }
}

func runTool(_ executable: String, _ arguments: [String], logDirectory: URL, timeout: TimeInterval = 60) throws {
    let name = URL(fileURLWithPath: executable).lastPathComponent
    let logPath = logDirectory.appendingPathComponent("tool-\(name)-\(UUID().uuidString.prefix(6)).log").path
    var actions = posix_spawn_file_actions_t()
    posix_spawn_file_actions_init(&actions)
    defer { posix_spawn_file_actions_destroy(&actions) }
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
    posix_spawn_file_actions_addopen(&actions, 1, logPath, O_WRONLY | O_CREAT | O_TRUNC, 0o644)
    posix_spawn_file_actions_adddup2(&actions, 1, 2)
    let argv: [UnsafeMutablePointer<CChar>?] = ([executable] + arguments).map { strdup($0) } + [nil]
    defer { argv.forEach { free($0) } }
    var pid: pid_t = 0
    let spawned = posix_spawn(&pid, executable, &actions, nil, argv, environ)
    guard spawned == 0 else {
        throw TestCertificates.OpenSSLFailed(description: "posix_spawn(\(executable)) failed: \(String(cString: strerror(spawned)))")
    }
    let deadline = Date().addingTimeInterval(timeout)
    var status: Int32 = 0
    while true {
        let reaped = waitpid(pid, &status, WNOHANG)
        if reaped == pid { break }
        if reaped < 0 && errno != EINTR {
            throw TestCertificates.OpenSSLFailed(description: "waitpid(\(executable)) failed: \(String(cString: strerror(errno)))")
        }
        if Date() >= deadline {
            kill(pid, SIGKILL)
            _ = waitpid(pid, &status, 0)
            throw TestCertificates.OpenSSLFailed(description: "\(executable) \(arguments.joined(separator: " ")) did not finish in \(Int(timeout)) s")
        }
        Thread.sleep(forTimeInterval: 0.02)
    }
    // WIFEXITED / WEXITSTATUS, which Swift does not import (macros).
    let exitedNormally = status & 0x7f == 0
    let code = (status >> 8) & 0xff
    guard exitedNormally && code == 0 else {
        let output = (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? ""
        throw TestCertificates.OpenSSLFailed(description: "\(executable) \(arguments.joined(separator: " ")) ended with wait status \(status): \(output)")
    }
}
