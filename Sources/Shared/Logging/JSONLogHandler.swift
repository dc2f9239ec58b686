// One JSON object per line on stderr (written with write(2): stdio globals are not Sendable in
// Swift 6 and stdio on a pipe is block-buffered anyway).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging

public struct JSONLogHandler: LogHandler {
    public var logLevel: Logger.Level
    public var metadata: Logger.Metadata = [:]
    private let label: String
    private let fd: Int32

    public init(label: String, level: Logger.Level, fd: Int32 = 2) {
        self.label = label
        self.logLevel = level
        self.fd = fd
    }

    public subscript(metadataKey key: String) -> Logger.Metadata.Value? {
        get { metadata[key] }
        set { metadata[key] = newValue }
    }

    public func log(event: LogEvent) {
        let fields = entryMetadata(event).mapValues { "\($0)" }
        var line = "{\"timestamp\":\(jsonString(Timestamp.iso8601(Date())))"
        line += ",\"level\":\(jsonString(event.level.rawValue))"
        line += ",\"target\":\(jsonString(label))"
        line += ",\"message\":\(jsonString(Redactor.redact(event.message.description)))"
        for key in fields.keys.sorted() {
            line += ",\(jsonString(key)):\(jsonString(Redactor.redact(fields[key]!)))"
        }
        line += ",\"file\":\(jsonString(event.file.lastPathComponent)),\"line\":\(event.line)}\n"
        writeAll(fd: fd, Array(line.utf8))
    }
}

extension LogHandler {
    /// What an entry carries, the same in every format: the handler's metadata, then the
    /// event's (which wins), then the event's error as `error` unless one is already there.
    func entryMetadata(_ event: LogEvent) -> Logger.Metadata {
        var merged = metadata
        if let extra = event.metadata { merged.merge(extra) { _, new in new } }
        if let error = event.error, merged["error"] == nil { merged["error"] = "\(error)" }
        return merged
    }
}

public enum Timestamp {
    /// RFC 3339 in UTC with milliseconds: 2026-11-28T10:00:00.123Z. Built digit by digit (no
    /// String(format:), which was 5 % of the worker's time per change).
    public static func iso8601(_ date: Date) -> String {
        iso8601(unixSeconds: date.timeIntervalSince1970)
    }

    public static func iso8601(unixSeconds seconds: Double) -> String {
        var t = time_t(seconds.rounded(.down))
        let millis = min(999, max(0, Int((seconds - Double(t)) * 1000)))
        var parts = tm()
        gmtime_r(&t, &parts)
        var bytes = [UInt8](repeating: 0, count: 24)
        func put(_ value: Int, at offset: Int, width: Int) {
            var v = value
            for i in stride(from: offset + width - 1, through: offset, by: -1) {
                bytes[i] = UInt8(48 + v % 10)
                v /= 10
            }
        }
        put(Int(parts.tm_year) + 1900, at: 0, width: 4)
        bytes[4] = 45  // -
        put(Int(parts.tm_mon) + 1, at: 5, width: 2)
        bytes[7] = 45
        put(Int(parts.tm_mday), at: 8, width: 2)
        bytes[10] = 84  // T
        put(Int(parts.tm_hour), at: 11, width: 2)
        bytes[13] = 58  // :
        put(Int(parts.tm_min), at: 14, width: 2)
        bytes[16] = 58
        put(Int(parts.tm_sec), at: 17, width: 2)
        bytes[19] = 46  // .
        put(millis, at: 20, width: 3)
        bytes[23] = 90  // Z
        return String(decoding: bytes, as: UTF8.self)
    }
}

/// Masks secrets that could slip into a message: `password=...` pairs and URL credentials.
public enum Redactor {
    public static func redact(_ text: String) -> String {
        guard text.contains("password") || text.contains("@") || text.contains("Bearer") || text.contains("token") else { return text }
        var out = text
        for (regex, keepsSecondGroup) in patterns {
            // "$1<redacted>" (and "$2" for the URL pattern), as NSRegularExpression's template did.
            out.replace(regex) { match in
                var replaced = String(match.output[1].substring ?? "") + "<redacted>"
                if keepsSecondGroup { replaced += String(match.output[2].substring ?? "") }
                return replaced
            }
        }
        return out
    }

