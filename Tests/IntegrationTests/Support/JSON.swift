import Foundation

/// A JSON value whose type is exactly what was on the wire: `1`, `"1"`, `true` and `null` are four
/// different values. Built from `JSONSerialization` output, and writable as a Swift literal so that
/// expected payloads read like the JSON they describe:
///
///     let expected: JSON = ["id": 42, "name": "x", "tags": ["a", nil], "active": true, "gone": nil]
///
/// Numbers compare by value as `Double` (JSON has one number type; `12.50000000` equals `12.5`).
/// That is exact for every integer up to 2^53, which is all the tests use.
enum JSON: Equatable, CustomStringConvertible, Sendable {
    case null
    case bool(Bool)
    case number(Double)
    case string(String)
    case array([JSON])
    case object([String: JSON])

    struct NotJSON: Error, CustomStringConvertible {
        let description: String
    }

    /// Parse UTF-8 JSON text.
    init(parsing data: Data) throws {
        self = try JSON(serialized: JSONSerialization.jsonObject(with: data, options: [.fragmentsAllowed]))
    }

    init(parsing text: String) throws {
        try self.init(parsing: Data(text.utf8))
    }

    /// Convert what `JSONSerialization.jsonObject` returned.
    init(serialized value: Any) throws {
        switch value {
        case is NSNull:
            self = .null
        case let string as String:
            self = .string(string)
        case let number as NSNumber:
            // JSONSerialization boxes `true`/`false` in the Boolean subclass of NSNumber, numbers in
            // plain NSNumber: the class, not `as? Bool` (which accepts 0 and 1), tells them apart.
            if type(of: number) == JSON.booleanClass {
                self = .bool(number.boolValue)
            } else {
                self = .number(number.doubleValue)
            }
        case let array as [Any]:
            self = .array(try array.map(JSON.init(serialized:)))
        case let object as [String: Any]:
            self = .object(try object.mapValues(JSON.init(serialized:)))
        default:
            throw NotJSON(description: "not a JSON value: \(type(of: value)) \(value)")
        }
    }

    private static let booleanClass: AnyClass = type(of: NSNumber(value: true))

    // MARK: access

    subscript(key: String) -> JSON? {
        if case .object(let object) = self { return object[key] }
        return nil
    }

    subscript(index: Int) -> JSON? {
        if case .array(let array) = self, array.indices.contains(index) { return array[index] }
        return nil
    }

    var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    var number: Double? {
        if case .number(let n) = self { return n }
        return nil
    }

    var int: Int? {
        if case .number(let n) = self, n == n.rounded(), abs(n) < 9.0e15 { return Int(n) }
        return nil
    }

    var array: [JSON]? {
        if case .array(let a) = self { return a }
        return nil
    }

    var object: [String: JSON]? {
        if case .object(let o) = self { return o }
        return nil
    }

    var keys: Set<String> { Set(object.map { Array($0.keys) } ?? []) }

    // MARK: text

    /// Compact JSON with sorted keys, for failure messages.
    var description: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let n):
            if n == n.rounded(), abs(n) < 9.0e15 { return String(Int64(n)) }
            return String(n)
        case .string(let s): return JSON.quote(s)
        case .array(let a): return "[" + a.map(\.description).joined(separator: ",") + "]"
        case .object(let o):
            return "{" + o.keys.sorted().map { "\(JSON.quote($0)):\(o[$0]!.description)" }.joined(separator: ",") + "}"
        }
    }

    private static func quote(_ s: String) -> String {
        guard let data = try? JSONSerialization.data(withJSONObject: s, options: [.fragmentsAllowed]),
              let text = String(data: data, encoding: .utf8) else { return "\"\(s)\"" }
        return text
    }
}

extension JSON: ExpressibleByNilLiteral, ExpressibleByBooleanLiteral, ExpressibleByIntegerLiteral,
    ExpressibleByFloatLiteral, ExpressibleByStringLiteral, ExpressibleByArrayLiteral, ExpressibleByDictionaryLiteral {
    init(nilLiteral: ()) { self = .null }
    init(booleanLiteral value: Bool) { self = .bool(value) }
    init(integerLiteral value: Int) { self = .number(Double(value)) }
    init(floatLiteral value: Double) { self = .number(value) }
    init(stringLiteral value: String) { self = .string(value) }
    init(arrayLiteral elements: JSON...) { self = .array(elements) }
    init(dictionaryLiteral elements: (String, JSON)...) {
        self = .object(Dictionary(elements, uniquingKeysWith: { _, last in last }))
    }
}
