// The supervisor's loop (postmaster style): signal handlers only set flags and wake poll(2);
// the loop reads worker messages, reaps children with waitpid(WNOHANG), fires timers, and runs
// each table's state machine. Only this loop spawns, signals or forgets a worker.
//
// Invariants:
// - One worker process per watched table (per partition of a partitioned table: workers are
//   keyed by `TablePartition.workerName`, `name` or `name#index`); workers never outlive the supervisor (stdin EOF and
//   PR_SET_PDEATHSIG, set by the worker; we spawn from this one long-lived thread).
// - Worker stats are cumulative, and folded into per-table totals when a worker exits, so
//   /metrics never goes backwards across restarts.
// - A bad configuration on SIGHUP is logged and the running one kept.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging
import SharedCore

final class Supervisor {
    private struct Worker {
        var table: WatchedTable
        var partition: TablePartition
        var machine: WorkerStateMachine
        var child: ChildProcess?
        var stats = TableStats()
        /// After the current worker stops: start again (config changed) or forget the table (removed).
        var restartWhenStopped = false
        var removeWhenStopped = false
        /// When the worker last wrote a line (monotonic seconds): it reports at least every second.
        var lastHeardAt = 0.0
    }

    /// A running worker silent for this long is stalled (stopped, hung): killed and restarted.
    static let stallSeconds = WorkerMessage.stallSeconds

    private var config: PublisherConfig
    private let reloadConfig: () throws -> PublisherConfig
    private let workerPath: String
    private var logger: Logger
    private let notifier = SystemdNotifier()
    private let store = SnapshotStore(ServiceSnapshot())
    private let server = HealthServer()

    private var workers: [String: Worker] = [:]
    private var order: [String] = []
    private var shuttingDown = false
    private var readyNotified = false
    private var malformedLines = 0
    private var lastWatchdog = 0.0
    private var lastStatus = ""
    private var lastStatusAt = 0.0
    private let startedAt = Date()
    private(set) var boundPort = 0
    /// `service.instance_id` or the host name: resolved once (and on reload), not per snapshot.
    private var instanceId: String

    init(config: PublisherConfig, workerPath: String, logger: Logger, reloadConfig: @escaping () throws -> PublisherConfig) {
        self.config = config
        instanceId = config.resolvedInstanceId
        self.workerPath = workerPath
        self.logger = logger
        self.reloadConfig = reloadConfig
    }

    func run() -> Int32 {
        Signals.install([SIGTERM, SIGINT, SIGHUP, SIGCHLD])
        for (name, table, partition) in Self.workerEntries(config) {
            order.append(name)
            workers[name] = Worker(table: table, partition: partition, machine: WorkerStateMachine(policy: restartPolicy))
        }
        // The first answer of /health already names every table (idle) and this instance.
        store.publish(makeSnapshot())
        do {
            boundPort = try server.start(host: config.service.healthCheckAddress, port: config.service.healthCheckPort, store: store)
        } catch {
            let reason = HealthServer.reason(error)
            logger.critical("cannot listen on \(config.service.healthCheckAddress):\(config.service.healthCheckPort) for /health and /metrics: \(reason); set service.health_check_port or stop what uses it")
            return ExitStatus.transient
        }
        logger.info("listening for /health and /metrics", metadata: ["address": "\(config.service.healthCheckAddress)", "port": "\(boundPort)"])
        for name in order {
            execute(name, workers[name]!.machine.startRequested())
        }
        let watchdogInterval = notifier.watchdogInterval

        while true {
            let now = monotonicSeconds()
            var timeout = 0.25
            for name in order { if let wake = workers[name]?.machine.nextWake { timeout = min(timeout, max(0, wake - now)) } }
            if let watchdogInterval { timeout = min(timeout, max(0, lastWatchdog + watchdogInterval - now)) }
            let fds = [Signals.wakeFD] + order.compactMap { workers[$0]?.child?.stdoutFD }.filter { $0 >= 0 }
            let ready = Poll.wait(readable: fds, timeout: timeout)

            let signals = Signals.take()
            if !signals.intersection([.term, .int]).isEmpty && !shuttingDown { beginShutdown() }
            if signals.contains(.hup) && !shuttingDown { reload() }
            readWorkers(ready.readable.union(ready.hangup))
            reapWorkers()
            detectStalls()
            fireTimers()
            settlePending()
            publishSnapshot()

            if let watchdogInterval, monotonicSeconds() - lastWatchdog >= watchdogInterval {
                notifier.watchdog()
                lastWatchdog = monotonicSeconds()
            }
            if shuttingDown && order.allSatisfy({ workers[$0]!.machine.isSettled }) { break }
        }
        server.stop()
        logger.info("supervisor stopped")
        return ExitStatus.clean
    }

