// The environment overlay: `ATOMIC_DATA_PUBLISHER_<SECTION>_<KEY>` for every scalar key, plus
// secrets from files (`..._DATABASE_PASSWORD_FILE`, `..._INGESTOR_AUTH_TOKEN_FILE`,
// `..._INGESTOR_SIGNING_SECRET_FILE`, `..._INGESTOR_PREVIOUS_SIGNING_SECRET_FILE`) and from systemd
// credentials (`$CREDENTIALS_DIRECTORY/database_password`, `.../ingestor_auth_token`,
// `.../ingestor_signing_secret`, `.../ingestor_previous_signing_secret`).
// For a secret the plain variable wins over `_FILE`, which wins over the credential, which wins
// over the TOML files. A variable with the prefix that names no key is only a warning, because
// an environment is shared with other tools and a hard failure there would be unfriendly.

extension ConfigLoader {
    private struct SecretSource {
        var field: ConfigField
        var credentialName: String
        var fileVariable: String { field.environmentName + "_FILE" }
    }

    private static var secretSources: [SecretSource] {
        [
            SecretSource(field: .databasePassword, credentialName: "database_password"),
            SecretSource(field: .ingestorAuthToken, credentialName: "ingestor_auth_token"),
            SecretSource(field: .ingestorSigningSecret, credentialName: "ingestor_signing_secret"),
            SecretSource(field: .ingestorPreviousSigningSecret, credentialName: "ingestor_previous_signing_secret"),
        ]
    }

    static func applyEnvironment(_ env: [String: String], to config: inout PublisherConfig, warnings: inout [String],
                                 origins: inout ConfigOrigins) throws(ConfigError) {
        var updated = config
        var newWarnings: [String] = []
        var newOrigins = origins
        var recognized: Set<String> = []

        // Lowest precedence first: credentials, then _FILE variables, then plain variables.
        if let directory = env["CREDENTIALS_DIRECTORY"], !directory.isEmpty {
            for source in secretSources {
                let path = directory.hasSuffix("/") ? directory + source.credentialName : directory + "/" + source.credentialName
                switch readTextFile(path) {
                case .success(let text):
                    updated[keyPath: stringKeyPath(source.field)] = strippingTrailingNewlines(text)
                    newOrigins[source.field.path] = .init(file: path, key: source.field.path)
                case .failure(let failure) where failure.isNotFound:
                    continue
                case .failure(let failure):
                    throw ConfigError(file: path, key: "CREDENTIALS_DIRECTORY",
                                      problem: "cannot read the credential \(source.credentialName): \(failure.reason)")
                }
            }
        }

        for source in secretSources {
            guard let path = env[source.fileVariable] else { continue }
            recognized.insert(source.fileVariable)
            if env[source.field.environmentName] != nil {
                newWarnings.append("ignoring \(source.fileVariable) because \(source.field.environmentName) is also set")
                continue
            }
            guard !path.isEmpty else {
                throw ConfigError(key: source.fileVariable, problem: "the variable is set but names no file")
            }
            switch readTextFile(path) {
            case .success(let text):
                updated[keyPath: stringKeyPath(source.field)] = strippingTrailingNewlines(text)
                newOrigins[source.field.path] = .init(file: path, key: source.fileVariable)
            case .failure(let failure):
                throw ConfigError(file: path, key: source.fileVariable, problem: "cannot read the secret file: \(failure.reason)")
            }
        }

        for field in ConfigField.all {
            let name = field.environmentName
            guard let value = env[name] else { continue }
            recognized.insert(name)
            try set(field, fromEnvironment: value, name: name, on: &updated)
            newOrigins[field.path] = .init(file: nil, key: name)
        }

        for name in env.keys.sorted() where name.hasPrefix(ConfigField.environmentPrefix) && !recognized.contains(name) {
            let suffix = String(name.dropFirst(ConfigField.environmentPrefix.count))
            if suffix.hasPrefix("DATABASE_"),
               ConfigField.legacyPoolKeys.contains(suffix.dropFirst("DATABASE_".count).lowercased()) {
                newWarnings.append(ConfigField.legacyPoolKeyWarning(name, file: nil))
            } else if suffix == "SERVICE_WATCHED_TABLES" {
                newWarnings.append("ignoring environment variable \(name): watched tables can only be configured in a TOML file")
            } else {
                newWarnings.append("ignoring unknown environment variable \(name)")
            }
        }

        config = updated
        warnings += newWarnings
        origins = newOrigins
    }

    private static func stringKeyPath(_ field: ConfigField) -> WritableKeyPath<PublisherConfig, String> {
        guard case .string(let keyPath) = field.target else { preconditionFailure("\(field.path) is not a string field") }
        return keyPath
    }

    /// Numbers may carry surrounding blanks (`PORT=" 5432"` from a careless unit file); strings are taken verbatim.
    private static func set(_ field: ConfigField, fromEnvironment value: String, name: String,
                            on config: inout PublisherConfig) throws(ConfigError) {
        let trimmed = value.trimmingBlanks()
        // Values of secret fields are never echoed; they are strings, so they cannot fail to parse anyway.
        let shown = field.isSecret ? "" : ", found '\(value)'"
        switch field.target {
        case .string(let keyPath):
            config[keyPath: keyPath] = value
        case .int(let keyPath):
            guard let int = Int(trimmed) else {
                throw ConfigError(key: name, problem: "expected an integer\(shown)")
            }
            config[keyPath: keyPath] = int
        case .intList(let keyPath):
            guard let list = DatabaseConfig.ports(parsing: trimmed) else {
                throw ConfigError(key: name, problem: "expected an integer or comma-separated integers\(shown)")
            }
            config[keyPath: keyPath] = list
        case .double(let keyPath):
            guard let double = Double(trimmed), double.isFinite else {
                throw ConfigError(key: name, problem: "expected a number\(shown)")
            }
            config[keyPath: keyPath] = double
        case .bool(let keyPath):
            switch trimmed.lowercased() {
            case "true", "1", "yes", "on": config[keyPath: keyPath] = true
            case "false", "0", "no", "off": config[keyPath: keyPath] = false
            default: throw ConfigError(key: name, problem: "expected true or false\(shown)")
            }
        case .logFormat(let keyPath):
            guard let format = LogFormat(rawValue: trimmed) else {
                throw ConfigError(key: name, problem: "expected one of \(logFormatNames)\(shown)")
            }
            config[keyPath: keyPath] = format
        }
    }
}

extension String {
    fileprivate func trimmingBlanks() -> String {
        let isBlank: (Character) -> Bool = { $0 == " " || $0 == "\t" || $0 == "\n" || $0 == "\r" }
        guard let first = firstIndex(where: { !isBlank($0) }), let last = lastIndex(where: { !isBlank($0) }) else { return "" }
        return String(self[first...last])
    }
}
