// JSON text for the /health and /metrics bodies, and the parsed /health for `status`, without
// Foundation's JSONSerialization (full Foundation links FoundationInternationalization and the ICU
// data into the binary; this target imports only FoundationEssentials). The output is byte for byte
// what JSONSerialization wrote with [.sortedKeys, .withoutEscapingSlashes]: keys sorted, doubles as
// Swift prints them without a trailing ".0", `\b` `\f` `\n` `\r` `\t` and `\u00xx` escapes
// (SupervisorTests.JSONTextTests compares the two).

#if canImport(FoundationEssentials)
import FoundationEssentials
#else
import Foundation
#endif

/// JSON's null in a `[String: Any]` body (what NSNull() was).
package struct JSONNull: Sendable {
    package init() {}
}

package enum JSONText {
    /// `value`: a String, Bool, integer, Double, JSONNull, nil, [Any] or [String: Any].
    package static func render(_ value: Any) -> String {
        var out = ""
        write(value, to: &out)
        return out
    }

    private static func write(_ value: Any, to out: inout String) {
        switch value {
        case let string as String: writeString(string, to: &out)
        case let bool as Bool: out += bool ? "true" : "false"
        case let int as Int: out += String(int)
        case let int as Int64: out += String(int)
        case let int as Int32: out += String(int)
        case let int as UInt64: out += String(int)
        case let int as UInt32: out += String(int)
        case let double as Double: out += number(double)
        case let float as Float: out += number(Double(float))
        case let object as [String: Any]:
            out += "{"
            for (index, key) in object.keys.sorted(by: keyOrder).enumerated() {
                if index > 0 { out += "," }
                writeString(key, to: &out)
                out += ":"
                write(object[key]!, to: &out)
            }
            out += "}"
        case let array as [Any]:
            out += "["
            for (index, element) in array.enumerated() {
                if index > 0 { out += "," }
                write(element, to: &out)
            }
            out += "]"
        default:
            // JSONNull; an Optional holding a value is written as that value.
            let mirror = Mirror(reflecting: value)
            if mirror.displayStyle == .optional, let wrapped = mirror.children.first?.value {
                write(wrapped, to: &out)
            } else {
                out += "null"
            }
        }
    }

    /// The order JSONSerialization's `.sortedKeys` gave (a collation: `_` first, then digit runs by
    /// their value, then letters ignoring case; a tie goes, at the first position that differs, to
    /// fewer leading zeros or to lower case), reproduced for identifier-like keys: table names are SQL identifiers. Other
    /// characters sort by their scalar value after letters.
    package static func keyOrder(_ a: String, _ b: String) -> Bool {
        let (x, y) = (tokens(a), tokens(b))
        for (p, q) in zip(x, y) where p.primary != q.primary { return p.primary.lexicographicallyPrecedes(q.primary) }
        if x.count != y.count { return x.count < y.count }
        for (p, q) in zip(x, y) {
            if p.zeros != q.zeros { return p.zeros < q.zeros }
            if p.upper != q.upper { return !p.upper }
        }
        return a < b
    }

    private struct KeyToken {
        var primary: [UInt64]
        var zeros = 0
        var upper = false
    }

    private static func tokens(_ key: String) -> [KeyToken] {
        var out: [KeyToken] = []
        let scalars = Array(key.unicodeScalars)
        var i = 0
        while i < scalars.count {
            let c = scalars[i]
            if ("0"..."9").contains(c) {
                var zeros = 0
                var value: UInt64 = 0
                var significant = false
                while i < scalars.count, ("0"..."9").contains(scalars[i]) {
                    let digit = UInt64(scalars[i].value - 48)
                    if digit == 0 && !significant { zeros += 1 } else { significant = true }
                    value = value &* 10 &+ digit
                    i += 1
                }
                out.append(KeyToken(primary: [1, value], zeros: zeros))
                continue
            }
            if c == "_" {
                out.append(KeyToken(primary: [0]))
            } else if ("a"..."z").contains(c) {
                out.append(KeyToken(primary: [2, UInt64(c.value)]))
            } else if ("A"..."Z").contains(c) {
                out.append(KeyToken(primary: [2, UInt64(c.value + 32)], upper: true))
            } else {
                out.append(KeyToken(primary: [3, UInt64(c.value)]))
            }
            i += 1
        }
        return out
    }

    /// JSONSerialization's number text: Swift's shortest round-trip form, "3" for 3.0.
    package static func number(_ value: Double) -> String {
        guard value.isFinite else { return "null" }
        var text = "\(value)"
        if text.hasSuffix(".0") { text.removeLast(2) }
        return text
    }

    /// Escapes as JSONSerialization does (`\b`, `\f`; JSONTextTests compares them), unlike the
    /// payloads' and logs' `JSONBytes.appendString` (`\u0008`, `\u000c`): the documents the
    /// supervisor serves keep the form they always had.
    private static func writeString(_ string: String, to out: inout String) {
        out += "\""
        for scalar in string.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\u{8}": out += "\\b"
            case "\u{c}": out += "\\f"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20: out += "\\u" + hexPadded(scalar.value, width: 4)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }
}

/// A parsed JSON document (the `status` command reads /health with it).
package enum JSONValue: Decodable, CustomStringConvertible, Equatable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    package init(from decoder: any Decoder) throws {
        let container = try decoder.singleValueContainer()
        if container.decodeNil() {
            self = .null
        } else if let bool = try? container.decode(Bool.self) {
            self = .bool(bool)
        } else if let number = try? container.decode(Double.self) {
            self = .number(number)
        } else if let string = try? container.decode(String.self) {
            self = .string(string)
        } else if let array = try? container.decode([JSONValue].self) {
            self = .array(array)
        } else {
            self = .object(try container.decode([String: JSONValue].self))
        }
    }

    package static func parse(_ bytes: [UInt8]) -> JSONValue? {
        try? JSONDecoder().decode(JSONValue.self, from: Data(bytes))
    }

    package subscript(key: String) -> JSONValue? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    package var object: [String: JSONValue]? {
        if case .object(let object) = self { return object }
        return nil
    }

    package var string: String? {
        if case .string(let string) = self { return string }
        return nil
    }

    /// An integral number as an Int (what `as? Int` gave on a JSONSerialization number).
    package var int: Int? {
        if case .number(let number) = self, number == number.rounded(), abs(number) < 9e18 { return Int(number) }
        return nil
    }

    /// As the old `"\(any)"` printed a JSONSerialization value: strings bare, numbers as Swift prints them.
    package var description: String {
        switch self {
        case .null: "<null>"
        case .bool(let bool): "\(bool)"
        case .number(let number): int.map(String.init) ?? "\(number)"
        case .string(let string): string
        case .array, .object: JSONText.render(plain)
        }
    }

    private var plain: Any {
        switch self {
        case .null: JSONNull()
        case .bool(let bool): bool
        case .number(let number): number
        case .string(let string): string
        case .array(let array): array.map(\.plain)
        case .object(let object): object.mapValues(\.plain)
        }
    }
}
