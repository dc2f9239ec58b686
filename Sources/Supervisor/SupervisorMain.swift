// atomic-data-publisher-supervisor: the long-running supervisor. `atomic-data-publisher run`
// loads and checks the configuration, checks the watched tables in the database, then execs this
// binary with the same argv, ADP_WORKER_PATH and the configuration path set (SupervisorExec). This binary links neither
// libpq nor libcurl nor ArgumentParser: 8 MiB less resident for the life of the service
// (docs/performance.md, "Memory").

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

@main
enum SupervisorMain {
    static func main() {
        if CommandLine.arguments.dropFirst().first == "--version" {
            writeAll(fd: 1, Array((PublisherVersion.current + "\n").utf8))
            exit(0)
        }
        let environment = ProcessInfo.processInfo.environment
        guard let marker = environment[SupervisorExec.marker], let workerPath = environment["ADP_WORKER_PATH"] else {
            fail("start the service with `atomic-data-publisher run`: it checks the configuration and the database, then runs this binary", status: 64)
        }
        unsetenv(SupervisorExec.marker)
        let configPath = SupervisorExec.configPath(markerValue: marker)
        let config: PublisherConfig
        do {
            // `run` logged the loader's warnings already.
            let loaded = try ConfigLoader.load(explicitPath: configPath, environment: environment)
            try loaded.validate()
            config = loaded.config
        } catch {
            fail("\(error)", status: ExitStatus.config)
        }
        LogSetup.bootstrap(level: config.logging.level, format: config.logging.format, metadata: ["instance": "\(config.resolvedInstanceId)"])
        let logger = Logger(label: "atomic-data-publisher")
        let supervisor = Supervisor(config: config, workerPath: workerPath, logger: logger) {
            let loaded = try ConfigLoader.load(explicitPath: configPath, environment: ProcessInfo.processInfo.environment)
            try loaded.validate()
            return loaded.config
        }
        exit(supervisor.run())
    }

    private static func fail(_ message: String, status: Int32) -> Never {
        writeAll(fd: 2, Array("atomic-data-publisher: \(message)\n".utf8))
        exit(status)
    }
}
