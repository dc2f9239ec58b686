// Native journal entries (DESIGN.md section 9): one sd_journal_sendv call per log line, with
// MESSAGE, PRIORITY, SYSLOG_IDENTIFIER, CODE_FILE/CODE_LINE/CODE_FUNC and every metadata key as
// its own upper-case field, so `journalctl -u atomic-data-publisher TABLE=hotspots` works.
//
// Invariant: every value (the message included) goes through Redactor.redact, as in the JSON
// handler, so a secret that slips into a message or an error never reaches the journal.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging

public struct JournalLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let identifier: String
    private let sink: @Sendable ([[UInt8]]) -> Void

    /// `identifier` becomes SYSLOG_IDENTIFIER; `sink` receives the `NAME=value` fields of each
    /// entry (the journal by default; tests pass a closure).
    public init(label: String, identifier: String, level: Logger.Level,
                sink: @escaping @Sendable ([[UInt8]]) -> Void = JournalLogHandler.sendOrWriteToStderr) {
        self.label = label
        self.identifier = identifier
        self.logLevel = level
        self.sink = sink
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        sink(Self.fields(level: event.level, message: event.message.description, metadata: entryMetadata(event),
                         identifier: identifier, label: label,
                         file: event.file, line: event.line, function: event.function))
    }

    /// The entry's fields, in a stable order: ours first, then metadata sorted by field name.
    public static func fields(level: Logger.Level, message: String, metadata: Logger.Metadata,
                              identifier: String, label: String,
                              file: String, line: UInt, function: String) -> [[UInt8]] {
        var out: [[UInt8]] = [
            field("MESSAGE", Redactor.redact(message)),
            field("PRIORITY", String(priority(level))),
            field("SYSLOG_IDENTIFIER", identifier),
            field("CODE_FILE", file),
            field("CODE_LINE", String(line)),
            field("CODE_FUNC", function),
        ]
        if label != identifier { out.append(field("LOGGER", label)) }
        var named: [(String, String)] = []
        for (key, value) in metadata {
            guard let name = fieldName(key) else { continue }
            named.append((name, Redactor.redact("\(value)")))
        }
        for (name, value) in named.sorted(by: { $0.0 < $1.0 }) { out.append(field(name, value)) }
        return out
    }

    /// The journal, or, when journald refuses the entry (sd_journal_sendv returns an error, for
    /// example when it is overloaded), the same fields as one JSON object on stderr: a log line
    /// must not vanish. (A missing journal socket is not an error for libsystemd; LogSetup
    /// checks for it before choosing this handler.)
    @Sendable public static func sendOrWriteToStderr(_ fields: [[UInt8]]) {
        guard SystemdJournal.send(fields) < 0 else { return }
        var line = "{"
        for (index, field) in fields.enumerated() {
            let text = String(decoding: field, as: UTF8.self)
            guard let eq = text.firstIndex(of: "=") else { continue }
            line += (index == 0 ? "" : ",") + jsonString(String(text[..<eq])) + ":" + jsonString(String(text[text.index(after: eq)...]))
        }
        writeAll(fd: 2, Array((line + "}\n").utf8))
    }

    /// syslog(3) priorities: swift-log has no "alert" or "emergency", and trace folds into debug.
    public static func priority(_ level: Logger.Level) -> Int {
        switch level {
        case .trace, .debug: 7
        case .info: 6
        case .notice: 5
        case .warning: 4
        case .error: 3
        case .critical: 2
        }
    }

    /// Fields this handler writes itself: a metadata key with one of these names is prefixed
    /// rather than allowed to add a second MESSAGE or PRIORITY to the entry.
    static let reservedNames: Set<String> = ["MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "CODE_FILE", "CODE_LINE", "CODE_FUNC", "LOGGER"]

    /// A metadata key as a journal field name: journald accepts only [A-Z0-9_], at most 64
    /// characters, not starting with a digit, and a leading underscore is reserved for trusted
    /// fields (journald drops such fields from clients). Nil when nothing usable is left.
    public static func fieldName(_ key: String) -> String? {
        var name = ""
        for scalar in key.unicodeScalars {
            switch scalar {
            case "a"..."z": name.unicodeScalars.append(Unicode.Scalar(scalar.value - 32)!)
            case "A"..."Z", "0"..."9", "_": name.unicodeScalars.append(scalar)
            default: name += "_"
            }
        }
        while let first = name.first, first == "_" || first.isASCII && first.isNumber { name.removeFirst() }
        guard !name.isEmpty else { return nil }
        if reservedNames.contains(name) { name = "METADATA_" + name }
        return String(name.prefix(64))
    }

    private static func field(_ name: String, _ value: String) -> [UInt8] {
        Array(name.utf8) + [UInt8(ascii: "=")] + Array(value.utf8)
    }

    /// True when fd 2 is the journal's stream socket: systemd sets JOURNAL_STREAM to its
    /// "device:inode" for StandardError=journal, and a redirect (`2>file`) changes the inode,
    /// so an operator's redirect still gets plain lines.
    public static func stderrIsJournal(environment: [String: String]) -> Bool {
        guard let value = environment["JOURNAL_STREAM"] else { return false }
        let parts = value.split(separator: ":")
        guard parts.count == 2, let device = UInt64(parts[0]), let inode = UInt64(parts[1]) else { return false }
        var info = stat()
        guard fstat(2, &info) == 0 else { return false }
        return UInt64(info.st_dev) == device && UInt64(info.st_ino) == inode
    }
}
