import Foundation
import Shared
import XCTest

/// Supervisor defects (issues 8 and 12), each shown with real processes and signals.
extension SupervisorProcessTests {
    /// Pids of this test's workers, read from /proc (inside a PID namespace /health shows the
    /// namespace's own pids).
    private func workerProcesses(table: String) -> [Int32] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc")) ?? []
        return entries.compactMap { Int32($0) }.filter { pid in
            let cmdline = processCommandLine(pid)
            return cmdline.contains("atomic-data-table-worker") && cmdline.contains("--table \(table) ")
        }
    }

    /// A container entrypoint with no init: the supervisor is PID 1 of its PID namespace. Its
    /// workers used to exit at once (they took getppid() == 1 for "my supervisor is gone").
    func testSupervisorAsPID1OfANewPIDNamespace_publishes_andItsWorkersDieWithIt() throws {
        let table = "pidone\(UInt32.random(in: 1000...9999))"
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL([table], keys: 3))
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [counterTable(table)])
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        let configURL = try writeConfig(config)
        let supervisor = try launch(configURL: configURL, port: config.service.healthCheckPort,
                                    wrapper: ["/usr/bin/unshare", "--pid", "--fork", "--mount-proc", "--kill-child"])
        try waitUntil("/health reports the worker running inside the namespace") {
            (try? supervisor.health().body["components"]?["tables"]?[table]?["state"]?.string) == "running"
        }
        XCTAssertEqual(try supervisor.health().body["components"]?["tables"]?[table]?["pid"]?.int.map { $0 > 1 }, true)
        try database.execute("UPDATE \(table) SET v = 5 WHERE id = 2")
        try waitUntil("the change is published from inside the namespace") { try self.finalValues(ingestor)["\(table):2"] == 5 }
        let workers = workerProcesses(table: table)
        XCTAssertEqual(workers.count, 1, "one worker process for the table")
        supervisor.process.send(SIGKILL)  // unshare --kill-child: PID 1 of the namespace dies with it
        _ = supervisor.process.waitForExit(timeout: 10)
        try waitUntil(timeout: 10, "no worker outlives the namespace's PID 1") { self.workerProcesses(table: table).isEmpty }
    }

    /// READY=1 must not wait for the database: a database down at boot for longer than systemd's
    /// start timeout used to put the service in a start-timeout restart loop.
    func testDatabaseDownAtBoot_readyComesAtOnce_thenPublishingStartsWhenItIsUp_withoutWorkerRestarts() throws {
        let database = try makeDatabase()
        try database.executeScript(counterTablesSQL(["alpha"], keys: 3))
        let ingestor = try startIngestor()
        let downPort = try SupervisorProcess.freePort()
        var config = ConfigFile.forTests(database: database.config, ingestorURL: ingestor.baseURL, tables: [counterTable("alpha")])
        config.database.port = downPort  // nothing listens there yet
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        let configURL = try writeConfig(config)
        let socketPath = "/tmp/adp-notify-\(UUID().uuidString.prefix(8)).sock"
        let notify = try NotifySocket(path: socketPath)
        let started = Date()
        let supervisor = try launch(configURL: configURL, port: config.service.healthCheckPort, environment: ["NOTIFY_SOCKET": socketPath])
        try waitUntil(timeout: 10, "READY=1 while the database is still down") { notify.assignments.contains { $0.key == "READY" } }
        let readyAfter = Date().timeIntervalSince(started)
        let (status, body) = try supervisor.health()
        XCTAssertEqual(body["components"]?["database"]?["status"], "down", "\(body)")
        XCTAssertNotEqual(body["status"], "healthy", "\(status) \(body)")
        // Let it wait a while: the worker keeps retrying in-process, it is not restarted.
        Thread.sleep(forTimeInterval: 5)  // a span of downtime, not synchronisation
        let forwarder = try ManagedProcess(
            name: "db-forwarder", executable: try TestEnvironment.python(),
            arguments: ["-c", Self.forwarderScript, String(downPort), database.config.host, String(database.config.port)],
            workingDirectory: workDirectory, logDirectory: workDirectory)
        defer { _ = forwarder.stop(timeout: 5) }
        // The capture trigger is installed by the worker's first connection: write after it.
        try waitUntil(timeout: 45, "the worker connects and runs") { try supervisor.workerPIDs()["alpha"] != nil }
        try database.execute("UPDATE alpha SET v = 3 WHERE id = 1")
        try waitUntil("the change is published once the database is reachable") { try self.finalValues(ingestor)["alpha:1"] == 3 }
        let metrics = try supervisor.metrics()
        print("database down at boot: READY=1 after \(String(format: "%.2f", readyAfter)) s; published once it came up; worker restarts \(metrics["tables"]?["alpha"]?["restarts"] ?? .null)")
        XCTAssertEqual(metrics["tables"]?["alpha"]?["restarts"], 0, "no worker restart storm: \(metrics)")
        XCTAssertEqual(notify.assignments.filter { $0.key == "READY" }.count, 1)
    }

    /// A TCP forwarder: the database "comes up" on the port the service was told to use.
    static let forwarderScript = """
        import socket, sys, threading
        listen_port, host, port = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
        server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", listen_port)); server.listen(64)
        def pipe(a, b):
            try:
                while True:
                    data = a.recv(65536)
                    if not data: break
                    b.sendall(data)
            except OSError: pass
            finally:
                for s in (a, b):
                    try: s.shutdown(socket.SHUT_RDWR)
                    except OSError: pass
        while True:
            client, _ = server.accept()
            upstream = socket.create_connection((host, port))
            threading.Thread(target=pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        """

    /// A stopped worker used to look healthy forever (and systemd's watchdog never fired): the
    /// supervisor now notices the silence, kills it and restarts it, and the change is delivered.
    func testAStoppedWorker_isDetectedAsStalled_killed_andRestarted() throws {
        let s = try startSupervisor(tables: [counterTable("alpha")])
        let victim = try s.supervisor.workerPIDs()["alpha"]!
        kill(victim, SIGSTOP)
        defer { kill(victim, SIGCONT) }
        try s.database.execute("UPDATE alpha SET v = 4 WHERE id = 3")
        let stoppedAt = Date()
        try waitUntil(timeout: 9, "/health says the silent worker is stalled, not healthy") {
            let (status, body) = try s.supervisor.health()
            return status == 200 && body["status"] == "degraded" && body["components"]?["tables"]?["alpha"]?["stalled"] == true
        }
        try waitUntil(timeout: 30, "the stalled worker is replaced") {
            guard let pid = try s.supervisor.workerPIDs()["alpha"] else { return false }
            return pid != victim
        }
        let detected = Date().timeIntervalSince(stoppedAt)
        try waitUntil("the waiting change is delivered by the new worker") { try self.finalValues(s.ingestor)["alpha:3"] == 4 }
        print("stalled worker replaced \(String(format: "%.1f", detected)) s after SIGSTOP")
        XCTAssertTrue(s.supervisor.process.stderrText().contains("worker stalled"), s.supervisor.process.stderrTail())
        let metrics = try s.supervisor.metrics()
        XCTAssertEqual(metrics["tables"]?["alpha"]?["restarts"], 1, "\(metrics)")
    }

    /// Stats keep coming while a request is in flight, and say so (in_flight was always 0 and no
    /// stats were sent during a long HTTP exchange); a worker survives SIGHUP (it used to die).
    func testDuringALongHTTPExchange_statsShowTheRequestInFlight_andSighupDoesNotKillTheWorker() throws {
        let s = try startSupervisor(tables: [counterTable("alpha")]) { config in config.ingestor.timeoutSeconds = 20 }
        let worker = try s.supervisor.workerPIDs()["alpha"]!
        try s.ingestor.setControl(["delay": 6])
        try s.database.execute("UPDATE alpha SET v = 8 WHERE id = 1")
        try waitForRequests(s.ingestor, count: 1)
        try waitUntil(timeout: 5, "/health shows one request in flight") {
            try s.supervisor.metrics()["tables"]?["alpha"]?["in_flight"] == 1
        }
        kill(worker, SIGHUP)
        try waitUntil(timeout: 15, "the slow answer is acknowledged") { try s.database.rowCount("alpha_changes") == 0 }
        XCTAssertEqual(try s.supervisor.workerPIDs()["alpha"], worker, "the same worker: neither killed by SIGHUP nor taken for stalled")
        XCTAssertEqual(try s.supervisor.metrics()["tables"]?["alpha"]?["restarts"], 0)
    }
}

