// One human-readable line per log entry on stderr (logging.format = "text"), for a terminal:
//   2026-11-28T10:00:00.123Z warning atomic-data-table-worker: database unavailable, retrying error="..." table=hotspots
// Values go through Redactor.redact like every other format.

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif
import Logging

public struct TextLogHandler: LogHandler {
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
        let line = Self.line(timestamp: Timestamp.iso8601(Date()), level: event.level, label: label,
                             message: event.message.description, metadata: entryMetadata(event))
        writeAll(fd: fd, Array(line.utf8))
    }

    /// The whole line, newline included; a multi-line message stays on one line (escaped).
    public static func line(timestamp: String, level: Logger.Level, label: String, message: String, metadata: Logger.Metadata) -> String {
        var line = "\(timestamp) \(level.rawValue) \(label): \(escapedIfNeeded(Redactor.redact(message), quoteSpaces: false))"
        for key in metadata.keys.sorted() {
            line += " \(key)=\(escapedIfNeeded(Redactor.redact("\(metadata[key]!)"), quoteSpaces: true))"
        }
        return line + "\n"
    }

    private static func escapedIfNeeded(_ text: String, quoteSpaces: Bool) -> String {
        let needsQuoting = text.unicodeScalars.contains { $0.value < 0x20 || (quoteSpaces && ($0 == " " || $0 == "\"" || $0 == "=")) }
        guard needsQuoting else { return text }
        return quoteSpaces ? jsonString(text) : String(jsonString(text).dropFirst().dropLast())
    }
}