    /// Swift Regex (the standard library's, no ICU), case-insensitive and matched scalar by
    /// scalar like NSRegularExpression. Never mutated after initialisation (a Regex compiles its
    /// program lazily, with an atomic swap), so sharing across threads is safe.
    nonisolated(unsafe) private static let patterns: [(Regex<AnyRegexOutput>, Bool)] = [
        #"(password\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)"#, #"(Bearer\s+)\S+"#, #"(token\s*[=:]\s*)\S+"#, #"(://[^:/@\s]+:)[^@/\s]+(@)"#,
    ].map { pattern in
        // The patterns are constants: a failure to compile is a programming error.
        (try! Regex(pattern).ignoresCase().matchingSemantics(.unicodeScalar), pattern.hasSuffix("(@)"))
    }
}

/// JSON string literal for `s`.
public func jsonString(_ s: String) -> String {
    var out = "\""
    out.reserveCapacity(s.utf8.count + 2)
    for scalar in s.unicodeScalars {
        switch scalar {
        case "\"": out += "\\\""
        case "\\": out += "\\\\"
        case "\n": out += "\\n"
        case "\r": out += "\\r"
        case "\t": out += "\\t"
        case _ where scalar.value < 0x20:
            out += "\\u" + hexPadded(scalar.value, width: 4)
        default:
            out.unicodeScalars.append(scalar)
        }
    }
    return out + "\""
}

/// write(2) until every byte is out (or the descriptor is gone).
public func writeAll(fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { buffer in
        var offset = 0
        while offset < buffer.count {
            let n = write(fd, buffer.baseAddress! + offset, buffer.count - offset)
            if n < 0 {
                if errno == EINTR { continue }
                return
            }
            offset += n
        }
    }
}

public enum LogSetup {
    /// Bootstrap swift-log once per process. `level` is validated by the config loader.
    /// `identifier` is the journal's SYSLOG_IDENTIFIER; by default the program's name, as
    /// syslog(3) and libsystemd do (atomic-data-publisher, atomic-data-table-worker).
    public static func bootstrap(level: String, format: LogFormat, metadata: Logger.Metadata = [:],
                                 identifier: String = programName) {
        let parsed = Logger.Level(rawValue: level) ?? .info
        let resolved = resolve(format, environment: ProcessInfo.processInfo.environment)
        LoggingSystem.bootstrap { label in
            var handler: any LogHandler
            switch resolved {
            case .journal: handler = JournalLogHandler(label: label, identifier: identifier, level: parsed)
            case .text: handler = TextLogHandler(label: label, level: parsed)
            case .json, .auto: handler = JSONLogHandler(label: label, level: parsed)
            }
            handler.metadata = metadata
            return handler
        }
    }

    /// `auto` becomes `journal` when stderr is the journal's stream (we run under systemd with
    /// StandardError=journal), else `json`. `journal` without a journald to receive it becomes
    /// `json`: libsystemd drops entries silently when its socket is missing, and lost logs are
    /// worse than logs in the other format. `json` and `text` are taken as configured.
    public static func resolve(_ format: LogFormat, environment: [String: String],
                               journalAvailable: Bool = access(journalSocketPath, F_OK) == 0) -> LogFormat {
        switch format {
        case .auto: JournalLogHandler.stderrIsJournal(environment: environment) ? .journal : .json
        case .journal: journalAvailable ? .journal : .json
        case .json, .text: format
        }
    }

    /// Where journald listens for native entries (sd_journal_sendv writes there).
    public static let journalSocketPath = "/run/systemd/journal/socket"

    /// The last path component of argv[0] (program_invocation_short_name).
    public static var programName: String {
        guard let first = CommandLine.arguments.first, !first.isEmpty else { return "atomic-data-publisher" }
        return first.lastPathComponent
    }
}