extension SupervisorProcessTests {
    /// A database that drops packets: the worker's session dies (keepalives), and its reconnect
    /// sits in a connect that takes `connect_timeout_seconds` (12 s here), longer than the
    /// supervisor waits for a silent worker (10 s). The worker keeps reporting while it connects,
    /// so it is not killed as stalled: a database outage never restarts a worker.
    func testADatabaseThatDropsPackets_neverGetsAReconnectingWorkerKilledAsStalled() throws {
        let certificates = try TestCertificates.make(in: workDirectory.appendingPathComponent("pki"))
        let own = try TLSPostgresServer(directory: workDirectory.appendingPathComponent("own-pg"), certificates: certificates)
        defer { own.stop() }
        var database = own.config(host: "127.0.0.1")
        database.sslmode = "require"
        // The table, as the server's superuser over its Unix socket; the service's role owns it.
        var superuser = DatabaseConfig()
        superuser.host = workDirectory.appendingPathComponent("own-pg").path
        superuser.port = own.port
        superuser.username = "postgres"
        superuser.databaseName = "postgres"
        let admin = try PostgresConnection.connect(ConnectionParameters(superuser, applicationName: "adp-it-setup"))
        try admin.executeScript(counterTablesSQL(["dropper"], keys: 3))
        try admin.executeScript("ALTER TABLE dropper OWNER TO \(TLSPostgresServer.passwordRole); GRANT CREATE ON SCHEMA public TO \(TLSPostgresServer.passwordRole);")
        admin.close()
        database.keepalivesIdleSeconds = 1
        database.keepalivesIntervalSeconds = 1
        database.keepalivesCount = 2
        // Linux ends a connect whose SYNs go unanswered at tcp_user_timeout: above 12 s, the
        // connect runs its whole 12 s. The dead session is noticed at the same 16 s.
        database.tcpUserTimeoutSeconds = 16
        database.connectTimeoutSeconds = 12
        let ingestor = try startIngestor()
        var config = ConfigFile.forTests(database: database, ingestorURL: ingestor.baseURL, tables: [counterTable("dropper")])
        config.database.connectTimeoutSeconds = 12  // forTests shortens it
        config.service.healthCheckAddress = "127.0.0.1"
        config.service.healthCheckPort = try SupervisorProcess.freePort()
        let supervisor = try launch(configURL: try writeConfig(config), port: config.service.healthCheckPort)
        try waitUntil(timeout: 30, "the worker runs, connected") {
            try supervisor.health().body["components"]?["tables"]?["dropper"]?["state"] == "running"
                && supervisor.metrics()["tables"]?["dropper"]?["database"] == "up"
        }
        let firewall = try LoopbackFirewall(port: own.port, logDirectory: workDirectory)
        try waitUntil(timeout: 40, "the worker reports the database down") {
            try supervisor.metrics()["tables"]?["dropper"]?["database"] == "down"
        }
        let downAt = Date()
        // Through at least one whole 12 s connect attempt, past the 10 s stall limit.
        try waitUntil(timeout: 40, "two connect attempts' time has passed") { Date().timeIntervalSince(downAt) > 26 }
        XCTAssertEqual(try supervisor.metrics()["tables"]?["dropper"]?["restarts"], 0, "no restart during a database outage")
        XCTAssertFalse(supervisor.process.stderrText().contains("worker stalled"), "the worker was never taken for stalled")
        firewall.remove()
        try waitUntil(timeout: 40, "the worker reconnects by itself") {
            try supervisor.metrics()["tables"]?["dropper"]?["database"] == "up"
        }
    }
}
