// The TOML walker. The parsed document is walked by hand rather than decoded with Codable so
// that every error names the file, the dotted key (`service.watched_tables[1].name`) and the
// expected and found types. Unknown keys are errors: a typo must not silently fall back to a
// default. Type errors never echo the value, so a misplaced secret is not printed.

import TOMLKit

extension ConfigLoader {
    static func apply(toml: String, file: String, to config: inout PublisherConfig, warnings: inout [String],
                      origins: inout ConfigOrigins) throws(ConfigError) {
        let root: TOMLTable
        do {
            root = try TOMLTable(string: toml)
        } catch let error as TOMLParseError {
            let position = error.source.begin
            // toml++ quotes an unparsable bare value ("'hunter2x' could not be interpreted as a
            // value"), so its message is dropped when the line may hold a secret.
            let lines = toml.split(separator: "\n", omittingEmptySubsequences: false)
            let line = lines.indices.contains(position.line - 1) ? lines[position.line - 1].lowercased() : ""
            let detail = line.containsScalars("password") || line.containsScalars("token") || line.containsScalars("secret")
                ? " (the parser's message is withheld because this line may hold a secret)"
                : ": \(error.description)"
            throw ConfigError(file: file, problem: "invalid TOML at line \(position.line), column \(position.column)\(detail)")
        } catch {
            throw ConfigError(file: file, problem: "invalid TOML: \(error)")
        }

        // Work on a copy so a file with an error leaves the caller's config untouched.
        var updated = config
        var newWarnings: [String] = []
        var newOrigins = origins

        for sectionName in root.keys {
            guard let fields = ConfigField.bySection[sectionName] else {
                let known = ConfigField.sections.map { "[\($0)]" }.joined(separator: ", ")
                throw ConfigError(file: file, key: sectionName, problem: "unknown key; the known sections are \(known)")
            }
            let sectionValue = root[sectionName]!
            guard let section = sectionValue.table else {
                throw typeError(file: file, key: sectionName, expected: "a table ([\(sectionName)])", found: sectionValue)
            }
            for key in section.keys {
                let value = section[key]!
                let path = "\(sectionName).\(key)"
                if let field = fields[key] {
                    try set(field, from: value, file: file, on: &updated)
                    newOrigins[path] = .init(file: file, key: path)
                } else if sectionName == "service" && key == "watched_tables" {
                    updated.service.watchedTables = try watchedTables(from: value, file: file)
                    newOrigins[path] = .init(file: file, key: path)
                } else if sectionName == "database" && ConfigField.legacyPoolKeys.contains(key) {
                    newWarnings.append(ConfigField.legacyPoolKeyWarning(path, file: file))
                } else {
                    var known = fields.keys.sorted()
                    if sectionName == "service" { known.append("watched_tables") }
                    throw ConfigError(file: file, key: path,
                                      problem: "unknown key; the keys of [\(sectionName)] are \(known.joined(separator: ", "))")
                }
            }
        }

        config = updated
        warnings += newWarnings
        origins = newOrigins
    }

    // MARK: Scalars

    private static func set(_ field: ConfigField, from value: TOMLValueConvertible, file: String,
                            on config: inout PublisherConfig) throws(ConfigError) {
        let key = field.path
        switch field.target {
        case .string(let keyPath):
            config[keyPath: keyPath] = try string(value, file: file, key: key)
        case .int(let keyPath):
            config[keyPath: keyPath] = try int(value, file: file, key: key)
        case .intList(let keyPath):
            if let int = value.int {
                config[keyPath: keyPath] = [int]
            } else if let text = value.string {
                guard let list = DatabaseConfig.ports(parsing: text) else {
                    throw ConfigError(file: file, key: key, problem: "expected an integer or a string of comma-separated integers, found '\(text)'")
                }
                config[keyPath: keyPath] = list
            } else {
                throw typeError(file: file, key: key, expected: "an integer or a string of comma-separated integers", found: value)
            }
        case .double(let keyPath):
            config[keyPath: keyPath] = try double(value, file: file, key: key)
        case .bool(let keyPath):
            guard let bool = value.bool else { throw typeError(file: file, key: key, expected: "a boolean (true or false)", found: value) }
            config[keyPath: keyPath] = bool
        case .logFormat(let keyPath):
            let text = try string(value, file: file, key: key)
            guard let format = LogFormat(rawValue: text) else {
                throw ConfigError(file: file, key: key, problem: "'\(text)' is not a log format; expected one of \(logFormatNames)")
            }
            config[keyPath: keyPath] = format
        }
    }

