// swift-tools-version: 6.0
import PackageDescription

// Shared and TableWorker import FoundationEssentials, never Foundation: full Foundation links
// FoundationInternationalization and the ICU data (about 45 MB of the static binary;
// docs/performance.md, "Memory"). TOMLKit imports Foundation, and without MemberImportVisibility its members (the
// NSString `contains`, `range(of:)`, ...) would silently win overload resolution in every file
// of a module that merely depends on it, pulling Foundation back in.
let essentialsOnly: [SwiftSetting] = [.enableUpcomingFeature("MemberImportVisibility")]

let package = Package(
    name: "atomic-data-publisher",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "atomic-data-publisher", targets: ["PublisherCLI"]),
        // The long-running supervisor: `atomic-data-publisher run` checks the configuration and
        // the database, then execs this binary in its place (same PID, same argv). It links
        // neither libpq nor libcurl (docs/performance.md: 8 MiB of the supervisor's RSS).
        .executable(name: "atomic-data-publisher-supervisor", targets: ["Supervisor"]),
        .executable(name: "atomic-data-table-worker", targets: ["TableWorker"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // One system library target per C library; each is imported by exactly one Swift file.
        .systemLibrary(name: "CLibPQ", pkgConfig: "libpq"),
        .systemLibrary(name: "CCurl", pkgConfig: "libcurl"),
        .systemLibrary(name: "CZlib", pkgConfig: "zlib"),
        .systemLibrary(name: "CSystemd", pkgConfig: "libsystemd"),
        // pipe2, prctl, posix_spawn helpers: need _GNU_SOURCE, so they live in a tiny C target.
        .target(name: "CPosix"),
        // Sources/Shared is two modules: SharedCore (configuration, logging, the worker protocol,
        // POSIX and systemd helpers) and Shared (PostgreSQL, the HTTP client, the tracking schema),
        // which re-exports SharedCore. The supervisor links only SharedCore.
        .target(
            name: "SharedCore",
            dependencies: [
                "CSystemd", "CPosix",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "TOMLKit", package: "TOMLKit"),
            ],
            path: "Sources/Shared",
            exclude: ["Postgres", "HTTP", "Schema", "Exports.swift"],
            swiftSettings: essentialsOnly
        ),
        .target(
            name: "Shared",
            dependencies: ["SharedCore", "CLibPQ", "CCurl", "CZlib"],
            path: "Sources/Shared",
            exclude: ["Backoff.swift", "Config", "JSON", "Logging", "Posix", "Protocol", "Signing", "Systemd", "Text", "Version.swift"],
            sources: ["Postgres", "HTTP", "Schema", "Exports.swift"],
            swiftSettings: essentialsOnly
        ),
        .executableTarget(
            name: "PublisherCLI",
            dependencies: [
                "Shared",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            path: "Sources/Supervisor",
            exclude: ["ChildProcess.swift", "HTTP", "StatsAggregator.swift", "Supervisor.swift", "SupervisorMain.swift", "WorkerStateMachine.swift"],
            sources: ["Commands", "BackfillMeter.swift"],
            swiftSettings: essentialsOnly
        ),
        .executableTarget(
            name: "Supervisor",
            dependencies: [
                "SharedCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            exclude: ["Commands", "BackfillMeter.swift"],
            swiftSettings: essentialsOnly
        ),
        .executableTarget(
            name: "TableWorker",
            dependencies: [
                "Shared",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: essentialsOnly
        ),
        .testTarget(name: "SharedTests", dependencies: ["Shared"]),
        .testTarget(name: "SupervisorTests", dependencies: ["Supervisor", "PublisherCLI", "Shared"]),
        .testTarget(name: "TableWorkerTests", dependencies: ["TableWorker", "Shared"]),
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["Shared"],
            resources: [.copy("Fixtures")]
        ),
    ],
    swiftLanguageModes: [.v6]
)
