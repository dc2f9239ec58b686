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
/// Four rules, applied in turn, each to every non-overlapping match from left to right, exactly as
/// the NSRegularExpression patterns they replace (case-insensitive; `\s` is the
/// Unicode White_Space property) did. They are hand-written so that no regex engine is linked (the
/// standard library's Regex adds 1.2 MB to each binary; TextHelpersTests compares the two):
///   (password\s*[=:]\s*)("[^"]*"|'[^']*'|\S+)  ->  $1<redacted>
///   (Bearer\s+)\S+                             ->  $1<redacted>
///   (token\s*[=:]\s*)\S+                       ->  $1<redacted>
///   (://[^:/@\s]+:)[^@/\s]+(@)                  ->  $1<redacted>$2
public enum Redactor {
    public static func redact(_ text: String) -> String {
        guard text.containsScalars("password") || text.contains("@") || text.containsScalars("Bearer") || text.containsScalars("token") else { return text }
        var scalars = Array(text.unicodeScalars)
        scalars = replaceAll(scalars, keyValue(keyword: "password", quotedValues: true))
        scalars = replaceAll(scalars, bearer)
        scalars = replaceAll(scalars, keyValue(keyword: "token", quotedValues: false))
        scalars = replaceAll(scalars, urlCredentials)
        var out = String.UnicodeScalarView()
        out.append(contentsOf: scalars)
        return String(out)
    }

    /// A rule: at `start`, the end of the kept prefix ($1), the end of the secret, and the end
    /// of the match (the secret is replaced; anything between it and the match's end is kept, $2).
    private typealias Rule = @Sendable ([Unicode.Scalar], Int) -> (keep: Int, secretEnd: Int, end: Int)?

    private static func replaceAll(_ s: [Unicode.Scalar], _ rule: Rule) -> [Unicode.Scalar] {
        var out: [Unicode.Scalar] = []
        out.reserveCapacity(s.count + 16)
        var i = 0
        while i < s.count {
            if let m = rule(s, i) {
                out.append(contentsOf: s[i..<m.keep])
                out.append(contentsOf: "<redacted>".unicodeScalars)
                out.append(contentsOf: s[m.secretEnd..<m.end])
                i = m.end
            } else {
                out.append(s[i])
                i += 1
            }
        }
        return out
    }

    /// ICU's `\s`: the Unicode White_Space property.
    private static func isSpace(_ c: Unicode.Scalar) -> Bool {
        c.properties.isWhitespace
    }

    /// `word` at `i`, ignoring case (the keywords are ASCII letters).
    private static func matches(_ word: String, in s: [Unicode.Scalar], at i: Int) -> Int? {
        var j = i
        for w in word.unicodeScalars {
            guard j < s.count else { return nil }
            let c = s[j]
            guard c == w || (c.isASCII && c.value ^ 0x20 == w.value && w.properties.isAlphabetic) else { return nil }
            j += 1
        }
        return j
    }

    private static func skipSpaces(_ s: [Unicode.Scalar], from i: Int) -> Int {
        var j = i
        while j < s.count && isSpace(s[j]) { j += 1 }
        return j
    }

    private static func nonSpaceRun(_ s: [Unicode.Scalar], from i: Int, excluding: Set<Unicode.Scalar> = []) -> Int {
        var j = i
        while j < s.count && !isSpace(s[j]) && !excluding.contains(s[j]) { j += 1 }
        return j
    }

    /// `keyword\s*[=:]\s*` then the value: `"..."` or `'...'` (password only) or `\S+`.
    private static func keyValue(keyword: String, quotedValues: Bool) -> Rule {
        { s, i in
            guard var j = matches(keyword, in: s, at: i) else { return nil }
            j = skipSpaces(s, from: j)
            guard j < s.count, s[j] == "=" || s[j] == ":" else { return nil }
            let keep = skipSpaces(s, from: j + 1)
            guard keep < s.count else { return nil }
            if quotedValues, s[keep] == "\"" || s[keep] == "'", let close = s[(keep + 1)...].firstIndex(of: s[keep]) {
                return (keep, close + 1, close + 1)
            }
            let end = nonSpaceRun(s, from: keep)
            return end > keep ? (keep, end, end) : nil
        }
    }

    /// `Bearer\s+\S+`.
    private static let bearer: Rule = { s, i in
        guard let j = matches("bearer", in: s, at: i) else { return nil }
        let keep = skipSpaces(s, from: j)
        guard keep > j else { return nil }
        let end = nonSpaceRun(s, from: keep)
        return end > keep ? (keep, end, end) : nil
    }

    /// `://user:` then the password up to `@` (neither may hold `/` or a space; the user no `@`).
    private static let urlCredentials: Rule = { s, i in
        guard let j = matches("://", in: s, at: i) else { return nil }
        let userEnd = nonSpaceRun(s, from: j, excluding: [":", "/", "@"])
        guard userEnd > j, userEnd < s.count, s[userEnd] == ":" else { return nil }
        let keep = userEnd + 1
        let secretEnd = nonSpaceRun(s, from: keep, excluding: ["@", "/"])
        guard secretEnd > keep, secretEnd < s.count, s[secretEnd] == "@" else { return nil }
        return (keep, secretEnd, secretEnd + 1)
    }
}

/// JSON string literal for `s` (`JSONBytes.appendString`: the one escaping of the project).
public func jsonString(_ s: String) -> String {
    var out: [UInt8] = []
    out.reserveCapacity(s.utf8.count + 2)
    JSONBytes.appendString(s, to: &out)
    return String(decoding: out, as: UTF8.self)
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