    static var logFormatNames: String { LogFormat.allCases.map(\.rawValue).joined(separator: ", ") }

    private static func string(_ value: TOMLValueConvertible, file: String, key: String, context: String = "") throws(ConfigError) -> String {
        guard let string = value.string else { throw typeError(file: file, key: key, expected: "a string", found: value, context: context) }
        return string
    }

    private static func int(_ value: TOMLValueConvertible, file: String, key: String) throws(ConfigError) -> Int {
        guard let int = value.int else { throw typeError(file: file, key: key, expected: "an integer", found: value) }
        return int
    }

    /// Seconds and delays accept `5` as well as `2.5`.
    private static func double(_ value: TOMLValueConvertible, file: String, key: String) throws(ConfigError) -> Double {
        if let int = value.int { return Double(int) }
        guard let double = value.double else { throw typeError(file: file, key: key, expected: "a number", found: value) }
        guard double.isFinite else { throw ConfigError(file: file, key: key, problem: "expected a finite number, found \(double)") }
        return double
    }

    private static func stringArray(_ value: TOMLValueConvertible, file: String, key: String, context: String) throws(ConfigError) -> [String] {
        guard let array = value.array else { throw typeError(file: file, key: key, expected: "an array of strings", found: value, context: context) }
        var strings: [String] = []
        for index in 0..<array.count {
            strings.append(try string(array[index], file: file, key: "\(key)[\(index)]", context: context))
        }
        return strings
    }

    private static func typeError(file: String, key: String, expected: String, found value: TOMLValueConvertible,
                                  context: String = "") -> ConfigError {
        ConfigError(file: file, key: key, problem: "expected \(expected), found \(describe(value.type))\(context)")
    }

    private static func describe(_ type: TOMLType) -> String {
        switch type {
        case .table: "a table"
        case .array: "an array"
        case .string: "a string"
        case .int: "an integer"
        case .double: "a floating-point number"
        case .bool: "a boolean"
        case .date: "a date"
        case .time: "a time"
        case .dateTime: "a date-time"
        }
    }

    // MARK: Watched tables

    private static let watchedTableKeys = [
        "name", "schema", "primary_key", "change_column", "change_columns", "operations", "atomic_data_query", "publish_endpoint",
        "batch_publish_endpoint", "partitions", "dependencies", "capture",
    ]

    private static let dependencyKeys = ["table", "schema", "key_column", "key_columns", "change_columns"]

    private static func watchedTables(from value: TOMLValueConvertible, file: String) throws(ConfigError) -> [WatchedTable] {
        let key = "service.watched_tables"
        guard let array = value.array else {
            throw typeError(file: file, key: key, expected: "an array of tables ([[service.watched_tables]])", found: value)
        }
        var tables: [WatchedTable] = []
        for index in 0..<array.count {
            let element = array[index]
            guard let table = element.table else {
                throw typeError(file: file, key: "\(key)[\(index)]", expected: "a table", found: element)
            }
            tables.append(try watchedTable(table, index: index, file: file))
        }
        return tables
    }

