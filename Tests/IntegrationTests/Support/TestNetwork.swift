import Foundation
import Shared

/// Simulated hosts on one machine (for the several-hosts tests): a bridge of the test's own with 198.18.0.1/24 (the
/// range reserved for benchmark testing), and one network namespace per host, joined to the bridge
/// by a veth pair (198.18.0.<10+i>/24). Traffic stays on the bridge and the namespaces made here;
/// `cut` takes a host's link down (no FIN, no RST: a vanished host). Needs root.
final class TestNetwork {
    struct Host {
        let name: String
        let namespace: String
        let address: String
        /// The veth end on the bridge side: down means the host is cut off.
        let link: String
    }

    static let gateway = "198.18.0.1"
    let bridge: String
    private(set) var hosts: [Host] = []
    private let logs: URL
    private var created: [String] = []

    struct Failed: Error, CustomStringConvertible { let description: String }

    init(hostCount: Int, logDirectory: URL) throws {
        guard getuid() == 0 else { throw Failed(description: "simulated hosts need root (ip netns, veth, a bridge); CI runs as root") }
        logs = logDirectory
        let id = String(format: "%05d", Int.random(in: 0..<100_000))
        bridge = "adpb\(id)"
        try ip(["link", "add", bridge, "type", "bridge"])
        created.append("link:\(bridge)")
        try ip(["addr", "add", "\(Self.gateway)/24", "dev", bridge])
        try ip(["link", "set", bridge, "up"])
        for i in 1...hostCount {
            let host = Host(name: "host-\(i)", namespace: "adp\(id)h\(i)", address: "198.18.0.\(10 + i)", link: "adp\(id)r\(i)")
            let inside = "adp\(id)n\(i)"
            try ip(["netns", "add", host.namespace])
            created.append("netns:\(host.namespace)")
            try ip(["link", "add", host.link, "type", "veth", "peer", "name", inside])
            try ip(["link", "set", inside, "netns", host.namespace])
            try ip(["link", "set", host.link, "master", bridge])
            try ip(["link", "set", host.link, "up"])
            try ip(["netns", "exec", host.namespace, "ip", "addr", "add", "\(host.address)/24", "dev", inside])
            try ip(["netns", "exec", host.namespace, "ip", "link", "set", inside, "up"])
            try ip(["netns", "exec", host.namespace, "ip", "link", "set", "lo", "up"])
            hosts.append(host)
        }
    }

    /// The command prefix that runs a program on `host`.
    func wrapper(_ host: Host) -> [String] { ["/usr/sbin/ip", "netns", "exec", host.namespace] }

    func cut(_ host: Host) throws { try ip(["link", "set", host.link, "down"]) }
    func restore(_ host: Host) throws { try ip(["link", "set", host.link, "up"]) }

    /// Remove the namespaces (their veth ends go with them) and the bridge.
    func tearDown() {
        for item in created.reversed() {
            if item.hasPrefix("netns:") { try? ip(["netns", "del", String(item.dropFirst(6))]) }
            if item.hasPrefix("link:") { try? ip(["link", "del", String(item.dropFirst(5))]) }
        }
        created.removeAll()
    }

    private func ip(_ arguments: [String]) throws {
        try runTool("/usr/sbin/ip", arguments, logDirectory: logs, timeout: 20)
    }
}

/// A PostgreSQL server of the test's own, listening on the test network's gateway address (and a
/// Unix socket in its directory, for the test itself), trust authentication for that network only,
/// with the server settings as shipped (no keepalive tuning: the service asks for its own).
final class NetworkPostgresServer {
    let directory: URL
    let port: Int
    private let bin: URL
    private let logs: URL
    private var running = false

    init(directory: URL, listen address: String, settings extra: String = "") throws {
        self.directory = directory
        logs = directory.deletingLastPathComponent().appendingPathComponent("net-pg-tools")
        try FileManager.default.createDirectory(at: logs, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        bin = URL(fileURLWithPath: ProcessInfo.processInfo.environment["ADP_TEST_PGBIN"] ?? "/usr/lib/postgresql/15/bin")
        port = try SupervisorProcess.freePort()
        try runTool("/bin/chown", ["-R", "postgres:", directory.path], logDirectory: logs)
        let data = directory.appendingPathComponent("data")
        try run("initdb", ["-D", data.path, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8"])
        try "local all all trust\nhost all all 198.18.0.0/24 trust\nhost all all 127.0.0.1/32 trust\n".write(to: data.appendingPathComponent("pg_hba.conf"), atomically: true, encoding: .utf8)
        let conf = data.appendingPathComponent("postgresql.conf")
        let settings = "listen_addresses = '\(address)'\nport = \(port)\nunix_socket_directories = '\(directory.path)'\nfsync = off\nmax_connections = 50\n\(extra)\n"
        try (try String(contentsOf: conf, encoding: .utf8) + "\n" + settings).write(to: conf, atomically: true, encoding: .utf8)
        try runTool("/bin/chown", ["-R", "postgres:", directory.path], logDirectory: logs)
        try run("pg_ctl", ["-D", data.path, "-l", directory.appendingPathComponent("postgres.log").path, "-w", "-t", "60", "start"])
        running = true
    }

    deinit { stop() }

    func stop() {
        guard running else { return }
        running = false
        try? run("pg_ctl", ["-D", directory.appendingPathComponent("data").path, "-m", "immediate", "-w", "stop"])
    }

    /// Over the Unix socket, for the test's own statements.
    var localConfig: DatabaseConfig {
        var config = DatabaseConfig()
        config.host = directory.path
        config.port = port
        config.username = "postgres"
        config.databaseName = "postgres"
        return config
    }

    private func run(_ tool: String, _ arguments: [String]) throws {
        try runTool("/sbin/runuser", ["-u", "postgres", "--", bin.appendingPathComponent(tool).path] + arguments, logDirectory: logs)
    }
}
