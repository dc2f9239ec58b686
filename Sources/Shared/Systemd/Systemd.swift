// The one file that imports libsystemd: sd_notify and sd_journal_sendv. Every notify call is a
// no-op without NOTIFY_SOCKET and a journal entry is silently dropped when no journald listens
// (libsystemd's own behaviour), so the daemon runs the same outside systemd.

import CSystemd
#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif
#if canImport(Glibc)
import Glibc
#endif

public struct SystemdNotifier: Sendable {
    public init() {}

    /// True when a service manager listens (NOTIFY_SOCKET is set).
    public var isEnabled: Bool { ProcessInfo.processInfo.environment["NOTIFY_SOCKET"] != nil }

    /// The interval at which WATCHDOG=1 must be sent (half of WATCHDOG_USEC), if the watchdog is on.
    public var watchdogInterval: Double? {
        var usec: UInt64 = 0
        guard sd_watchdog_enabled(0, &usec) > 0, usec > 0 else { return nil }
        return Double(usec) / 1e6 / 2
    }

    @discardableResult
    public func notify(_ state: String) -> Bool {
        sd_notify(0, state) > 0
    }

    public func ready(status: String) { notify("READY=1\nSTATUS=\(status)") }
    public func status(_ text: String) { notify("STATUS=\(text)") }
    public func watchdog() { notify("WATCHDOG=1") }
    public func reloading() {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        let usec = UInt64(ts.tv_sec) * 1_000_000 + UInt64(ts.tv_nsec) / 1000
        notify("RELOADING=1\nMONOTONIC_USEC=\(usec)")
    }
    public func stopping() { notify("STOPPING=1") }
}

/// Native journal entries (sd_journal_sendv). The log handler that builds the fields lives in
/// Logging/JournalLogHandler.swift; this is only the C call.
public enum SystemdJournal {
    /// Sends one entry made of `NAME=value` fields. Values may hold newlines or any bytes:
    /// libsystemd then switches to the binary length-prefixed form, and to a memfd when the
    /// entry is too large for one datagram. Returns 0 or a negative errno.
    @discardableResult
    public static func send(_ fields: [[UInt8]]) -> Int32 {
        guard !fields.isEmpty else { return 0 }
        // One contiguous buffer, so every iovec points into memory that stays put during the call.
        var storage: [UInt8] = []
        storage.reserveCapacity(fields.reduce(0) { $0 + $1.count })
        var ranges: [Range<Int>] = []
        ranges.reserveCapacity(fields.count)
        for field in fields {
            let start = storage.count
            storage.append(contentsOf: field)
            ranges.append(start..<storage.count)
        }
        return storage.withUnsafeMutableBytes { raw -> Int32 in
            guard let base = raw.baseAddress else { return 0 }
            let vectors = ranges.map { iovec(iov_base: base + $0.lowerBound, iov_len: $0.count) }
            return vectors.withUnsafeBufferPointer { sd_journal_sendv($0.baseAddress, Int32($0.count)) }
        }
    }
}