    /// One worker per table, or per partition of a partitioned table, in configuration order.
    static func workerEntries(_ config: PublisherConfig) -> [(name: String, table: WatchedTable, partition: TablePartition)] {
        config.workerEntries
    }

    private var restartPolicy: RestartPolicy {
        RestartPolicy(initialDelay: config.service.restartDelaySeconds, maxDelay: config.service.maxRestartDelaySeconds)
    }

    // MARK: - events

    private func beginShutdown() {
        shuttingDown = true
        notifier.stopping()
        logger.notice("stopping: sending TERM to every worker", metadata: ["shutdown_timeout_seconds": "\(config.service.shutdownTimeoutSeconds)"])
        for name in order {
            execute(name, workers[name]!.machine.stopRequested(now: monotonicSeconds(), timeout: config.service.shutdownTimeoutSeconds))
        }
    }

    private func reload() {
        notifier.reloading()
        defer { notifier.notify("READY=1") }
        let next: PublisherConfig
        do {
            next = try reloadConfig()
        } catch {
            logger.error("reload failed, keeping the running configuration: \(error)")
            return
        }
        let globalChanged = next.database != config.database || next.ingestor != config.ingestor || next.logging != config.logging
            || { var a = next.service; var b = config.service; a.watchedTables = []; b.watchedTables = []; return a != b }()
        let entries = Self.workerEntries(next)
        let newNames = Set(entries.map(\.name))
        let previous = config
        config = next
        instanceId = next.resolvedInstanceId
        let now = monotonicSeconds()
        for name in order where !newNames.contains(name) {
            logger.notice("reload: table (or partition) removed, stopping its worker", metadata: ["table": "\(name)"])
            workers[name]!.removeWhenStopped = true
            execute(name, workers[name]!.machine.stopRequested(now: now, timeout: config.service.shutdownTimeoutSeconds))
        }
        for (name, table, partition) in entries {
            if var existing = workers[name] {
                // A table added or removed can move the others' read-ahead rights (a configured
                // budget): a worker keeps the share it was started with, so it restarts with its new one.
                let changed = globalChanged || existing.table != table
                    || SessionShare.of(workerName: name, in: previous)?.sessions != SessionShare.of(workerName: name, in: next)?.sessions
                existing.table = table
                existing.partition = partition
                existing.removeWhenStopped = false
                workers[name] = existing
                // Also a table removed and re-added while its worker is still stopping: start it
                // again once stopped, or it would never run.
                if changed || existing.machine.isSettled || existing.machine.state.name == "stopping" {
                    logger.notice("reload: restarting worker with the new configuration", metadata: ["table": "\(name)"])
                    workers[name]!.restartWhenStopped = true
                    execute(name, workers[name]!.machine.stopRequested(now: now, timeout: config.service.shutdownTimeoutSeconds))
                }
            } else {
                logger.notice("reload: table (or partition) added, starting its worker", metadata: ["table": "\(name)"])
                order.append(name)
                workers[name] = Worker(table: table, partition: partition, machine: WorkerStateMachine(policy: restartPolicy))
                execute(name, workers[name]!.machine.startRequested())
            }
        }
        logger.info("configuration reloaded", metadata: ["tables": "\(next.service.watchedTables.map(\.name).joined(separator: ","))"])
    }

