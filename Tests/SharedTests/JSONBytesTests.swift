import XCTest
@testable import Shared

final class JSONBytesTests: XCTestCase {
    private func encoded(_ s: String) -> String {
        var out: [UInt8] = []
        JSONBytes.appendString(s, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    func testPlainText_isQuotedAsIs() {
        XCTAssertEqual(encoded(""), #""""#)
        XCTAssertEqual(encoded("users"), #""users""#)
    }

    func testQuotesAndBackslashes_areEscaped() {
        XCTAssertEqual(encoded(#"a"b\c"#), #""a\"b\\c""#)
        XCTAssertEqual(encoded(#"\""#), #""\\\"""#)
    }

    func testControlCharacters_areEscaped() {
        XCTAssertEqual(encoded("a\nb\rc\td"), #""a\nb\rc\td""#)
        XCTAssertEqual(encoded("\u{0}\u{1}\u{8}\u{b}\u{c}\u{1b}\u{1f}"), #""\u0000\u0001\u0008\u000b\u000c\u001b\u001f""#)
        // DEL and the first byte after the control range are not control characters in JSON.
        XCTAssertEqual(encoded("\u{7f} !"), "\"\u{7f} !\"")
    }

    func testNonASCII_isCopiedAsUTF8() {
        let text = "é日本🎉\u{2028}"
        var out: [UInt8] = []
        JSONBytes.appendString(text, to: &out)
        XCTAssertEqual(out, [0x22] + Array(text.utf8) + [0x22])
    }

    func testInvalidUTF8_fromBytes_becomesReplacementCharacters() {
        // Text from libpq becomes a String by decoding, which repairs invalid UTF-8: the encoder
        // only ever sees valid UTF-8, and emits U+FFFD for what was broken.
        let repaired = String(decoding: [0x61, 0xFF, 0xC3, 0x22], as: UTF8.self)
        var out: [UInt8] = []
        JSONBytes.appendString(repaired, to: &out)
        XCTAssertEqual(out, [0x22, 0x61, 0xEF, 0xBF, 0xBD, 0xEF, 0xBF, 0xBD, 0x5C, 0x22, 0x22])
    }

    func testEveryScalarBelow0x80_andSomeAbove_matchesJsonString() {
        var samples = (0..<0x80).map { String(UnicodeScalar(UInt8($0))) }
        samples += ["", "abc", "x\"y\\z\n", "mixed \u{1} é \"q\" \\ \t end", String(repeating: "long run ", count: 40) + "\u{2}", "🎉\"🎉"]
        samples.append((0..<0x80).map { String(UnicodeScalar(UInt8($0))) }.joined())
        for sample in samples {
            XCTAssertEqual(encoded(sample), jsonString(sample), "for \(Array(sample.utf8))")
        }
    }

    func testSubstringBackedAndBridgedStrings_areEncoded() {
        let base = "prefix \"quoted\" suffix"
        let sub = String(base.dropFirst(7))
        XCTAssertEqual(encoded(sub), jsonString(sub))
    }

    func testIntegers() {
        for value: Int64 in [0, 7, -1, 10, 1_234_567_890, Int64.max, Int64.min] {
            var out: [UInt8] = []
            JSONBytes.appendInteger(value, to: &out)
            XCTAssertEqual(String(decoding: out, as: UTF8.self), String(value))
        }
    }

    func testHex16_isZeroPaddedLowerCase() {
        XCTAssertEqual(JSONBytes.hex16(0), "0000000000000000")
        XCTAssertEqual(JSONBytes.hex16(0xABC), "0000000000000abc")
        XCTAssertEqual(JSONBytes.hex16(UInt64.max), "ffffffffffffffff")
        XCTAssertEqual(JSONBytes.hex16(0xcbf2_9ce4_8422_2325), "cbf29ce484222325")
    }

    private func iso(_ seconds: Double) -> String {
        var out: [UInt8] = []
        Timestamp.appendISO8601(unixSeconds: seconds, to: &out)
        return String(decoding: out, as: UTF8.self)
    }

    func testTimestampBytes_knownValues() {
        XCTAssertEqual(iso(0), "1970-01-01T00:00:00.000Z")
        XCTAssertEqual(iso(784_111_777.123), "1994-11-06T08:49:37.123Z")
        XCTAssertEqual(iso(951_782_400), "2000-02-29T00:00:00.000Z")
        XCTAssertEqual(iso(1_709_251_199.999), "2024-02-29T23:59:59.999Z")
        XCTAssertEqual(iso(4_107_542_400), "2100-03-01T00:00:00.000Z")
        XCTAssertEqual(iso(253_402_300_799), "9999-12-31T23:59:59.000Z")
        XCTAssertEqual(iso(-1.5), "1969-12-31T23:59:58.500Z")
    }

    func testTimestampBytes_matchTheCLibraryVersion() {
        var generator = SystemRandomNumberGenerator()
        var values: [Double] = [-86_400 * 365.25 * 3, -0.001, 0.0005, 86_399.9999, 86_400, 1_700_000_000.5]
        for _ in 0..<20_000 { values.append(Double.random(in: -2_000_000_000...8_000_000_000, using: &generator)) }
        for _ in 0..<2_000 { values.append(Double(Int.random(in: 0...4_000_000_000, using: &generator))) }
        for value in values {
            XCTAssertEqual(iso(value), Timestamp.iso8601(unixSeconds: value), "for \(value)")
        }
    }
}
