// The reference table of every configuration key, generated from `ConfigField.all` and the
// defaults of `PublisherConfig()`, so the documentation cannot drift from the code: docs/
// configuration.md holds this text between its markers, `atomic-data-publisher config-reference`
// prints it, and a test fails when the two differ.


package enum ConfigReference {
    static let beginMarker = "<!-- atomic-data-publisher config-reference: begin -->"
    static let endMarker = "<!-- atomic-data-publisher config-reference: end -->"

    /// The Markdown block, markers included, exactly as it sits in docs/configuration.md.
    package static func markdown() -> String {
        let defaults = PublisherConfig()
        var lines = [
            beginMarker,
            "",
            "| Key | Type | Default | Environment variable | Meaning |",
            "|---|---|---|---|---|",
        ]
        for field in ConfigField.all {
            let env = "`…_" + field.environmentName.dropFirst(ConfigField.environmentPrefix.count) + "`"
            lines.append("| `\(field.path)` | \(typeName(field.target)) | \(defaultValue(field.target, in: defaults)) | \(env) | \(field.meaning) |")
        }
        lines.append("| `service.watched_tables` | array of tables | none (required) | none, TOML only | The tables to publish: see [Watched tables](#watched-tables). |")
        lines += ["", endMarker]
        return lines.joined(separator: "\n") + "\n"
    }

    /// The block between the markers in `document`, markers included, or nil without them.
    package static func block(in document: String) -> String? {
        let lines = document.split(separator: "\n", omittingEmptySubsequences: false)
        guard let begin = lines.firstIndex(where: { $0 == beginMarker }),
              let end = lines[begin...].firstIndex(where: { $0 == endMarker }) else { return nil }
        return lines[begin...end].joined(separator: "\n") + "\n"
    }

    static func typeName(_ target: ConfigField.Target) -> String {
        switch target {
        case .string, .logFormat: "string"
        case .int: "integer"
        case .intList: "integer or string"
        case .double: "number"
        case .bool: "boolean"
        }
    }

    static func defaultValue(_ target: ConfigField.Target, in config: PublisherConfig) -> String {
        switch target {
        case .string(let path): "`\"\(config[keyPath: path])\"`"
        case .int(let path): "`\(config[keyPath: path])`"
        case .intList(let path): "`\(config[keyPath: path].map(String.init).joined(separator: ","))`"
        case .double(let path): "`\(number(config[keyPath: path]))`"
        case .bool(let path): "`\(config[keyPath: path])`"
        case .logFormat(let path): "`\"\(config[keyPath: path].rawValue)\"`"
        }
    }

    /// `10` rather than `10.0`: a TOML integer is accepted where a number is expected.
    private static func number(_ value: Double) -> String {
        value == value.rounded() && abs(value) < 1e15 ? String(Int(value)) : String(value)
    }
}