    private func detectStalls() {
        let now = monotonicSeconds()
        for name in order {
            guard let w = workers[name], case .running = w.machine.state, now - w.lastHeardAt >= Self.stallSeconds else { continue }
            logger.error("worker stalled: no report for \(Int(now - w.lastHeardAt)) s, killing it", metadata: ["table": "\(name)", "worker_pid": "\(w.machine.pid ?? 0)"])
            workers[name]!.lastHeardAt = now  // one KILL; the reap restarts it
            execute(name, workers[name]!.machine.stallDetected(silentSeconds: now - w.lastHeardAt))
        }
    }

    private func readWorkers(_ readable: Set<Int32>) {
        for name in order {
            guard let child = workers[name]?.child, child.stdoutFD >= 0, readable.contains(child.stdoutFD) else { continue }
            let (lines, _) = child.readLines()
            if !lines.isEmpty { workers[name]!.lastHeardAt = monotonicSeconds() }
            for line in lines { handle(line: line, from: name, child: child) }
        }
    }

    private func handle(line: [UInt8], from name: String, child: ChildProcess) {
        let message: WorkerMessage
        do {
            message = try WorkerMessage.decode(line: line)
        } catch {
            malformedLines += 1
            logger.warning("ignoring a malformed line from a worker", metadata: ["table": "\(name)", "worker_pid": "\(child.pid)", "error": "\(error)", "bytes": "\(line.count)"])
            return
        }
        switch message {
        case .ready:
            execute(name, workers[name]!.machine.readyReceived(now: monotonicSeconds()))
        case .stats(_, let stats):
            workers[name]!.stats.received(stats)
        case .fatal(let error):
            workers[name]!.machine.fatalReceived(error: error)
        }
    }

    private func reapWorkers() {
        for name in order {
            guard let child = workers[name]?.child, let reason = child.reap() else { continue }
            // Whatever it wrote before dying still counts.
            for line in child.readLines().lines { handle(line: line, from: name, child: child) }
            child.closePipes()
            // Its malformed-line count outlives it, so the metric never goes backwards.
            malformedLines += child.malformedLines
            workers[name]!.child = nil
            workers[name]!.stats.workerExited()
            let level: Logger.Level = (reason == .exited(0)) ? .info : .warning
            logger.log(level: level, "worker exited", metadata: ["table": "\(name)", "worker_pid": "\(child.pid)", "reason": "\(reason)"])
            execute(name, workers[name]!.machine.exited(reason, now: monotonicSeconds(), unit: Double.random(in: 0..<1)))
        }
    }

    private func fireTimers() {
        let now = monotonicSeconds()
        for name in order {
            if let wake = workers[name]?.machine.nextWake, wake <= now {
                if shuttingDown, case .backingOff = workers[name]!.machine.state {
                    execute(name, workers[name]!.machine.stopRequested(now: now, timeout: 0))
                    continue
                }
                execute(name, workers[name]!.machine.timerFired(now: now))
            }
        }
    }

    /// Finish what a reload asked for once the old worker has stopped.
    private func settlePending() {
        for name in order {
            guard let w = workers[name], w.machine.isSettled else { continue }
            if w.removeWhenStopped {
                workers[name] = nil
                order.removeAll { $0 == name }
            } else if w.restartWhenStopped && !shuttingDown {
                workers[name]!.restartWhenStopped = false
                execute(name, workers[name]!.machine.startRequested())
            }
        }
    }

    // MARK: - actions

    private func execute(_ name: String, _ actions: [WorkerStateMachine.Action]) {
        for action in actions {
            switch action {
            case .spawn:
                spawn(name)
            case .signal(_, let sig):
                workers[name]?.child?.signal(sig)
            case .log(let text):
                logger.info("worker \(text)", metadata: ["table": "\(name)"])
            }
        }
    }

