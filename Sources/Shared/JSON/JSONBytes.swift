// JSON text built directly as UTF-8 bytes, for the worker's hot path (one payload per change):
// no intermediate Strings, no String(format:), no Foundation. The output is byte for byte what
// `jsonString(_:)` and `Timestamp.iso8601(unixSeconds:)` produce, so payloads keep their contract.

public enum JSONBytes {
    /// Appends `s` as a JSON string literal: `"`, `\` and the control characters U+0000 to U+001F
    /// are escaped (`\"`, `\\`, `\n`, `\r`, `\t`, else `\u00xx` in lower-case hex); every other
    /// character, non-ASCII included, is copied as its UTF-8 bytes (a Swift String always holds
    /// valid UTF-8: text read from libpq was already repaired when it became a String).
    public static func appendString(_ s: String, to out: inout [UInt8]) {
        let done: Void? = s.utf8.withContiguousStorageIfAvailable { appendString(utf8: $0, to: &out) }
        if done == nil {
            // Not stored as contiguous UTF-8 (a bridged string): copy it once.
            let bytes = Array(s.utf8)
            bytes.withUnsafeBufferPointer { appendString(utf8: $0, to: &out) }
        }
    }

    /// `bytes` must be valid UTF-8 (see `appendString(_:to:)`); it is escaped, not validated.
    public static func appendString(utf8 bytes: UnsafeBufferPointer<UInt8>, to out: inout [UInt8]) {
        out.append(0x22)
        var runStart = 0
        var i = 0
        let count = bytes.count
        while i < count {
            let byte = bytes[i]
            if byte >= 0x20 && byte != 0x22 && byte != 0x5C {
                i += 1
                continue
            }
            if runStart < i { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<i])) }
            out.append(0x5C)  // backslash
            switch byte {
            case 0x22: out.append(0x22)
            case 0x5C: out.append(0x5C)
            case 0x0A: out.append(0x6E)  // n
            case 0x0D: out.append(0x72)  // r
            case 0x09: out.append(0x74)  // t
            default:
                out.append(contentsOf: [0x75, 0x30, 0x30, hexDigit(byte >> 4), hexDigit(byte & 0x0F)])  // u00xx
            }
            i += 1
            runStart = i
        }
        if runStart < count { out.append(contentsOf: UnsafeBufferPointer(rebasing: bytes[runStart..<count])) }
        out.append(0x22)
    }

    /// Appends the decimal digits of `value` (a JSON number).
    public static func appendInteger(_ value: Int64, to out: inout [UInt8]) {
        if value < 0 { out.append(0x2D) }
        var magnitude = value.magnitude
        var digits: (UInt64, UInt64, UInt64) = (0, 0, 0)  // 24 bytes: room for 20 digits
        var n = 0
        withUnsafeMutableBytes(of: &digits) { buffer in
            repeat {
                buffer[23 - n] = UInt8(truncatingIfNeeded: 0x30 + magnitude % 10)
                magnitude /= 10
                n += 1
            } while magnitude != 0
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: buffer[(24 - n)...]))
        }
    }

    /// Appends the bytes of `s` as they are (text that is already JSON).
    @inline(__always)
    public static func appendRaw(_ s: String, to out: inout [UInt8]) {
        out.append(contentsOf: s.utf8)
    }

    /// Appends the bytes of a literal as they are (one copy, no String in between).
    @inline(__always)
    public static func appendLiteral(_ s: StaticString, to out: inout [UInt8]) {
        s.withUTF8Buffer { out.append(contentsOf: $0) }
    }

    @inline(__always)
    static func hexDigit(_ nibble: UInt8) -> UInt8 { nibble < 10 ? 0x30 + nibble : 0x57 + nibble }  // 0-9, a-f

    /// Lower-case hex of `value`, zero-padded to 16 digits.
    public static func hex16(_ value: UInt64) -> String {
        var bytes = [UInt8](repeating: 0, count: 16)
        var v = value
        for i in stride(from: 15, through: 0, by: -1) {
            bytes[i] = hexDigit(UInt8(truncatingIfNeeded: v & 0x0F))
            v >>= 4
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

extension Timestamp {
    /// Appends the 24 bytes of `iso8601(unixSeconds:)` (2026-11-28T10:00:00.123Z, UTC, milliseconds
    /// truncated), computed without the C library (proleptic Gregorian calendar, days to civil date).
    public static func appendISO8601(unixSeconds seconds: Double, to out: inout [UInt8]) {
        let whole = seconds.rounded(.down)
        let t = Int64(whole)
        let millis = min(999, max(0, Int((seconds - whole) * 1000)))
        var days = t / 86_400
        var secondOfDay = t % 86_400
        if secondOfDay < 0 { secondOfDay += 86_400; days -= 1 }
        // Howard Hinnant's civil_from_days.
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1_460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        let day = dayOfYear - (153 * mp + 2) / 5 + 1
        let month = mp < 10 ? mp + 3 : mp - 9
        let year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)

        var text: (UInt64, UInt64, UInt64) = (0, 0, 0)
        withUnsafeMutableBytes(of: &text) { b in
            func put(_ value: Int64, at offset: Int, width: Int) {
                var v = value
                for i in stride(from: offset + width - 1, through: offset, by: -1) {
                    b[i] = UInt8(truncatingIfNeeded: 48 + v % 10)
                    v /= 10
                }
            }
            put(year, at: 0, width: 4)
            b[4] = 45  // -
            put(month, at: 5, width: 2)
            b[7] = 45
            put(day, at: 8, width: 2)
            b[10] = 84  // T
            put(secondOfDay / 3_600, at: 11, width: 2)
            b[13] = 58  // :
            put(secondOfDay / 60 % 60, at: 14, width: 2)
            b[16] = 58
            put(secondOfDay % 60, at: 17, width: 2)
            b[19] = 46  // .
            put(Int64(millis), at: 20, width: 3)
            b[23] = 90  // Z
            out.append(contentsOf: UnsafeRawBufferPointer(rebasing: b[0..<24]))
        }
    }
}
