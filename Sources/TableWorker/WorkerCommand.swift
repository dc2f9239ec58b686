// atomic-data-table-worker: publishes the changes of one watched table. Normally spawned by the
// supervisor, which writes a WorkerConfig line on stdin (`--config-stdin`) and keeps the pipe
// open: EOF means the supervisor is gone. It can also run alone for a single table, loading the
// configuration the usual way (`--config PATH`, config/default.toml, environment).

import ArgumentParser
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging
import Shared

@main
struct WorkerCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "atomic-data-table-worker",
        abstract: "Publish the changes of one watched table (normally started by atomic-data-publisher).",
        version: PublisherVersion.current)

    @Option(name: .long, help: "The watched table's name (service.watched_tables name).")
    var table: String

    @Option(name: .long, help: "For a table with partitions = N: which partition this worker publishes (0 to N-1).")
    var partition: Int?

    @Option(name: .long, help: "Read this TOML file instead of config/default.toml and config/local.toml.")
    var config: String?

    @Flag(name: .long, help: "Read the resolved configuration as one JSON line on stdin (how the supervisor starts workers).")
    var configStdin = false

    @Option(name: .long, help: "The supervisor's pid: the worker stops when its parent is no longer that process.")
    var supervisorPid: Int32?

    func run() throws {
        HeapMemory.fixThresholds()
        HTTPClient.globalInit()
        Signals.install([SIGTERM, SIGINT, SIGHUP])
        if configStdin {
            // Die with the supervisor even if it is killed with SIGKILL.
            Signals.setParentDeathSignal(SIGTERM)
            // The supervisor may have died between spawning us and the line above: then our
            // parent is no longer the pid it handed us (it may be PID 1 itself, in a container).
            if let supervisorPid, getppid() != supervisorPid { throw ExitCode(ExitStatus.clean) }
        }
        let resolved: PublisherConfig
        var sessionShare: SessionShare?
        do {
            (resolved, sessionShare) = try loadConfig()
        } catch {
            LogSetup.bootstrap(level: "info", format: .json)
            let message = "\(error)"
            Logger(label: "atomic-data-table-worker").error("\(message)")
            writeAll(fd: 1, WorkerMessage.fatal(error: message).encodedLine())
            throw ExitCode(ExitStatus.config)
        }
        guard let watched = resolved.table(named: table) else {
            LogSetup.bootstrap(level: resolved.logging.level, format: resolved.logging.format)
            let message = "table '\(table)' is not in service.watched_tables"
            Logger(label: "atomic-data-table-worker").error("\(message)")
            writeAll(fd: 1, WorkerMessage.fatal(error: message).encodedLine())
            throw ExitCode(ExitStatus.config)
        }
        let share: TablePartition
        switch (partition, watched.partitions) {
        case (nil, 1), (0, 1):
            share = .whole
        case (let index?, let count) where count > 1 && (0..<count).contains(index):
            share = TablePartition(index: index, count: count)
        default:
            LogSetup.bootstrap(level: resolved.logging.level, format: resolved.logging.format)
            let message = watched.partitions > 1
                ? "table '\(table)' has partitions = \(watched.partitions): start one worker per partition with --partition 0 to \(watched.partitions - 1)"
                : "table '\(table)' is not partitioned (partitions = 1): --partition must be 0 or left out"
            Logger(label: "atomic-data-table-worker").error("\(message)")
            writeAll(fd: 1, WorkerMessage.fatal(error: message).encodedLine())
            throw ExitCode(ExitStatus.config)
        }
        var metadata: Logger.Metadata = ["table": "\(watched.name)", "worker_pid": "\(getpid())", "instance": "\(resolved.resolvedInstanceId)"]
        if !share.isWhole { metadata["partition"] = "\(share.index)" }
        LogSetup.bootstrap(level: resolved.logging.level, format: resolved.logging.format, metadata: metadata)
        let logger = Logger(label: "atomic-data-table-worker")
        let sessions = sessionShare ?? SessionShare.of(workerName: share.workerName(table: watched.name), in: resolved)
            ?? SessionShare(sessions: 2, budget: SessionBudget(resolved))
        let worker = TableWorker(config: resolved, table: watched, partition: share, sessions: sessions, supervised: configStdin, logger: logger)
        let status = worker.run()
        if status != 0 { throw ExitCode(status) }
    }

    /// The configuration, and the session share the supervisor computed (nil: standalone).
    private func loadConfig() throws -> (PublisherConfig, SessionShare?) {
        if configStdin {
            guard let line = readLine(fd: 0) else {
                throw ConfigError(problem: "expected one line of WorkerConfig JSON on stdin")
            }
            let decoded = try WorkerConfig.decode(line)
            return (decoded.config, decoded.share)
        }
        let loaded = try ConfigLoader.load(explicitPath: config, environment: ProcessInfo.processInfo.environment)
        try ConfigLoader.validate(loaded.config)
        return (loaded.config, nil)
    }

    /// Read one line from `fd` byte by byte (the rest of the pipe stays unread: it is only
    /// watched for EOF later).
    private func readLine(fd: Int32) -> [UInt8]? {
        var line: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            let n = read(fd, &byte, 1)
            if n == 1 {
                if byte == UInt8(ascii: "\n") { return line }
                line.append(byte)
                if line.count > 16 * 1024 * 1024 { return nil }
            } else if n < 0 && errno == EINTR {
                continue
            } else {
                return line.isEmpty ? nil : line
            }
        }
    }
}