    private func spawn(_ name: String) {
        guard let worker = workers[name] else { return }
        let now = monotonicSeconds()
        do {
            // The worker gets its own table's slice of the configuration, nothing of the others.
            var slice = config
            slice.service.watchedTables = config.service.watchedTables.filter { $0.name == worker.table.name }
            let line = try WorkerConfig(table: worker.table.name, config: slice, share: SessionShare.of(workerName: name, in: config)).encodedLine()
            let child = try ChildProcess.spawn(path: workerPath, table: worker.table.name, partition: worker.partition.isWhole ? nil : worker.partition.index,
                                               configLine: line, environment: Self.workerEnvironment())
            workers[name]!.child = child
            workers[name]!.lastHeardAt = now
            logger.info("worker started", metadata: ["table": "\(name)", "worker_pid": "\(child.pid)"])
            execute(name, workers[name]!.machine.spawned(pid: child.pid, now: now))
        } catch {
            logger.error("cannot start worker: \(error)", metadata: ["table": "\(name)"])
            execute(name, workers[name]!.machine.spawnFailed(error: "\(error)", now: now, unit: Double.random(in: 0..<1)))
        }
    }

    /// The supervisor's environment minus what the worker must not see or use: configuration
    /// variables (secrets travel on stdin) and systemd's notification socket (only the main
    /// process notifies).
    ///
    /// Plus `GNUTLS_NO_IMPLICIT_INIT=1` unless the operator set it: Debian's libcurl links
    /// OpenLDAP and librtmp, which link GnuTLS, and GnuTLS initialises itself when it is loaded
    /// (p11-kit modules included) although the worker never uses it (libcurl speaks TLS through
    /// OpenSSL and only http and https are allowed). Skipping that saves 0.4-1.0 MiB of each
    /// worker's RSS (measured).
    static func workerEnvironment(_ environment: [String: String] = ProcessInfo.processInfo.environment) -> [String] {
        var kept = environment.filter { key, _ in
            !key.hasPrefix("ATOMIC_DATA_PUBLISHER_") && !["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "CREDENTIALS_DIRECTORY", "LISTEN_FDS", "LISTEN_PID"].contains(key)
        }
        if kept["GNUTLS_NO_IMPLICIT_INIT"] == nil { kept["GNUTLS_NO_IMPLICIT_INIT"] = "1" }
        return kept.map { "\($0.key)=\($0.value)" }.sorted()
    }

    // MARK: - reporting

    private func makeSnapshot() -> ServiceSnapshot {
        var snapshot = ServiceSnapshot()
        snapshot.startedAt = startedAt
        snapshot.instance = instanceId
        snapshot.malformedLines = malformedLines + order.reduce(0) { $0 + (workers[$1]?.child?.malformedLines ?? 0) }
        snapshot.stopping = shuttingDown
        for name in order {
            guard let w = workers[name] else { continue }
            var table = ServiceSnapshot.Table(name: name, table: w.table.name, partition: w.partition, schema: w.table.schema, state: w.machine.state.name, pid: w.machine.pid,
                                              restarts: w.machine.restarts, lastExit: w.machine.lastExit?.description,
                                              lastError: w.machine.lastError, stats: w.stats.combined)
            if case .running = w.machine.state { table.silentSeconds = monotonicSeconds() - w.lastHeardAt }
            snapshot.tables.append(table)
        }
        snapshot.ready = readyNotified
        return snapshot
    }

    private func publishSnapshot() {
        let snapshot = makeSnapshot()
        store.publish(snapshot)

        let now = monotonicSeconds()
        let summary = snapshot.summary
        // Ready as soon as the supervisor serves /health and has started its workers: a database
        // that is down at boot is the service's to wait for (health says why it is not healthy),
        // not a reason for systemd's start timeout to restart it in a loop.
        if !readyNotified && !shuttingDown {
            readyNotified = true
            notifier.ready(status: summary)
            let running = snapshot.tables.filter(\.up).count
            logger.notice("ready: serving /health; \(running) of \(snapshot.tables.count) workers running so far", metadata: ["status": "\(summary)"])
            lastStatus = summary
            lastStatusAt = now
        } else if summary != lastStatus && now - lastStatusAt >= 1 {
            notifier.status(summary)
            lastStatus = summary
            lastStatusAt = now
        }
    }
}
