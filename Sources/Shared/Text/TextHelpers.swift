// String helpers that stand in for the few NSString-derived methods of full Foundation
// (trimmingCharacters(in:), replacingOccurrences(of:with:), lastPathComponent, String(format:)).
// Shared and TableWorker import only FoundationEssentials, which lacks them, so that the worker
// does not link FoundationInternationalization and the ICU data (about 30 MB; docs/performance.md).
// They compare Unicode scalars exactly, never grapheme clusters: a `"` followed by a combining
// mark is still a quote to double in quoteIdentifier.

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

extension Unicode.Scalar {
    /// Foundation's CharacterSet.whitespaces: tab and the space separators (Zs).
    package var isBlank: Bool {
        self == "\t" || properties.generalCategory == .spaceSeparator
    }

    /// Foundation's CharacterSet.newlines: U+000A-U+000D, U+0085, U+2028, U+2029.
    package var isNewlineScalar: Bool {
        (0x0A...0x0D).contains(value) || value == 0x85 || value == 0x2028 || value == 0x2029
    }
}

extension StringProtocol {
    /// `trimmingCharacters(in: .whitespaces)`.
    package func trimmingWhitespace() -> String {
        trimmingScalars { $0.isBlank }
    }

    /// `trimmingCharacters(in: .whitespacesAndNewlines)`.
    package func trimmingWhitespaceAndNewlines() -> String {
        trimmingScalars { $0.isBlank || $0.isNewlineScalar }
    }

    package func trimmingScalars(where drop: (Unicode.Scalar) -> Bool) -> String {
        let scalars = unicodeScalars
        guard let first = scalars.firstIndex(where: { !drop($0) }) else { return "" }
        let last = scalars.lastIndex(where: { !drop($0) })!
        return String(String.UnicodeScalarView(scalars[first...last]))
    }

    /// `range(of:)` with a literal, scalar-by-scalar comparison (the standard library's
    /// `firstRange(of:)` would link _StringProcessing and its regex parser: 1.2 MB).
    package func rangeOfScalars(_ target: String) -> Range<Index>? {
        let needle = Array(target.unicodeScalars)
        guard let first = needle.first else { return nil }
        let scalars = unicodeScalars
        var i = scalars.startIndex
        while i != scalars.endIndex {
            if scalars[i] == first {
                var j = i
                var k = 0
                while k < needle.count, j != scalars.endIndex, scalars[j] == needle[k] {
                    scalars.formIndex(after: &j)
                    k += 1
                }
                if k == needle.count { return i..<j }
            }
            scalars.formIndex(after: &i)
        }
        return nil
    }

    /// `contains(_:)` for a string, scalar by scalar (see rangeOfScalars).
    package func containsScalars(_ target: String) -> Bool {
        rangeOfScalars(target) != nil
    }

    /// `replacingOccurrences(of:with:)` with a literal, scalar-by-scalar comparison.
    package func replacingAll(_ target: String, with replacement: String) -> String {
        let needle = Array(target.unicodeScalars)
        guard !needle.isEmpty else { return String(self) }
        let scalars = Array(unicodeScalars)
        var out = String.UnicodeScalarView()
        var i = 0
        while i < scalars.count {
            if scalars[i] == needle[0], i + needle.count <= scalars.count, scalars[i..<(i + needle.count)].elementsEqual(needle) {
                out.append(contentsOf: replacement.unicodeScalars)
                i += needle.count
            } else {
                out.append(scalars[i])
                i += 1
            }
        }
        return String(out)
    }

    /// NSString's lastPathComponent: the part after the last `/`, trailing slashes ignored
    /// ("a/b.swift" -> "b.swift", "a/b/" -> "b", "/" -> "/").
    package var lastPathComponent: String {
        var path = Substring(self)
        while path.count > 1, path.hasSuffix("/") { path = path.dropLast() }
        if path == "/" { return "/" }
        guard let slash = path.lastIndex(of: "/") else { return String(path) }
        return String(path[path.index(after: slash)...])
    }

    /// NSString's deletingLastPathComponent ("/usr/bin/x" -> "/usr/bin", "x" -> "", "/x" -> "/").
    package var deletingLastPathComponent: String {
        var path = Substring(self)
        while path.count > 1, path.hasSuffix("/") { path = path.dropLast() }
        guard let slash = path.lastIndex(of: "/") else { return "" }
        if slash == path.startIndex { return "/" }
        var head = path[..<slash]
        while head.count > 1, head.hasSuffix("/") { head = head.dropLast() }
        return String(head)
    }
}

/// `String(format: "%.Nf", value)` for the few places that print a rounded number (N <= 9).
package func formatFixed(_ value: Double, decimals: Int) -> String {
    guard value.isFinite else { return value.isNaN ? "nan" : (value < 0 ? "-inf" : "inf") }
    var buffer = [CChar](repeating: 0, count: 64)
    let format = "%.\(decimals)f"
    _ = buffer.withUnsafeMutableBufferPointer { out in
        withVaList([value]) { vsnprintf(out.baseAddress!, out.count, format, $0) }
    }
    let length = buffer.firstIndex(of: 0) ?? buffer.count
    return String(decoding: buffer[..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}

/// `String(format: "%0Nd", value)`: zero-padded decimal (negative values keep their sign first).
package func zeroPadded(_ value: Int, width: Int) -> String {
    let digits = String(value.magnitude)
    let padded = String(repeating: "0", count: max(0, width - digits.count - (value < 0 ? 1 : 0))) + digits
    return value < 0 ? "-" + padded : padded
}

/// `String(format: "%04x", value)`: lowercase hex, zero-padded to `width`.
package func hexPadded(_ value: UInt32, width: Int) -> String {
    let digits = String(value, radix: 16)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