    private static func watchedTable(_ table: TOMLTable, index: Int, file: String) throws(ConfigError) -> WatchedTable {
        let prefix = "service.watched_tables[\(index)]"

        // The name first, so that every later error can say which table it is about.
        var name: String?
        if let value = table["name"] { name = try string(value, file: file, key: "\(prefix).name") }
        let context = name.map { " (watched table '\($0)')" } ?? ""

        for key in table.keys where !watchedTableKeys.contains(key) {
            throw ConfigError(file: file, key: "\(prefix).\(key)",
                              problem: "unknown key\(context); the keys of a watched table are \(watchedTableKeys.joined(separator: ", "))")
        }

        func optionalString(_ key: String) throws(ConfigError) -> String? {
            guard let value = table[key] else { return nil }
            return try string(value, file: file, key: "\(prefix).\(key)", context: context)
        }
        func requiredString(_ key: String) throws(ConfigError) -> String {
            guard let value = try optionalString(key) else {
                throw ConfigError(file: file, key: "\(prefix).\(key)", problem: "missing required key\(context)")
            }
            return value
        }

        guard let name else {
            throw ConfigError(file: file, key: "\(prefix).name", problem: "missing required key")
        }

        let changeColumns: [String]
        switch (table["change_column"], table["change_columns"]) {
        case (.some, .some):
            throw ConfigError(file: file, key: "\(prefix).change_columns",
                              problem: "set either change_column or change_columns, not both\(context)")
        case (.some(let value), nil):
            changeColumns = [try string(value, file: file, key: "\(prefix).change_column", context: context)]
        case (nil, .some(let value)):
            changeColumns = try stringArray(value, file: file, key: "\(prefix).change_columns", context: context)
        case (nil, nil):
            throw ConfigError(file: file, key: "\(prefix).change_column",
                              problem: "missing required key\(context): set change_column = \"...\" or change_columns = [...]")
        }

        var watched = WatchedTable(name: name, changeColumns: changeColumns,
                                   atomicDataQuery: try requiredString("atomic_data_query"),
                                   publishEndpoint: try requiredString("publish_endpoint"))
        if let schema = try optionalString("schema") { watched.schema = schema }
        if let batch = try optionalString("batch_publish_endpoint") { watched.batchPublishEndpoint = batch }
        if let primaryKey = try optionalString("primary_key") { watched.primaryKey = primaryKey }
        if let value = table["operations"] {
            let key = "\(prefix).operations"
            let names = try stringArray(value, file: file, key: key, context: context)
            var operations: [ChangeOperation] = []
            for (position, operationName) in names.enumerated() {
                // backfill: not a trigger event (the backfill command writes it), so not listed here.
                guard let operation = ChangeOperation(rawValue: operationName), ChangeOperation.triggerOperations.contains(operation) else {
                    throw ConfigError(file: file, key: "\(key)[\(position)]",
                                      problem: "'\(operationName)' is not an operation\(context); expected insert, update or delete")
                }
                operations.append(operation)
            }
            watched.operations = operations
        }
        if let value = table["partitions"] {
            watched.partitions = try int(value, file: file, key: "\(prefix).partitions")
        }
        if let value = table["capture"] {
            let key = "\(prefix).capture"
            let text = try string(value, file: file, key: key, context: context)
            guard let mode = CaptureMode(rawValue: text) else {
                throw ConfigError(file: file, key: key, problem: "'\(text)' is not a capture mode\(context); expected \"trigger\" or \"wal\"")
            }
            watched.capture = mode
        }
        if let value = table["dependencies"] {
            let key = "\(prefix).dependencies"
            guard let array = value.array else {
                throw typeError(file: file, key: key, expected: "an array of tables ([[service.watched_tables.dependencies]])", found: value, context: context)
            }
            for position in 0..<array.count {
                guard let element = array[position].table else {
                    throw typeError(file: file, key: "\(key)[\(position)]", expected: "a table", found: array[position], context: context)
                }
                watched.dependencies.append(try dependency(element, prefix: "\(key)[\(position)]", file: file, context: context))
            }
        }
        return watched
    }

    private static func dependency(_ table: TOMLTable, prefix: String, file: String, context: String) throws(ConfigError) -> Dependency {
        for key in table.keys where !dependencyKeys.contains(key) {
            throw ConfigError(file: file, key: "\(prefix).\(key)",
                              problem: "unknown key\(context); the keys of a dependency are \(dependencyKeys.joined(separator: ", "))")
        }
        guard let tableValue = table["table"] else {
            throw ConfigError(file: file, key: "\(prefix).table", problem: "missing required key\(context): the name of a table the atomic_data_query reads")
        }
        let name = try string(tableValue, file: file, key: "\(prefix).table", context: context)
        let keyColumns: [String]
        switch (table["key_column"], table["key_columns"]) {
        case (.some, .some):
            throw ConfigError(file: file, key: "\(prefix).key_columns", problem: "set either key_column or key_columns, not both\(context)")
        case (.some(let value), nil):
            keyColumns = [try string(value, file: file, key: "\(prefix).key_column", context: context)]
        case (nil, .some(let value)):
            keyColumns = try stringArray(value, file: file, key: "\(prefix).key_columns", context: context)
        case (nil, nil):
            throw ConfigError(file: file, key: "\(prefix).key_column",
                              problem: "missing required key\(context): the column of \(name) that holds the watched table's primary key")
        }
        var dependency = Dependency(table: name, keyColumns: keyColumns)
        if let value = table["schema"] { dependency.schema = try string(value, file: file, key: "\(prefix).schema", context: context) }
        if let value = table["change_columns"] {
            dependency.changeColumns = try stringArray(value, file: file, key: "\(prefix).change_columns", context: context)
            if dependency.changeColumns.isEmpty {
                throw ConfigError(file: file, key: "\(prefix).change_columns",
                                  problem: "must list at least one column\(context); leave it out for any column")
            }
        }
        return dependency
    }
}
