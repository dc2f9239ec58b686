// Configuration loading (DESIGN.md section 3): built-in defaults, then TOML files, then
// environment variables; later wins. Loading and validation are separate steps so that a
// caller can load, report every warning, and then validate; `LoadedConfig.validate()` also
// remembers which file or environment variable set each key and points its errors there.
//
// Invariant: no error description or warning produced here contains the value of
// `database.password` or `ingestor.auth_token`.

public struct ConfigLoader {
    /// Defaults, then files, then environment. `explicitPath`: with --config PATH only that file is read (must exist);
    /// without it `config/default.toml` then optional `config/local.toml` relative to `directory` (default: current dir).
    /// default.toml missing when no explicit path is given: not an error, just defaults (+ local.toml if present).
    /// The result is not validated: call `LoadedConfig.validate()` (or `ConfigLoader.validate(_:)`).
    public static func load(explicitPath: String?, directory: String = ".", environment: [String: String]) throws(ConfigError) -> LoadedConfig {
        var loaded = LoadedConfig(config: PublisherConfig(), warnings: [], files: [])

        let candidates: [(path: String, required: Bool)]
        if let explicitPath {
            candidates = [(explicitPath, true)]
        } else {
            candidates = [(join(directory, "config/default.toml"), false), (join(directory, "config/local.toml"), false)]
        }

        for candidate in candidates {
            let text: String
            switch readTextFile(candidate.path) {
            case .success(let contents):
                text = contents
            case .failure(let failure) where failure.isNotFound && !candidate.required:
                continue
            case .failure(let failure) where failure.isNotFound:
                throw ConfigError(file: candidate.path, problem: "the configuration file does not exist")
            case .failure(let failure):
                throw ConfigError(file: candidate.path, problem: "cannot read the configuration file: \(failure.reason)")
            }
            try apply(toml: text, file: candidate.path, to: &loaded.config, warnings: &loaded.warnings, origins: &loaded.origins)
            loaded.files.append(candidate.path)
        }

        try applyEnvironment(environment, to: &loaded.config, warnings: &loaded.warnings, origins: &loaded.origins)
        return loaded
    }

    /// Parse one TOML text onto an existing config (used for files and for tests). `file` names the source in errors.
    /// Keys present in the text replace the current values; `[[service.watched_tables]]`, when present,
    /// replaces the whole list (a later file redefines the tables rather than appending to them).
    public static func apply(toml: String, file: String, to config: inout PublisherConfig, warnings: inout [String]) throws(ConfigError) {
        var origins = ConfigOrigins()
        try apply(toml: toml, file: file, to: &config, warnings: &warnings, origins: &origins)
    }

    /// Overlay `ATOMIC_DATA_PUBLISHER_<SECTION>_<KEY>` variables, the `_FILE` secret variables and
    /// systemd credentials (`$CREDENTIALS_DIRECTORY/database_password`, `.../ingestor_auth_token`).
    /// Precedence for a secret: plain variable, then `_FILE`, then credential, then whatever was there.
    public static func applyEnvironment(_ env: [String: String], to config: inout PublisherConfig, warnings: inout [String]) throws(ConfigError) {
        var origins = ConfigOrigins()
        try applyEnvironment(env, to: &config, warnings: &warnings, origins: &origins)
    }

    private static func join(_ directory: String, _ relative: String) -> String {
        if directory.isEmpty || directory == "." { return relative }
        return directory.hasSuffix("/") ? directory + relative : directory + "/" + relative
    }
}

public struct LoadedConfig: Sendable {
    public var config: PublisherConfig
    public var warnings: [String]
    /// The files that were read, in order.
    public var files: [String]
    /// Where each key's final value came from, so validation errors can name it.
    var origins = ConfigOrigins()

    public init(config: PublisherConfig, warnings: [String], files: [String]) {
        self.config = config
        self.warnings = warnings
        self.files = files
    }

    /// `ConfigLoader.validate(config)`, with each error pointed at the file (or the environment
    /// variable) that set the offending key.
    public func validate() throws(ConfigError) {
        do {
            try ConfigLoader.validate(config)
        } catch {
            throw origins.locate(error)
        }
    }
}

/// Which source last set each dotted key ("database.port", "service.watched_tables").
struct ConfigOrigins: Sendable, Equatable {
    struct Origin: Sendable, Equatable {
        /// The TOML file, or nil for the environment.
        var file: String?
        /// The key as the user wrote it: the dotted TOML key or the environment variable's name.
        var key: String
    }

    var byPath: [String: Origin] = [:]

    subscript(path: String) -> Origin? {
        get { byPath[path] }
        set { byPath[path] = newValue }
    }

    func locate(_ error: ConfigError) -> ConfigError {
        guard error.file == nil, let key = error.key else { return error }
        var located = error
        if key.hasPrefix("service.watched_tables") {
            located.file = byPath["service.watched_tables"]?.file
        } else if let origin = byPath[key] {
            located.file = origin.file
            located.key = origin.key
        }
        return located
    }
}
